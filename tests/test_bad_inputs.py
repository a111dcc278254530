"""Bad inputs, tried as a user would (the ``llavidal`` command on a tiny model): each ends in one clear error that
names the file and what was expected (exit status 2), never in a traceback or a silently empty answer."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llavidal.cli import main

QUESTION = ["-q", "What is the person doing?", "--max-new-tokens", "3", "--no-stream", "--device", "cpu"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def infer(capsys, base, *extra):
    return cli(capsys, "infer", "--base", base, *QUESTION, *extra)


@pytest.fixture
def base_copy(tiny_base, tmp_path):
    dst = tmp_path / "base"
    shutil.copytree(tiny_base, dst)
    return dst


def test_a_good_base_answers(tiny_base, capsys):
    rc, out, err = infer(capsys, tiny_base, "--video", Path(tiny_base) / "samples" / "001_video_001.pkl")
    assert rc == 0 and out.strip(), err


# ==================================================================== base folder
def test_base_without_tokenizer_model(base_copy, capsys):
    (base_copy / "tokenizer.model").unlink()  # transformers alone would build a 15-token tokenizer and answer ""
    rc, out, err = infer(capsys, base_copy)
    assert rc == 2 and not out
    assert "no tokenizer.model" in err and str(base_copy) in err


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_corrupt_tokenizer_model(base_copy, capsys, damage):
    path = base_copy / "tokenizer.model"
    data = path.read_bytes()
    path.write_bytes(np.random.default_rng(0).bytes(4096) if damage == "random" else data[:300])
    rc, _, err = infer(capsys, base_copy)
    assert rc == 2 and f"{path}: not a readable sentencepiece model" in err
    assert "tiktoken" not in err


def test_tokenizer_of_another_model(base_copy, capsys):
    from llavidal.model.tiny import build_sentencepiece

    (base_copy / "tokenizer.model").write_bytes(build_sentencepiece(400, seed=1))
    rc, _, err = infer(capsys, base_copy)
    assert rc == 2 and "tokenizer and weights do not belong together" in err and "rows" in err


def test_config_json_that_is_a_list(base_copy, capsys):
    (base_copy / "config.json").write_text("[1, 2]")
    rc, _, err = infer(capsys, base_copy)
    assert rc == 2 and f"{base_copy / 'config.json'}: expected a JSON object" in err and "got a JSON list" in err


@pytest.mark.parametrize("field,value,expected", [("hidden_size", None, "lacks hidden_size"),
                                                  ("num_attention_heads", 0, "num_attention_heads is 0"),
                                                  ("hidden_size", 63, "not divisible")])
def test_config_json_without_sizes(base_copy, capsys, field, value, expected):
    cfg = json.loads((base_copy / "config.json").read_text())
    if value is None:
        del cfg[field]
    else:
        cfg[field] = value
    (base_copy / "config.json").write_text(json.dumps(cfg))
    rc, _, err = infer(capsys, base_copy)
    assert rc == 2 and expected in err and "config.json" in err


def test_nan_in_base_weights(base_copy, capsys):
    shard = base_copy / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    key = sorted(k for k in state if k.endswith("weight"))[0]
    state[key][0, 0] = float("inf")
    torch.save(state, shard)
    rc, _, err = infer(capsys, base_copy)
    assert rc == 2 and "NaN/inf" in err and key in err and str(base_copy) in err


# ==================================================================== projector files
def _projector(tiny, **overrides) -> dict:
    model, _ = tiny
    sd = {f"model.{n}": p.detach().clone() for n, p in model.model.named_parameters() if "mm_projector" in n}
    sd.update(overrides)
    return sd


def test_nan_projector(tiny, tiny_base, tmp_path, capsys):
    sd = _projector(tiny)
    sd["model.mm_projector_forpose.weight"][3, 3] = float("nan")
    torch.save(sd, tmp_path / "nan.bin")
    rc, out, err = infer(capsys, tiny_base, "--projector", tmp_path / "nan.bin")
    assert rc == 2 and not out
    assert "nan.bin: weights hold NaN/inf values: model.mm_projector_forpose.weight (1 values)" in err


def test_text_file_as_projector(tiny_base, tmp_path, capsys):
    (tmp_path / "notes.bin").write_text("these are my notes, not weights\n")
    rc, _, err = infer(capsys, tiny_base, "--projector", tmp_path / "notes.bin")
    assert rc == 2 and "notes.bin: not a torch checkpoint" in err and "KeyError" not in err
    (tmp_path / "empty.bin").write_bytes(b"")
    rc, _, err = infer(capsys, tiny_base, "--projector", tmp_path / "empty.bin")
    assert rc == 2 and "empty.bin: empty file (0 bytes)" in err


# ==================================================================== feature files
def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_empty_npy(tiny_base, tmp_path, capsys):
    (tmp_path / "v.npy").write_bytes(b"")
    rc, _, err = infer(capsys, tiny_base, "--video", tmp_path / "v.npy")
    assert rc == 2 and "v.npy: empty file (0 bytes)" in err


def test_npy_header_claiming_absurd_rows(tiny_base, tmp_path, capsys):
    data = _npy_bytes(np.zeros((2, 1024), np.float16)).replace(b"(2, 1024)", b"(100000000, 1024)")
    (tmp_path / "v.npy").write_bytes(data)
    rc, _, err = infer(capsys, tiny_base, "--video", tmp_path / "v.npy")  # would try to allocate 191 GiB
    assert rc == 2 and "v.npy: the header describes shape [100000000, 1024]" in err and "truncated" in err


def test_truncated_npy_and_store_is_refused(tmp_path):
    from llavidal.features import FeatureError, load_feature

    data = _npy_bytes(np.ones((4, 8), np.float32))
    (tmp_path / "cut.npy").write_bytes(data[:-10])
    with pytest.raises(FeatureError, match="cut.npy: the header describes shape"):
        load_feature(tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(FeatureError, match="junk.npy: not a .npy file"):
        load_feature(tmp_path / "junk.npy")


# ==================================================================== benchmarks
def test_empty_benchmark(tiny_base, tmp_path, capsys):
    (tmp_path / "empty.json").write_text("{}")
    rc, _, err = cli(capsys, "eval", "prepare", "--task", "smarthome-ar", "--qa-file", tmp_path / "empty.json")
    assert rc == 2 and "empty.json: holds no records" in err
    rc, _, err = cli(capsys, "eval", "run", "--task", "smarthome-ar", "--qa-file", tmp_path / "empty.json",
                     "--base", tiny_base, "--output", tmp_path / "out", "--device", "cpu")
    assert rc == 2 and "holds no records" in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_benchmark_without_one_readable_record(tiny_base, tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"0": {"video_id": "a.mp4", "question": "q", "choices": {"1": "x"},
                                                         "ground_truth": "nope"}}))
    rc, _, err = cli(capsys, "eval", "run", "--task", "smarthome-ar", "--qa-file", tmp_path / "bad.json",
                     "--base", tiny_base, "--output", tmp_path / "out", "--device", "cpu")
    assert rc == 2 and "none of its 1 records can be read" in err


def test_eval_prepare_counts_cached_features_as_present(tmp_path, capsys):
    root = Path(__file__).parent / "data" / "eval"
    items = json.loads((root / "smarthome_ar.json").read_text())
    feats = tmp_path / "feats"
    feats.mkdir()
    names = [Path(it["video_id"]).stem for it in items.values()]
    np.save(feats / f"{names[0]}.npy", np.zeros((4, 8), np.float32))  # the first video: features, no raw video
    rc, out, err = cli(capsys, "eval", "prepare", "--task", "smarthome-ar", "--qa-file", root / "smarthome_ar.json",
                       "--video-dir", feats)
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and lines[0]["video_found"] is True and lines[0]["features"].endswith(f"{names[0]}.npy")
    assert [x["video_found"] for x in lines[1:]] == [False] * (len(lines) - 1)
    assert f"{len(lines) - 1} missing videos" in err

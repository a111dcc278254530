"""Feature files: every accepted format, the restricted unpickler, and clear errors for bad input."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from llavidal.features import FeatureError, load_feature, load_validated, save_feature, validate_feature
from llavidal.model.configuration_llavidal import LlavidalConfig

CFG = LlavidalConfig(hidden_size=64, num_attention_heads=4)


@pytest.mark.parametrize("suffix", [".pkl", ".pickle", ".npy", ".safetensors"])
def test_round_trip_formats(tmp_path, rng, suffix):
    arr = rng.standard_normal((356, 1024)).astype(np.float16)
    path = save_feature(arr, tmp_path / f"001_video_001{suffix}")
    out = load_validated(path, "video", CFG)
    assert out.dtype == np.float16 and np.array_equal(out, arr)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_original_style_pickles_load(tmp_path, rng):
    """The released files: pickle.dump(ndarray) with the default protocol, and protocol 2 as older numpy wrote."""
    arr = rng.standard_normal((256, 216)).astype(np.float32)
    for proto in (2, pickle.DEFAULT_PROTOCOL, 5):
        p = tmp_path / f"pose_{proto}.pickle"
        with open(p, "wb") as fh:
            pickle.dump(arr, fh, protocol=proto)
        assert np.array_equal(load_feature(p, "pose"), arr)


def test_npz_and_pt_and_dict_pickle(tmp_path, rng):
    arr = rng.standard_normal((3, 8, 512)).astype(np.float32)
    np.savez(tmp_path / "o.npz", object=arr)
    assert np.array_equal(load_feature(tmp_path / "o.npz", "object"), arr)
    torch.save(torch.from_numpy(arr), tmp_path / "o.pt")
    assert np.array_equal(load_feature(tmp_path / "o.pt", "object"), arr)
    with open(tmp_path / "d.pkl", "wb") as fh:
        pickle.dump({"object": arr, "meta": np.zeros(1)}, fh)
    assert np.array_equal(load_feature(tmp_path / "d.pkl", "object"), arr)
    with pytest.raises(FeatureError, match=r"d.pkl: holds a mapping with keys \['meta', 'object'\]"):
        load_feature(tmp_path / "d.pkl", "video")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/llavidal_feature_pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = "/tmp/llavidal_feature_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(FeatureError, match=r"evil.pkl: refused to unpickle: global '(posix|os)\.system' is not allowed"):
        load_feature(tmp_path / "evil.pkl", "video")
    assert not os.path.exists(marker)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureError, match=r"obj.npy: not a readable .npy array"):
        load_feature(tmp_path / "obj.npy", "video")


def test_truncated_and_missing_files(tmp_path, rng):
    save_feature(rng.standard_normal((356, 1024)).astype(np.float16), tmp_path / "v.pkl")
    data = (tmp_path / "v.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(FeatureError, match=r"cut.pkl: not a readable pickle \(truncated or corrupt\?\)"):
        load_feature(tmp_path / "cut.pkl", "video")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(FeatureError, match=r"empty.pkl: not a readable pickle"):
        load_feature(tmp_path / "empty.pkl", "video")
    with pytest.raises(FileNotFoundError, match=r"absent.pkl: video feature file not found"):
        load_feature(tmp_path / "absent.pkl", "video")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(FeatureError, match=r"unknown feature file type '.txt'"):
        load_feature(tmp_path / "x.txt")


@pytest.mark.parametrize("modality,shape,expected", [
    ("video", (1024, 356), r"shape \[1024, 356\], expected \[N, 1024\] \(published files: \[356, 1024\]\)"),
    ("video", (356,), r"shape \[356\], expected \[N, 1024\]"),
    ("pose", (216, 256), r"shape \[216, 256\], expected \[N, 216\]"),  # the README's wrong order
    ("object", (8, 512), r"shape \[1, 8, 512\]|"),  # accepted: one object flattened
    ("object", (2, 4, 512), r"shape \[2, 4, 512\], expected \[n, 8, 512\]"),
    ("object", (0, 8, 512), r"shape \[0, 8, 512\], expected \[n, 8, 512\]"),
])
def test_shape_errors_name_file_and_expected_shape(modality, shape, expected):
    arr = np.zeros(shape, dtype=np.float32)
    if modality == "object" and shape == (8, 512):
        assert validate_feature(arr, modality, CFG).shape == (1, 8, 512)
        return
    with pytest.raises(FeatureError, match=r"feat.pkl: " + modality + " features have " + expected):
        validate_feature(arr, modality, CFG, "feat.pkl")


def test_dtype_and_nan_errors():
    with pytest.raises(FeatureError, match=r"f.npy: video features have dtype int64, expected a floating type"):
        validate_feature(np.zeros((356, 1024), dtype=np.int64), "video", CFG, "f.npy")
    bad = np.zeros((4, 216), dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(FeatureError, match=r"pose features hold 1 NaN/inf values"):
        validate_feature(bad, "pose", CFG, "p.npy")
    with pytest.raises(ValueError, match=r"unknown modality 'audio'"):
        validate_feature(bad, "audio", CFG)

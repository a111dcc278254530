"""The quickstart end to end: synthetic world -> stage 0 -> MMPro -> held-out MCQ. The fused model must clearly
beat every single-modality model and chance, and each single-modality model must have learned its own attribute."""
from __future__ import annotations

import hashlib
import json

import pytest


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synthetic_world_is_deterministic_and_in_the_real_formats(tmp_path):
    from llavidal.data import read_records
    from llavidal.features import load_feature
    from llavidal.synthetic import WorldSpec, make_dataset

    spec = WorldSpec(video_rows=356, pose_rows=256)
    a = make_dataset(tmp_path / "a", n_train=16, n_test=4, seed=3, spec=spec)
    make_dataset(tmp_path / "b", n_train=16, n_test=4, seed=3, spec=spec)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    recs = read_records(a["train"])
    assert len(recs) == 16 and "<video><object><human_pose>" in recs[0]["turns"][0][0]
    # the placeholders come after the question or before it, and the side tells nothing about the answer
    before = [r["turns"][0][0].startswith("<video><object><human_pose>\n") for r in recs]
    assert sum(before) == 8
    for answer in {r["turns"][0][1] for r in recs}:
        assert {b for b, r in zip(before, recs) if r["turns"][0][1] == answer} == {True, False}, answer
    v = load_feature(a["video_folder"] / recs[0]["video"], "video")
    assert v.shape == (356, 1024) and str(v.dtype) == "float16"
    assert load_feature(a["pose_folder"] / recs[0]["pose"], "pose").shape == (256, 216)
    o = load_feature(a["object_folder"] / recs[0]["object"], "object")
    assert o.ndim == 3 and o.shape[1:] == (8, 512) and o.shape[0] >= 1
    items = json.loads(a["test"].read_text())
    it = items["0"]
    assert set(it["choices"]) == {"1", "2", "3", "4"} and it["ground_truth"] in it["choices"].values()
    assert it["video_id"].startswith("/") and it["video_id"].endswith(".mp4")  # Smarthome-AR: absolute path


@pytest.mark.timeout(900)
def test_quickstart_fusion_beats_every_single_modality(tmp_path, capsys):
    from llavidal.cli import main

    assert main(["quickstart", "--out", str(tmp_path / "qs")]) == 0
    res = json.loads((tmp_path / "qs" / "results.json").read_text())
    acc, attr = res["accuracy"], res["attribute_accuracy"]
    assert res["chance"] == 0.25 and res["items"] == 64
    singles = max(acc["video"], acc["object"], acc["pose"])
    assert acc["all"] >= 0.9, acc
    assert acc["all"] >= singles + 0.3, acc
    # each single-modality model learned the attribute its modality carries
    assert attr["video"]["room"] >= 0.9 and attr["pose"]["motion"] >= 0.9 and attr["object"]["object"] >= 0.9, attr
    out = capsys.readouterr().out
    assert "MMPro final (stage 3)" in out and "held-out MCQ accuracy" in out
    for stage in ("stage1-video", "stage1-object", "stage1-pose", "stage2-video-pose", "stage3-video-object-pose"):
        assert (tmp_path / "qs" / "mmpro" / stage / "adapter.safetensors").is_file()

"""The synthetic worlds and studies of the peers' methods (``llavidal quickstart --study ...``, docs/peers.md)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from llavidal.cli import main as cli_main


def test_skeleton_world_is_read_as_ntu_and_deterministic(tmp_path):
    """The phase-2 study's world: NTU-named skeletons (one body) with an RGB video each, split by performer as NTU's
    cross-subject protocol; mislabelled training clips are counted and renamed; same seed, same files."""
    from llavidal.curation.ntu import load_skeleton
    from llavidal.pose.align import match_videos
    from llavidal.pose.data import make_split, scan_ntu
    from llavidal.synthetic import SkeletonWorldSpec, make_skeleton_world

    spec = SkeletonWorldSpec(actions=(1, 2, 3, 4), train_performers=(1, 2), test_performers=(3,), replications=1,
                             frames=8, size=16, label_noise=0.5)
    a = make_skeleton_world(tmp_path / "a", seed=3, spec=spec)
    items, skipped, duplicates = scan_ntu(a["skeletons"])
    assert len(items) == a["clips"] == 12 and not skipped and not duplicates
    split = make_split(items, "xsub")
    assert {i.performer for i in split.train} == {1, 2} and {i.performer for i in split.test} == {3}
    renamed = [i for i in items if int(i.stem[13:16]) >= 100]  # filed under another action
    assert len(renamed) == a["mislabelled"] and all(i.performer in (1, 2) for i in renamed)
    videos, missing = match_videos(items, a["rgb"])
    assert len(videos) == 12 and not missing
    d = load_skeleton(items[0].path)
    assert d["skel_body0"].shape == (8, 25, 3) and np.isfinite(d["skel_body0"]).all()
    b = make_skeleton_world(tmp_path / "b", seed=3, spec=spec)
    for i in items:
        np.testing.assert_array_equal(load_skeleton(i.path)["skel_body0"],
                                      load_skeleton(b["skeletons"] / i.path.name)["skel_body0"])
    # every training clip filed wrongly: each keeps a file of its own (names never collide)
    c = make_skeleton_world(tmp_path / "c", seed=3, spec=dataclasses.replace(spec, label_noise=1.0,
                                                                             replications=2))
    assert c["mislabelled"] == 16 and c["clips"] == 24
    assert len(list(c["skeletons"].iterdir())) == len(list(c["rgb"].iterdir())) == 24


def test_ski_phase2_study_runs_reports_and_resumes(tmp_path, capsys):
    """`quickstart --study ski-phase2 --fast`: phase 1, then phase 2 with and without the alignment term; a rerun
    finds every run finished and reports the same table."""
    out = tmp_path / "ski"
    assert cli_main(["quickstart", "--study", "ski-phase2", "--fast", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert set(run) == {"seed", "phase1", "phase2_alpha0", "phase2_alpha10"}
    for key in ("phase1", "phase2_alpha0", "phase2_alpha10"):
        assert 0.0 <= run[key]["pose_top1"] <= 1.0
    assert run["phase2_alpha0"]["pose_top1"] == results["summary"]["phase2_alpha0"]["pose_top1"]["mean"]
    table = (out / "results.md").read_text()
    assert "| phase 2, alpha = 10 | 1 + 1 |" in table and "phase 2 without the alignment term" in table
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    capsys.readouterr()
    assert cli_main(["quickstart", "--study", "ski-phase2", "--fast", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == mtimes  # nothing trained again
    assert (out / "results.md").read_text() == table
    # other alphas: only the new phase-2 runs train; phase 1 and the alpha-0 run are reused
    assert cli_main(["quickstart", "--study", "ski-phase2", "--fast", "--alphas", "0,1", "--out", str(out)]) == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert set(run) == {"seed", "phase1", "phase2_alpha0", "phase2_alpha1"}
    assert "| phase 2, alpha = 1 | 1 + 1 |" in (out / "results.md").read_text()
    again = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert all(again[p] == t for p, t in mtimes.items())
    assert {p.relative_to(out).parts[0] for p in set(again) - set(mtimes)} == {"seed0-phase2-alpha1"}
    with pytest.raises(SystemExit):
        cli_main(["quickstart", "--study", "ski-phase2", "--alphas", "1,x", "--out", str(out)])
    assert "expected non-negative numbers" in capsys.readouterr().err
    assert cli_main(["quickstart", "--study", "pooling", "--alphas", "1", "--out", str(tmp_path / "p")]) == 2
    assert "--alphas applies to the ski-phase2 study only" in capsys.readouterr().err
    assert cli_main(["quickstart", "--study", "long-video", "--alphas", "1", "--out", str(tmp_path / "l")]) == 2
    assert "--alphas applies to the ski-phase2 study only" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()  # refused before anything ran


def test_pooling_study_runs_every_representation(tmp_path, capsys):
    """The pooling study on a few samples: stage 0, then a video run on the rows and one on a pooled grid, each
    scored on the held-out items; the pooled run's model reads the pooled kind."""
    from llavidal.peers import PoolingStudyConfig, run_pooling_study

    out = tmp_path / "pooling"
    run_pooling_study(PoolingStudyConfig(out=str(out), n_train=8, n_test=4, n_text=16, lm_epochs=1, epochs=1,
                                         grids=("2x2x2",), batch_size=4))
    results = json.loads((out / "results.json").read_text())
    assert [(r["representation"], r["tokens"]) for r in results["runs"]] == [("rows", 24), ("pooled 2x2x2", 8)]
    for r in results["runs"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and set(r) >= {"room_right", "object_right", "train_loss"}
    assert json.loads((out / "video-pool-2x2x2" / "config.json").read_text())["video_pool"] == [2, 2, 2]
    assert json.loads((out / "video-rows" / "config.json").read_text()).get("video_pool") is None
    assert "| pooled 2x2x2 | 8 |" in (out / "results.md").read_text()


def test_study_flags(tmp_path, capsys):
    assert cli_main(["quickstart", "--study", "pooling", "--full-size", "--out", str(tmp_path)]) == 2
    assert "--full-size applies to the default study (mmpro) only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        cli_main(["quickstart", "--study", "no-such-study", "--out", str(tmp_path)])
    assert "invalid choice: 'no-such-study'" in capsys.readouterr().err

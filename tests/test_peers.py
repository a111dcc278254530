"""The synthetic worlds and studies of the peers' methods (``llavidal quickstart --study ...``, docs/peers.md)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.torch import load_file

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


def test_posture_world_is_compositional_ntu_and_deterministic(tmp_path):
    """The zero-shot world: class = (left hand's place, right hand's place); the novel classes are the diagonal, so
    each place of each hand is seen in training in other classes; the lossless videos show the hands where the
    skeletons put them; the CLIP's pre-training clips are other performers'; same seed, same files."""
    from llavidal.curation.ntu import NTUName, load_skeleton
    from llavidal.pose.align import match_videos
    from llavidal.pose.data import make_split, scan_ntu
    from llavidal.synthetic import PostureWorldSpec, make_posture_world
    from llavidal.video.io import read_frames

    spec = PostureWorldSpec(places=3, performers=(1, 2), pretrain_performers=(11,), replications=1, frames=8)
    w = make_posture_world(tmp_path / "a", seed=5, spec=spec)
    assert w["novel"] == spec.novel == (1, 5, 9) and w["classes"] == tuple(range(1, 10))
    assert w["clips"] == 18 and w["pretrain_clips"] == 9
    items, skipped, _ = scan_ntu(w["skeletons"])
    assert len(items) == 18 and not skipped
    split = make_split(items, "zeroshot", unseen="1,5,9")
    train_places = {divmod(i.action - 1, 3) for i in split.train}
    for hand in (0, 1):  # every place of each hand is trained on
        assert {p[hand] for p in train_places} == {0, 1, 2}
    assert {i.action for i in split.test} == {1, 5, 9}
    videos, missing = match_videos(items, w["rgb"])
    assert len(videos) == 18 and not missing
    assert {NTUName.parse(p).performer for p in w["pretrain_rgb"].iterdir()} == {11}

    def hand(action, performer=1, joint=7):  # mean position of a hand over the clip
        return load_skeleton(w["skeletons"] / f"S001C001P{performer:03d}R001A{action:03d}.skeleton.npy")[
            "skel_body0"][:, joint, :2].mean(0)

    # the left hand's place does not depend on the right hand's, and the places are far apart
    same = np.linalg.norm(hand(1) - hand(2)), np.linalg.norm(hand(4, joint=11) - hand(7, joint=11))
    apart = np.linalg.norm(hand(1) - hand(4)), np.linalg.norm(hand(1, joint=11) - hand(2, joint=11))
    assert max(same) < 0.08 < 0.2 < min(apart)
    # lossless video: the left hand's red dot is drawn where the skeleton puts the hand
    frames, _ = read_frames(videos[items[0].stem], max_frames=8)
    xyz = load_skeleton(items[0].path)["skel_body0"]
    col, row = np.clip(((xyz[0, 7, :2] * [1, -1] + 1) / 2 * spec.size).astype(int), 0, spec.size - 3)
    assert tuple(frames[0, row + 1, col + 1]) == (255, 60, 60)
    b = make_posture_world(tmp_path / "b", seed=5, spec=spec)
    for i in items:
        assert i.path.read_bytes() == (b["skeletons"] / i.path.name).read_bytes()
    assert videos[items[3].stem].read_bytes() == (b["rgb"] / videos[items[3].stem].name).read_bytes()


def test_posture_world_coarse_layout(tmp_path):
    """The coarse layout: a base class names the left hand's place only, its clips hold the right hand at one of
    two places (p + 1 or p + 3, drawn per clip); the novel classes name both hands, (p, p) and (p, p + 2); the
    skeletons put each hand where the clip's captions say; unknown layouts and an odd number of places, or fewer
    than 4, are refused."""
    from llavidal.curation.ntu import load_skeleton
    from llavidal.synthetic import PostureWorldSpec, hand_caption, make_posture_world

    spec = PostureWorldSpec(layout="coarse", performers=(1, 2, 3), pretrain_performers=(11,), replications=2,
                            frames=8)
    assert spec.classes == tuple(range(1, 13)) and spec.novel == tuple(range(5, 13))
    assert spec.holds[1] == ((0,), (1, 3)) and spec.holds[5] == ((0,), (0,)) and spec.holds[6] == ((0,), (2,))
    w = make_posture_world(tmp_path / "w", seed=1, spec=spec)
    assert w["clips"] == 72 and w["pretrain_clips"] == 24
    captions = json.loads((tmp_path / "w" / "captions.json").read_text())  # where each clip holds each hand
    assert len(captions) == 72 and len(json.loads(w["pretrain_captions"].read_text())) == 24
    still = PostureWorldSpec(layout="coarse", performers=(1, 2, 3), replications=2, frames=8, reach=0.0, jitter=0.0)
    make_posture_world(tmp_path / "rest", seed=1, spec=still)  # every hand where it hangs, per performer and clip

    def hands(stem):  # mean displacement of the left and right hand from where they hang: [2, 2]
        xyz = [load_skeleton(f / "skeletons" / f"{stem}.skeleton.npy")["skel_body0"][:, [7, 11], :2].mean(0)
               for f in (tmp_path / "w", tmp_path / "rest")]
        return xyz[0] - xyz[1]

    where = {}  # caption -> displacements of that hand
    for stem, (left, right) in captions.items():
        h = hands(stem)
        where.setdefault(left, []).append(h[0])
        where.setdefault(right, []).append(h[1])
    assert len(where) == 8  # 4 places x 2 hands
    centres = {c: np.mean(v, axis=0) for c, v in where.items()}
    for c, v in where.items():  # each caption is one place, apart from the other places of that hand
        assert np.abs(np.asarray(v) - centres[c]).max() < 0.1
        assert min(np.linalg.norm(centres[c] - centres[d]) for d in centres if d != c and d[:8] == c[:8]) > 0.2
    base1 = {tuple(c) for stem, c in captions.items() if stem.endswith("A001")}  # left at place 0 (-60 degrees)
    assert base1 == {(hand_caption("left", 0, spec), hand_caption("right", 1, spec)),
                     (hand_caption("left", 0, spec), hand_caption("right", 3, spec))}  # both drawn, nothing else
    assert {tuple(c) for stem, c in captions.items() if stem.endswith("A006")} == {
        ("the left hand is held at -60 degrees.", "the right hand is held at 60 degrees.")}
    with pytest.raises(ValueError, match="layout 'diagonal'"):
        PostureWorldSpec(layout="diagonal")
    with pytest.raises(ValueError, match="places 3: the coarse layout needs an even number"):
        PostureWorldSpec(layout="coarse", places=3)
    with pytest.raises(ValueError, match="places 2: the coarse layout needs an even number, at least 4"):
        PostureWorldSpec(layout="coarse", places=2)


def test_world_clip_pretraining_is_a_clip_folder_deterministic_and_reused(tmp_path):
    """The zero-shot setting's CLIP: pre-trained on the world's pre-training videos, written as a CLIP folder the
    pose trainer reads (vision and text towers), the same for the same seed, and reused by a rerun."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from llavidal.peers import WorldClipConfig, pretrain_world_clip
    from llavidal.synthetic import PostureWorldSpec, make_posture_world
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip

    spec = PostureWorldSpec(places=2, performers=(1,), pretrain_performers=(11, 12), replications=1, frames=8)
    w = make_posture_world(tmp_path / "w", seed=0, spec=spec)
    cfg = WorldClipConfig(epochs=2, frames=2, batch=4)
    a = pretrain_world_clip(tmp_path / "a", w["pretrain_rgb"], spec.classes, cfg)
    assert a["videos"] == 8 and a["classes"] == [1, 2, 3, 4] and a["epochs"] == 2 and 0 <= a["train_top1"] <= 1
    assert pretrain_world_clip(tmp_path / "b", w["pretrain_rgb"], spec.classes, cfg) == a  # same seed, same run
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    make_tiny_clip(tmp_path / "random", seed=0, spec=TinyClipSpec(
        vision_hidden_size=64, vision_intermediate_size=128, vision_heads=4, vision_layers=2, projection_dim=32,
        image_size=32, patch_size=4))
    init = load_file(str(tmp_path / "random" / "model.safetensors"))
    assert not np.array_equal(init["visual_projection.weight"].numpy(), wa["visual_projection.weight"].numpy())
    assert CLIPVisionModelWithProjection.from_pretrained(tmp_path / "a").config.image_size == 32
    assert CLIPTextModelWithProjection.from_pretrained(tmp_path / "a").config.projection_dim == 32
    # with the world's captions: one more term per caption place, against that place's distinct captions
    captions = json.loads((tmp_path / "w" / "pretrain" / "captions.json").read_text())
    c = pretrain_world_clip(tmp_path / "c", w["pretrain_rgb"], spec.classes, cfg, captions)
    assert c["caption_sets"] == [2, 2] and a["caption_sets"] == []
    wc = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not np.array_equal(wa["visual_projection.weight"].numpy(), wc["visual_projection.weight"].numpy())
    with pytest.raises(ValueError, match="no caption for 1 of 8 videos"):
        pretrain_world_clip(tmp_path / "d", w["pretrain_rgb"], spec.classes, cfg,
                            dict(list(captions.items())[1:]))
    last = sorted(captions)[-1]
    with pytest.raises(ValueError, match=f"the same number of captions, found \\[2, 3\\] .*{last}: 3"):
        pretrain_world_clip(tmp_path / "d", w["pretrain_rgb"], spec.classes, cfg,
                            {**captions, last: [*captions[last], "a third caption."]})
    assert not (tmp_path / "d").exists()  # refused before anything was written
    mtime = (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns
    assert pretrain_world_clip(tmp_path / "a", w["pretrain_rgb"], spec.classes, cfg) == a  # reused, not retrained
    assert (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("study", ["ski-phase2", "ski-phase2-combinations", "ski-phase2-xsub"])
def test_ski_phase2_study_runs_reports_and_resumes(tmp_path, capsys, study):
    """`quickstart --study ski-phase2[-combinations|-xsub] --fast`: phase 1, then phase 2 without the alignment term
    and with it (ski-phase2: training the pose encoder only, from a frozen video branch, at alpha 10 and 100; the
    others: both branches, and the pose encoder only, at alpha 10); a rerun finds every run finished and reports the
    same table."""
    out = tmp_path / "ski"
    assert cli_main(["quickstart", "--study", study, "--fast", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    frozen = study == "ski-phase2"
    aligned = ["phase2_alpha10_pose", "phase2_alpha100_pose"] if frozen else ["phase2_alpha10", "phase2_alpha10_pose"]
    keys = {"phase1", "phase2_alpha0", *aligned}
    assert set(run) == {"seed", *keys} | ({"clip_pretraining"} if study != "ski-phase2-xsub" else set())
    for key in keys:
        assert 0.0 <= run[key]["pose_top1"] <= 1.0
    assert run["phase2_alpha0"]["pose_top1"] == results["summary"]["phase2_alpha0"]["pose_top1"]["mean"]
    table = (out / "results.md").read_text()
    assert "| phase 2, alpha = 10, --align pose | 1 + 1 |" in table and "phase 2 without the alignment term" in table
    assert ("| phase 2, alpha = 100, --align pose | 1 + 1 |" in table) == frozen
    assert ("| phase 2, alpha = 10 | 1 + 1 |" in table) != frozen
    folder = out / ("seed0-phase2-alpha10-align-pose" if frozen else "seed0-phase2-alpha10")
    phase2 = json.loads((folder / "train_config.json").read_text())
    assert (phase2["alpha"], phase2["init"]) == (10.0, str(out / "seed0-phase1"))
    assert phase2["video_lr_scale"] == (0.0 if frozen else 10.0)
    # ski-phase2's video branch stays the pre-trained CLIP's (the adapter at its zero start); the others' learns
    adapter = load_file(str(folder / "video_branch.safetensors"))["adapter.weight"]
    assert (float(adapter.abs().max()) == 0.0) == frozen
    if study == "ski-phase2":
        assert results["setting"] == "zeroshot" and results["novel_classes"] == list(range(5, 13))
        assert results["world"]["layout"] == "coarse" and run["clip_pretraining"]["caption_sets"] == [4, 4]
        assert json.loads((out / "seed0-phase1" / "train_config.json").read_text())["unseen_classes"] == \
            "5,6,7,8,9,10,11,12"
    elif study == "ski-phase2-combinations":
        assert results["setting"] == "zeroshot" and results["novel_classes"] == [1, 4]
        assert 0.0 <= run["phase2_alpha10"]["pose_gzsl_top1"] <= 1.0 and "novel classes (1, 4)" in table
        assert json.loads((out / "seed0-phase1" / "train_config.json").read_text())["unseen_classes"] == "1,4"
    else:
        assert results["setting"] == "xsub" and "pose_gzsl_top1" not in run["phase2_alpha10"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    capsys.readouterr()
    assert cli_main(["quickstart", "--study", study, "--fast", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == mtimes  # nothing trained again
    assert (out / "results.md").read_text() == table
    # other alphas: only the new phase-2 runs train; phase 1 and the alpha-0 run are reused
    assert cli_main(["quickstart", "--study", study, "--fast", "--alphas", "0,1", "--out", str(out)]) == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    new_runs = {"phase2_alpha1_pose"} | (set() if frozen else {"phase2_alpha1"})
    assert set(run) - {"clip_pretraining"} == {"seed", "phase1", "phase2_alpha0", *new_runs}
    assert "| phase 2, alpha = 1, --align pose | 1 + 1 |" in (out / "results.md").read_text()
    again = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert all(again[p] == t for p, t in mtimes.items())
    assert {p.relative_to(out).parts[0] for p in set(again) - set(mtimes)} == \
        {"seed0-phase2-alpha1-align-pose"} | (set() if frozen else {"seed0-phase2-alpha1"})


def test_study_alphas_flag(tmp_path, capsys):
    out = tmp_path / "ski"
    with pytest.raises(SystemExit):
        cli_main(["quickstart", "--study", "ski-phase2", "--alphas", "1,x", "--out", str(out)])
    assert "expected non-negative numbers" in capsys.readouterr().err
    assert cli_main(["quickstart", "--study", "pooling", "--alphas", "1", "--out", str(tmp_path / "p")]) == 2
    assert "--alphas applies to the ski-phase2 studies only" in capsys.readouterr().err
    assert cli_main(["quickstart", "--study", "long-video", "--alphas", "1", "--out", str(tmp_path / "l")]) == 2
    assert "--alphas applies to the ski-phase2 studies only" in capsys.readouterr().err
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

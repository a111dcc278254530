"""SKI-LVLM phase 2: the pose encoder trained next to a CLIP video branch (``llavidal pose train --phase 2``)."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from ntu_fixture import make_ntu_root
from safetensors.torch import load_file

from llavidal.cli import main as cli_main
from llavidal.io_utils import read_jsonl
from llavidal.pose.align import VideoTextHead, phase2_losses
from llavidal.pose.train import PoseTrainConfig, train

TINY = {"layers": 1, "width": 216, "heads": 9, "dropout": 0.0}


def test_phase2_loss_terms():
    g = torch.Generator().manual_seed(0)
    pose = F.normalize(torch.randn(6, 5, generator=g), dim=-1).requires_grad_()  # cosines in [-1, 1]
    video = F.normalize(torch.randn(6, 5, generator=g), dim=-1).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    t = phase2_losses(pose, video, y, alpha=10.0, pose_scale=14.0, video_scale=20.0)
    ce = lambda z: -torch.log_softmax(z, 1)[torch.arange(6), y].mean()  # noqa: E731
    torch.testing.assert_close(t["ce_video"], ce(20.0 * video))  # the CEs see each branch's scaled logits
    torch.testing.assert_close(t["ce_pose"], ce(14.0 * pose))
    torch.testing.assert_close(t["mse"], ((video - pose) ** 2).mean())  # the alignment compares the cosines
    torch.testing.assert_close(t["loss"], ce(20.0 * video) + ce(14.0 * pose) + 10 * ((video - pose) ** 2).mean())
    # so the weight alpha means the same at any temperature (the release's logits are plain cosines)
    hot = phase2_losses(pose, video, y, alpha=10.0, pose_scale=100.0, video_scale=100.0)
    torch.testing.assert_close(hot["mse"], t["mse"])
    t["loss"].backward()  # the alignment term pulls both branches
    assert pose.grad.abs().sum() > 0 and video.grad.abs().sum() > 0
    no_align = phase2_losses(pose, video, y, alpha=0.0, pose_scale=14.0, video_scale=20.0)
    torch.testing.assert_close(no_align["loss"], ce(20.0 * video) + ce(14.0 * pose))
    # --align pose / video: the alignment term trains one branch, the other's cosines are its fixed target
    for align, trained, fixed in (("pose", pose, video), ("video", video, pose)):
        pose.grad = video.grad = None
        phase2_losses(pose, video, y, alpha=10.0, pose_scale=14.0, video_scale=20.0, align=align)["loss"].backward()
        grad_fixed, grad_trained = fixed.grad.clone(), trained.grad.clone()
        pose.grad = video.grad = None
        phase2_losses(pose, video, y, alpha=0.0, pose_scale=14.0, video_scale=20.0)["loss"].backward()
        torch.testing.assert_close(grad_fixed, fixed.grad)  # only its own cross-entropy moves the fixed branch
        assert (grad_trained - trained.grad).abs().max() > 1e-4  # the alignment term moves the other
    with pytest.raises(ValueError, match="align 'sideways'"):
        phase2_losses(pose, video, y, align="sideways")
    # the video head starts as CLIP's zero-shot logits: a zero adapter, CLIP's initial scale
    head = VideoTextHead(8)
    img, text = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    cos = F.normalize(img, dim=-1) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(head.cosines(img, text), cos)
    torch.testing.assert_close(head(img, text), (1 / 0.07) * cos)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """NTU-layout clips (RGB + skeleton) of 3 actions by a training and a test subject, one skeleton without its
    video; a small CLIP; a phase-1 model."""
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip

    root = make_ntu_root(tmp_path_factory.mktemp("ntu"), performers=(1, 3), actions=(1, 2, 8), frames=16,
                         size=(64, 48), with_txt=False)
    (root / "rgb" / "S001C001P003R001A008_rgb.avi").unlink()
    clip = make_tiny_clip(root.parent / "clip", seed=0, spec=TinyClipSpec(vision_hidden_size=32,
                                                                           vision_intermediate_size=64,
                                                                           vision_heads=2, vision_layers=2))
    phase1 = root.parent / "phase1"
    train(PoseTrainConfig(data=str(root / "skeletons"), out=str(phase1), clip=str(clip), epochs=1, batch=8, lr=3e-3,
                          frames=16, workers=0, device="cpu", progress=False, **TINY))
    return root, clip, phase1


def _phase2_argv(root, clip, phase1, out, epochs=2):
    return ["pose", "train", "--phase", "2", "--init", str(phase1), "--videos", str(root / "rgb"), "--data",
            str(root / "skeletons"), "--out", str(out), "--clip", str(clip), "--epochs", str(epochs), "--batch", "4",
            "--lr", "3e-3", "--frames", "16", "--dropout", "0", "--workers", "0", "--device", "cpu",
            "--video-frames", "2", "--no-progress"]


def test_phase2_trains_both_branches_reports_and_resumes(world, tmp_path, monkeypatch):
    root, clip, phase1 = world
    out = tmp_path / "p2"
    assert cli_main(_phase2_argv(root, clip, phase1, out)) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    last = rows[-1]
    assert {"train_ce_video", "train_ce_pose", "train_mse", "train_pose_top1", "top1", "pose_top1"} <= last.keys()
    assert abs(last["train_loss"] - (last["train_ce_video"] + last["train_ce_pose"] + 10 * last["train_mse"])) < 1e-4
    assert last["n_test"] == 2  # the test subject's clip without a video is skipped, and said so
    skipped = read_jsonl(out / "skipped.jsonl")
    assert [r["file"].endswith("S001C001P003R001A008.skeleton.npy") for r in skipped] == [True]
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["phase"], summary["alpha"], summary["skipped_reasons"]) == (2, 10.0, {"no RGB video": 1})
    assert summary["model_config"]["layers"] == 1  # the encoder of the phase-1 run
    # the pose encoder moved from phase 1; the video branch is saved beside it
    before, after = load_file(str(phase1 / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 0
    branch = load_file(str(out / "video_branch.safetensors"))
    assert branch["adapter.weight"].abs().sum() > 0
    # the video branch (a linear probe on frozen embeddings) steps at --video-lr-scale (10) times the encoder's rate
    groups = torch.load(out / "checkpoint-0002" / "optimizer.pt", weights_only=True)["param_groups"]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 10.0, 10.0]
    assert groups[2]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    # killed after epoch 1: the rerun resumes (the CLIP embeddings are not computed again) and ends the same
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoint-0002")
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))

    def no_clip(*a, **k):
        raise AssertionError("CLIP embeddings recomputed on resume")

    monkeypatch.setattr("llavidal.pose.align.clip_image_embeddings", no_clip)
    assert cli_main(_phase2_argv(root, clip, phase1, resumed)) == 0
    assert json.loads((resumed / "train_summary.json").read_text())["resumed_from_epoch"] == 1
    for name in ("model.safetensors", "video_branch.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(resumed / name))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")
    assert read_jsonl(resumed / "metrics.jsonl")[-1]["top1"] == last["top1"]
    # a checkpoint whose optimizer has other parameter groups (an older llavidal's phase 2): one clear error
    older = tmp_path / "older"
    shutil.copytree(out, older)
    shutil.rmtree(older / "checkpoint-0002")
    opt = torch.load(older / "checkpoint-0001" / "optimizer.pt", weights_only=True)
    opt["param_groups"] = opt["param_groups"][:2]
    torch.save(opt, older / "checkpoint-0001" / "optimizer.pt")
    with pytest.raises(ValueError, match="2 parameter groups, this run 4"):
        train(PoseTrainConfig(data=str(root / "skeletons"), out=str(older), clip=str(clip), phase=2,
                              init=str(phase1), videos=str(root / "rgb"), epochs=2, batch=4, lr=3e-3,
                              frames=16, workers=0, device="cpu", progress=False, video_frames=2, dropout=0.0))
    with pytest.raises(ValueError, match="alpha=10.0, but this run has alpha=1.0"):
        train(PoseTrainConfig(data=str(root / "skeletons"), out=str(resumed), clip=str(clip), phase=2,
                              init=str(phase1), videos=str(root / "rgb"), alpha=1.0, epochs=3, batch=4, lr=3e-3,
                              frames=16, workers=0, device="cpu", progress=False, video_frames=2, dropout=0.0))


def test_phase2_without_the_alignment_term_leaves_the_pose_encoder_alone(world, tmp_path):
    """alpha = 0: the pose encoder's steps do not depend on the video branch (each branch's gradient is clipped on
    its own), so alpha = 0 is phase 1 continued, the control of the phase-2 study. Two runs whose video branches see
    different frames end with the same pose encoder and different video branches."""
    root, clip, phase1 = world
    outs = []
    for frames in (1, 2):
        outs.append(tmp_path / f"frames{frames}")
        argv = _phase2_argv(root, clip, phase1, outs[-1], epochs=1)
        argv[argv.index("--video-frames") + 1] = str(frames)
        assert cli_main([*argv, "--alpha", "0"]) == 0
    a, b = (load_file(str(o / "model.safetensors")) for o in outs)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    va, vb = (load_file(str(o / "video_branch.safetensors")) for o in outs)
    assert max(float((va[k] - vb[k]).abs().max()) for k in va) > 0


def test_phase2_with_a_frozen_video_branch_distils_the_clip(world, tmp_path, capsys):
    """--video-lr-scale 0: the video branch stays the CLIP's (the adapter at its zero start, the logit scale at its
    start), so the alignment target is the pre-trained CLIP's own cosines; the pose encoder still trains. --align
    video then has nothing to train, and says so."""
    root, clip, phase1 = world
    out = tmp_path / "frozen"
    assert cli_main([*_phase2_argv(root, clip, phase1, out, epochs=1), "--video-lr-scale", "0", "--align", "pose"]) == 0
    branch = load_file(str(out / "video_branch.safetensors"))
    assert float(branch["adapter.weight"].abs().max()) == 0.0 and float(branch["adapter.bias"].abs().max()) == 0.0
    assert float(branch["logit_scale"]) == float(torch.tensor(math.log(1 / 0.07)))
    before, after = load_file(str(phase1 / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 0
    capsys.readouterr()
    assert cli_main([*_phase2_argv(root, clip, phase1, tmp_path / "x", epochs=1), "--video-lr-scale", "0",
                     "--align", "video"]) == 2
    assert "--align video with --video-lr-scale 0: the alignment term would train nothing" in capsys.readouterr().err
    assert cli_main([*_phase2_argv(root, clip, phase1, tmp_path / "y", epochs=1), "--video-lr-scale", "-1"]) == 2
    assert "--video-lr-scale >= 0" in capsys.readouterr().err


def test_phase2_needs_init_and_videos(world, tmp_path, capsys):
    root, clip, _ = world
    assert cli_main(["pose", "train", "--phase", "2", "--data", str(root / "skeletons"), "--out", str(tmp_path / "x"),
                     "--clip", str(clip), "--device", "cpu", "--no-progress"]) == 2
    assert "--phase 2 needs --init" in capsys.readouterr().err

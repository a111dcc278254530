"""kill -9 at seeded points of the long jobs, then the same command again: the outputs equal those of an
uninterrupted run and nothing is truncated; a full disk (a file-size limit) ends in a clear error and leaves earlier
outputs intact. A few kill points per job keep the suite fast."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from faults.harness import count_lines, kill_and_rerun, llavidal, run, tree
from helpers_train import synthetic_data, train_flags

SEEDS = (11, 12)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("synth_faults"))


@pytest.fixture(scope="module")
def feature_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack_src")
    rng = np.random.default_rng(0)
    for i in range(400):
        np.save(root / f"v{i:04d}.npy", rng.standard_normal((64, 256)).astype(np.float32))
    (root / "bad.npy").write_bytes(b"")
    return root


# ==================================================================== pack-features
def test_pack_features_resumes_after_kill(feature_folder, tmp_path):
    ref = tmp_path / "ref"
    assert run(llavidal("pack-features", feature_folder, ref), tmp_path).returncode == 1  # bad.npy is listed
    expected = tree(ref)
    for seed in SEEDS:
        out = tmp_path / f"killed{seed}"
        n = 40 + seed * 10  # kill once this many files are packed
        proc = kill_and_rerun(llavidal("pack-features", feature_folder, out), tmp_path,
                              lambda: count_lines(out / "progress.jsonl") >= n, seed, finished=out / "index.json",
                              expect=1)  # nothing that looks finished before; bad.npy listed after
        assert "bad.npy" in proc.stdout
        assert tree(out) == expected
    again = run(llavidal("pack-features", feature_folder, ref), tmp_path)
    assert "already holds these 400 files" in again.stdout and tree(ref) == expected


def test_pack_features_on_a_full_disk(feature_folder, tmp_path):
    out = tmp_path / "store"
    proc = run(llavidal("pack-features", feature_folder, out), tmp_path, fsize=4 << 20)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "cannot write" in proc.stderr and "run the same command again to resume" in proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "index.json").exists()
    done = count_lines(out / "progress.jsonl")
    assert 0 < done < 400
    run(llavidal("pack-features", feature_folder, tmp_path / "ref"), tmp_path)
    assert run(llavidal("pack-features", feature_folder, out), tmp_path).returncode == 1
    assert tree(out) == tree(tmp_path / "ref")


# ==================================================================== train
def test_train_resumes_after_kill(tiny_base, synth, tmp_path):
    # 16 steps: after the later kill point, 8 steps and 4 checkpoints are left, far more than the kill delay
    flags = dict(per_device_train_batch_size=2, max_steps=16, save_strategy="steps", save_steps=2,
                 video_mask_prob=0.5)
    ref = tmp_path / "ref"
    assert run(llavidal("train", *train_flags(tiny_base, synth, ref, **flags)), tmp_path).returncode == 0
    expected = load_file(str(ref / "adapter.safetensors"))
    for seed, after in zip(SEEDS, ("checkpoint-2", "checkpoint-8")):
        out = tmp_path / f"killed{seed}"
        kill_and_rerun(llavidal("train", *train_flags(tiny_base, synth, out, **flags)), tmp_path,
                       lambda: (out / after / "trainer_state.json").is_file(), seed, max_delay=0.1,
                       finished=out / "train_summary.json")
        got = load_file(str(out / "adapter.safetensors"))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["global_step"] == 16 and summary["resumed_from"]


# ==================================================================== eval run
def test_eval_run_resumes_after_kill(tiny_base, tmp_path):
    from llavidal.synthetic import WorldSpec, make_dataset

    data = make_dataset(tmp_path / "data", n_train=0, n_test=24, seed=1, spec=WorldSpec(video_rows=8, pose_rows=6))

    def cmd(out):
        return llavidal("eval", "run", "--task", "smarthome-ar", "--qa-file", data["test"], "--video-dir",
                        data["video_folder"], "--base", tiny_base, "--output", out, "--max-new-tokens", "48",
                        "--batch-size", "2", "--device", "cpu")  # 48 tokens (the random tiny never stops): seconds of
    # generation left after the kill point, however fast the engine

    ref = tmp_path / "ref"
    assert run(cmd(ref), tmp_path).returncode == 0
    expected = sorted(json.loads(x)["index"] for x in (ref / "predictions.jsonl").read_text().splitlines())
    ref_scored = (ref / "scored.jsonl").read_text()
    for seed in SEEDS:
        out = tmp_path / f"killed{seed}"
        kill_and_rerun(cmd(out), tmp_path, lambda: count_lines(out / "predictions.jsonl") >= seed - 8, seed,
                       finished=out / "summary.json")
        rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        assert sorted(r["index"] for r in rows) == expected  # each item once, none lost
        assert (out / "scored.jsonl").read_text() == ref_scored
        a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
        assert a["score"] == b["score"]


# ==================================================================== extract-video
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip
    from llavidal.video.io import write_video

    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i in range(10):
        write_video(root / "v" / f"clip{i:02d}.mkv", rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), 8,
                    codec="ffv1", pix_fmt="bgr0")
    clip = make_tiny_clip(root / "clip", seed=3, spec=TinyClipSpec(vision_hidden_size=32, vision_intermediate_size=64,
                                                                   vision_heads=2, vision_layers=2))
    return root / "v", clip


def _extract(src, clip, out):
    return llavidal("extract-video", "--input", src, "--output", out, "--clip", clip, "--batch", "12", "--workers",
                    "0", "--device", "cpu")


def test_extract_video_resumes_after_kill(videos, tmp_path):
    src, clip = videos
    ref = tmp_path / "ref"
    assert run(_extract(src, clip, ref), tmp_path).returncode == 0
    expected = tree(ref, skip=("extract_summary", "failures"))
    assert len(expected) == 10
    for seed in SEEDS:
        out = tmp_path / f"killed{seed}"
        kill_and_rerun(_extract(src, clip, out), tmp_path, lambda: len(list(out.glob("*.pkl"))) >= seed - 8, seed)
        assert tree(out, skip=("extract_summary", "failures")) == expected
        assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_extract_video_on_a_full_disk_keeps_earlier_outputs(videos, tmp_path):
    src, clip = videos
    out = tmp_path / "feats"
    first = sorted(src.iterdir())[:4]
    part = tmp_path / "first"
    part.mkdir()
    for p in first:
        (part / p.name).symlink_to(p)
    assert run(_extract(part, clip, out), tmp_path).returncode == 0
    before = tree(out, skip=("extract_summary", "failures"))
    proc = run(_extract(src, clip, out), tmp_path, fsize=2000)  # feature files need more than that
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 6 and {f["stage"] for f in failures} == {"write"}
    assert all("File too large" in f["error"] for f in failures), failures[0]
    assert "6 failed" in proc.stdout
    assert tree(out, skip=("extract_summary", "failures")) == before  # nothing truncated, nothing lost
    assert run(_extract(src, clip, out), tmp_path).returncode == 0  # space again: the rest is done
    assert len(list(out.glob("*.pkl"))) == 10


# ==================================================================== pose train and extract-pose
@pytest.fixture(scope="module")
def skeletons(tmp_path_factory):
    from ntu_fixture import make_skeleton

    from llavidal.curation.ntu import NTUName, write_skeleton_npy
    from llavidal.video.clip import make_tiny_clip

    root = tmp_path_factory.mktemp("ntu")
    for s in (1, 2):
        for p in (1, 3):
            for a in (1, 2, 3, 8, 9):
                name = NTUName(s, 1, p, 1, a)
                write_skeleton_npy(make_skeleton(name, frames=24), root / "sk" / f"{name.stem}.skeleton.npy")
    return root / "sk", make_tiny_clip(root / "clip", seed=0)


def _pose_train(data, clip, out):
    return llavidal("pose", "train", "--data", data, "--out", out, "--clip", clip, "--epochs", "4", "--batch", "8",
                    "--lr", "3e-3", "--warmup-epochs", "0.5", "--frames", "16", "--workers", "0", "--eval-every", "2",
                    "--device", "cpu", "--no-progress", "--layers", "1", "--dropout", "0")


def test_pose_train_and_extract_pose_resume_after_kill(skeletons, tmp_path):
    data, clip = skeletons
    ref = tmp_path / "ref"
    assert run(_pose_train(data, clip, ref), tmp_path).returncode == 0
    expected = load_file(str(ref / "model.safetensors"))
    out = tmp_path / "killed"
    kill_and_rerun(_pose_train(data, clip, out), tmp_path, lambda: (out / "checkpoint-0002").is_dir(), SEEDS[0],
                   finished=out / "train_summary.json")
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    def extract(o):
        return llavidal("extract-pose", "--skeletons", data, "--model", ref, "--output", o, "--tokens", "8",
                        "--batch", "1", "--workers", "0", "--device", "cpu", "--no-progress")

    assert run(extract(tmp_path / "fref"), tmp_path).returncode == 0
    want = tree(tmp_path / "fref", skip=("summary", "failures"))
    assert len(want) == 20
    for seed in SEEDS[:1]:
        o = tmp_path / f"f{seed}"
        kill_and_rerun(extract(o), tmp_path, lambda: len(list(o.glob("*_pose.pkl"))) >= seed - 5, seed, 0.1)
        assert tree(o, skip=("summary", "failures")) == want


# ==================================================================== mmpro
def test_mmpro_resumes_after_kill(tiny_base, synth, tmp_path):
    def cmd(out):
        return llavidal("mmpro", "--model_name_or_path", tiny_base, "--data_path", synth["train"], "--video_folder",
                        synth["video_folder"], "--object_folder", synth["object_folder"], "--pose_folder",
                        synth["pose_folder"], "--output_dir", out, "--", "--max_steps", "8", "--save_steps", "2",
                        "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--report_to", "none",
                        "--use_cpu", "True", "--disable_tqdm", "True", "--dataloader_num_workers", "0")

    ref = tmp_path / "ref"
    assert run(cmd(ref), tmp_path, timeout=600).returncode == 0
    final = "stage3-video-object-pose"
    expected = load_file(str(ref / final / "adapter.safetensors"))
    out = tmp_path / "killed"
    # killed in stage 2 with 6 of its 8 steps left (more than the kill delay on any machine)
    proc = kill_and_rerun(cmd(out), tmp_path, lambda: (out / "stage2-video-pose" / "checkpoint-2" /
                                                       "trainer_state.json").is_file(), SEEDS[0], max_delay=0.1,
                          timeout=600, finished=out / "mmpro.json")
    assert proc.stdout.count("already complete, skipped") == 3  # the stage-1 runs are not redone
    got = load_file(str(out / final / "adapter.safetensors"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


# ==================================================================== curation: person-augmented crops
def test_curation_crop_resumes_after_kill(tmp_path):
    from ntu_fixture import make_ntu_root

    root = make_ntu_root(tmp_path / "ntu", performers=(1, 2), actions=(1, 2, 3, 8, 9), with_txt=False)

    def cmd(out):
        return llavidal("curate", "crop", "--ntu-root", root, "--out", out, "--slack", "4", "--size", "32",
                        "--format", "avi", "--no-progress")

    ref = tmp_path / "ref"
    assert run(cmd(ref), tmp_path).returncode == 0
    want = tree(ref, skip=("manifest", "records", "failures"))
    assert len([k for k in want if k.endswith(".avi")]) == 10
    out = tmp_path / "killed"
    kill_and_rerun(cmd(out), tmp_path, lambda: len(list(out.glob("*_rgb.avi"))) >= 3, SEEDS[0], 0.1)
    assert tree(out, skip=("manifest", "records", "failures")) == want


# ==================================================================== extract-objects
def test_extract_objects_resumes_after_kill(tmp_path):
    from test_objects import render, scene_detections

    from llavidal.video.clip import TinyClipSpec, make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip", seed=0, spec=TinyClipSpec(vision_hidden_size=64,
                          vision_intermediate_size=128, vision_heads=4, projection_dim=512))
    videos, dets = tmp_path / "videos", tmp_path / "dets"
    dets.mkdir()
    for i in range(5):
        render(videos / f"scene{i}.mp4")
        (dets / f"scene{i}.json").write_text(json.dumps(scene_detections(f"scene{i}.mp4")))

    def cmd(out):
        return llavidal("extract-objects", "--videos", videos, "--detections", dets, "--output", out, "--clip", clip,
                        "--device", "cpu", "--batch", "8", "--workers", "0")

    ref = tmp_path / "ref"
    assert run(cmd(ref), tmp_path).returncode == 0
    want = tree(ref, skip=("summary", "manifest", "failures"))
    assert len([k for k in want if k.endswith("_object.pkl")]) == 5
    out = tmp_path / "killed"
    kill_and_rerun(cmd(out), tmp_path, lambda: len(list(out.glob("*_object.pkl"))) >= 2, SEEDS[0], 0.1)
    assert tree(out, skip=("summary", "manifest", "failures")) == want

"""Pose features: the skeleton encoder, SkeletonCLIP training on NTU skeletons, and ``llavidal extract-pose``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from ntu_fixture import make_skeleton
from safetensors.torch import load_file

from llavidal.cli import main as cli_main
from llavidal.curation.ntu import NTUName, format_skeleton_text, write_skeleton_npy
from llavidal.features import load_feature, validate_feature
from llavidal.io_utils import read_jsonl
from llavidal.pose.configuration import PoseEncoderConfig
from llavidal.pose.data import XSUB_TRAIN_SUBJECTS, make_split, parse_unseen, scan_ntu
from llavidal.pose.modeling import PoseEncoder, PoseModelError, SkeletonCLIP, resample_frames
from llavidal.pose.train import PoseTrainConfig, topk_correct, train

TINY = {"layers": 1, "width": 216, "heads": 9, "dropout": 0.0}  # published width, one block: fast on CPU
PERFORMERS = (1, 3)  # 1 is an official cross-subject training subject, 3 is not
SETUPS = (1, 2)
ACTIONS = (1, 2, 3, 8, 9)


def _tiny_encoder(seed=0, **kw) -> PoseEncoder:
    torch.manual_seed(seed)
    return PoseEncoder(PoseEncoderConfig(**{**TINY, **kw})).eval()


def _body(t=24, seed=0) -> np.ndarray:
    """A plausible moving body [3, T, 25]: a random rest pose 3 m from the camera plus a slow wave."""
    rng = np.random.default_rng(seed)
    rest = rng.normal(0, 0.3, size=(3, 1, 25)) + np.array([0, 0, 3.0])[:, None, None]
    wave = 0.1 * np.sin(np.linspace(0, 6, t))[None, :, None] * rng.normal(size=(3, 1, 25))
    return (rest + wave).astype(np.float32)


@pytest.fixture(scope="module")
def ntu(tmp_path_factory):
    """Skeleton folder: 20 clips (.skeleton.npy, 5 also as raw .skeleton text), 1 text-only clip, and three files
    that must be skipped and reported: a corrupt one, one without any tracked body, one with a foreign name."""
    root = tmp_path_factory.mktemp("ntu") / "skeletons"
    root.mkdir()
    for s in SETUPS:
        for p in PERFORMERS:
            for a in ACTIONS:
                name = NTUName(s, 1, p, 1, a)
                d = make_skeleton(name, frames=24)
                write_skeleton_npy(d, root / f"{name.stem}.skeleton.npy")
                if s == 1 and p == 1:  # the same clip in both formats: the .npy is used, the text is a duplicate
                    (root / f"{name.stem}.skeleton").write_text(format_skeleton_text(d))
    text_only = NTUName(2, 1, 3, 2, 9)
    (root / f"{text_only.stem}.skeleton").write_text(format_skeleton_text(make_skeleton(text_only, frames=24)))
    (root / "S002C001P003R002A008.skeleton.npy").write_bytes(b"\x93NUMPY garbage")
    empty = make_skeleton(NTUName(2, 1, 3, 2, 3), frames=24)
    for k in [k for k in empty if k.endswith("_body0")]:
        empty[k] = np.zeros_like(empty[k])
    write_skeleton_npy(empty, root / "S002C001P003R002A003.skeleton.npy")
    (root / "notes.skeleton.npy").write_bytes(b"not an NTU name")
    return root


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from llavidal.video.clip import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)


def _train_cfg(ntu, clip_dir, out, **kw) -> PoseTrainConfig:
    base = dict(data=str(ntu), out=str(out), clip=str(clip_dir), split="xsub", epochs=4, batch=8, lr=3e-3,
                warmup_epochs=0.5, frames=16, workers=0, eval_every=2, device="cpu", progress=False, seed=0, **TINY)
    return PoseTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(ntu, clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pose") / "run"
    summary = train(_train_cfg(ntu, clip_dir, out))
    return out, summary


# ---------------------------------------------------------------------------------------------------- encoder
def test_default_shapes_published_and_ski_lvlm():
    cfg = PoseEncoderConfig()
    assert (cfg.width, cfg.heads, cfg.stride, cfg.tokens, cfg.frames) == (216, 9, 4, 256, 1024)
    torch.manual_seed(0)
    enc = PoseEncoder(PoseEncoderConfig(layers=1)).eval()  # the default sizes, one block (CPU time)
    x = torch.zeros(1, 3, 300, 25, 2)
    x[0, :, :, :, 0] = torch.from_numpy(_body(300))
    with torch.no_grad():
        assert enc(x).shape == (1, 75, 216)  # 75 tokens x 4 = 300 frames, an NTU clip's length
    # [256, 216] (1024 frames) end to end: test_extract_pose_files_validate_and_resume


def test_stride_and_bad_input():
    enc = _tiny_encoder(stride=4)
    x = torch.from_numpy(_body(40))[None, ..., None]  # [1, 3, 40, 25, 1]
    with torch.no_grad():
        assert enc(x).shape == (1, 10, 216)
        assert _tiny_encoder(stride=2)(x).shape == (1, 20, 216)
        with pytest.raises(PoseModelError, match="multiple of the stride 4"):
            enc(x[:, :, :38])
        with pytest.raises(PoseModelError, match=r"expected \[N, 3, T, 25, M\]"):
            enc(x[:, :2])
        with pytest.raises(PoseModelError, match="no tracked body"):
            enc(torch.cat([x, torch.zeros_like(x)]))


def test_absent_second_body_changes_nothing_present_one_does():
    """Documented: bodies are encoded independently and averaged over the bodies PRESENT in the clip, so an
    all-zero second body (NTU's 'no second person') gives exactly the tokens of the single body alone."""
    enc = _tiny_encoder()
    one = torch.from_numpy(_body(24, seed=1))[None, ..., None]  # [1, 3, T, 25, 1]
    with_empty = torch.cat([one, torch.zeros_like(one)], dim=-1)  # [1, 3, T, 25, 2]
    with_other = torch.cat([one, torch.from_numpy(_body(24, seed=2))[None, ..., None]], dim=-1)
    with torch.no_grad():
        a, b, c = enc(one), enc(with_empty), enc(with_other)
        swapped = enc(with_other.flip(-1))
        batched = enc(torch.cat([with_empty, with_other]))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - c).abs().max() > 1e-2  # a real second person does change the features
    torch.testing.assert_close(c, swapped, rtol=0, atol=1e-5)  # persons are a set
    torch.testing.assert_close(batched, torch.cat([b, c]), rtol=0, atol=1e-5)  # batch-independent


def test_translation_invariance():
    enc = _tiny_encoder()
    x = torch.from_numpy(_body(24))[None, ..., None]
    moved = x + torch.tensor([0.5, -0.2, 1.0])[None, :, None, None, None]
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc(moved), rtol=0, atol=1e-4)


def test_resample_frames():
    x = np.stack([_body(300, 0), _body(300, 1)], axis=-1)  # [3, 300, 25, 2]
    assert np.array_equal(resample_frames(x, 300), x)  # 300 frames -> 75 tokens: untouched
    ramp = np.zeros((3, 3, 25, 1), np.float32)
    ramp[:, :, :, 0] = np.array([1.0, 2.0, 3.0])[None, :, None]
    np.testing.assert_allclose(resample_frames(ramp, 5)[0, :, 0, 0], [1.0, 1.5, 2.0, 2.5, 3.0])
    gap = ramp.copy()
    gap[:, 1] = 0  # the body is untracked in the middle frame: never blended with zeros
    out = resample_frames(gap, 5)[0, :, 0, 0]
    np.testing.assert_allclose(out, [1.0, 1.0, 0.0, 3.0, 3.0])
    assert resample_frames(x, 1024).shape == (3, 1024, 25, 2)


# ---------------------------------------------------------------------------------------------------- data, splits
def test_scan_and_splits(ntu):
    items, skipped, duplicates = scan_ntu(ntu)
    stems = {i.stem for i in items}
    assert len(items) == 23  # 20 + text-only + the 2 broken ones (found unreadable when loaded)
    assert "S002C001P003R002A009" in stems and items[[i.stem for i in items].index("S002C001P003R002A009")].path.name \
        .endswith(".skeleton")
    assert [s["file"].endswith("notes.skeleton.npy") for s in skipped] == [True]
    assert len(duplicates) == 5 and all(d["file"].endswith(".skeleton") for d in duplicates)

    assert len(XSUB_TRAIN_SUBJECTS) == 53 and {1, 2, 4, 103} <= XSUB_TRAIN_SUBJECTS and 3 not in XSUB_TRAIN_SUBJECTS
    xsub = make_split(items, "xsub")
    assert {i.performer for i in xsub.train} == {1} and {i.performer for i in xsub.test} == {3}
    xset = make_split(items, "xset")
    assert {i.setup for i in xset.train} == {2} and {i.setup for i in xset.test} == {1}
    assert xsub.train_classes == list(range(1, 121))

    zs = make_split(items, "zeroshot", unseen="2", seed=0)
    assert len(zs.unseen) == 2 and set(zs.unseen) <= set(ACTIONS)
    assert zs.unseen == make_split(items, "zeroshot", unseen=2, seed=0).unseen  # seeded
    assert not {i.action for i in zs.train} & set(zs.unseen)
    assert not set(zs.train_classes) & set(zs.unseen) and len(zs.train_classes) == 118
    assert {i.action for i in zs.test} == set(zs.unseen) and zs.test_classes == zs.unseen
    assert parse_unseen("A003, 8", [1, 3, 8, 9]) == [3, 8]
    with pytest.raises(ValueError, match="needs --unseen-classes"):
        make_split(items, "zeroshot")
    with pytest.raises(ValueError, match="nothing is left to train"):
        parse_unseen("1,2,3,8,9", list(ACTIONS))


def test_topk_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 12, generator=g)
    target = torch.randint(0, 12, (200,), generator=g)
    got = topk_correct(logits, target, ks=(1, 5))
    order = np.argsort(-logits.numpy(), axis=1)
    for k in (1, 5):
        assert got[k] == sum(int(t in row[:k]) for row, t in zip(order, target.numpy()))
    assert 0 < got[1] < got[5] < 200
    assert topk_correct(logits[:, :3], target.clamp(max=2), ks=(5,))[5] == 200  # k capped at the class count


# ---------------------------------------------------------------------------------------------------- training
def test_training_lowers_loss_and_reports_skips(trained):
    out, summary = trained
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.8, [r["train_loss"] for r in rows]
    assert ["top1" in r for r in rows] == [False, True, False, True]  # --eval-every 2
    for r in rows[1::2]:
        assert 0 <= r["top1"] <= r["top5"] <= 1 and r["n_test"] == 11 and r["test_classes"] == 120
    assert summary["split"]["train_samples"] == 10 and summary["split"]["test_samples"] == 13
    assert summary["skipped"] == 3 and summary["duplicates_not_used"] == 5
    assert summary["skipped_reasons"] == {"bad name": 1, "unreadable": 1, "no tracked body": 1}
    skipped = {r["file"].rsplit("/", 1)[-1] for r in read_jsonl(out / "skipped.jsonl")}
    assert skipped == {"notes.skeleton.npy", "S002C001P003R002A008.skeleton.npy", "S002C001P003R002A003.skeleton.npy"}
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0003", "checkpoint-0004"]
    assert load_file(str(out / "text_embeddings.safetensors"))["text_embeds"].shape == (120, 512)


def test_pose_eval_command_matches_the_training_metrics(trained, ntu, capsys):
    out, _ = trained
    assert cli_main(["pose", "eval", "--model", str(out), "--data", str(ntu), "--frames", "16", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    last = read_jsonl(out / "metrics.jsonl")[-1]
    assert (result["n_test"], result["top1"], result["top5"]) == (last["n_test"], last["top1"], last["top5"])
    assert result["skipped"] == 3  # the bad name, the corrupt file and the empty one


def test_resume_gives_the_same_weights(ntu, clip_dir, trained, tmp_path):
    """A run killed while writing checkpoint 4 resumes from checkpoint 3 and ends with the uninterrupted weights."""
    out = tmp_path / "killed"
    shutil.copytree(trained[0], out)
    shutil.rmtree(out / "checkpoint-0004")
    (out / "checkpoint-0004").with_name(".checkpoint-0004.tmp").mkdir()  # half-written, must be ignored
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(rows[:3]) + "\n" + rows[3][:20])  # torn last line
    summary = train(_train_cfg(ntu, clip_dir, out))
    assert summary["resumed_from_epoch"] == 3
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    a = load_file(str(trained[0] / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="split='xsub'"):
        train(_train_cfg(ntu, clip_dir, out, epochs=5, split="xset"))


def test_zeroshot_training_never_sees_unseen_classes(ntu, clip_dir, trained, tmp_path):
    (tmp_path / "zs").mkdir()
    for name in ("text_embeddings.safetensors", "classes.json"):  # same CLIP and prompts: reused, not recomputed
        shutil.copy(trained[0] / name, tmp_path / "zs")
    out = tmp_path / "zs"
    assert cli_main(["pose", "train", "--data", str(ntu), "--out", str(out), "--clip", str(clip_dir), "--split",
                     "zeroshot", "--unseen-classes", "3,8", "--epochs", "1", "--batch", "8", "--frames", "16",
                     "--layers", "1", "--dropout", "0", "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    info = summary["split"]
    assert info["unseen_classes"] == [3, 8] and info["train_classes"] == 118 and info["test_classes"] == 2
    assert not set(info["classes_in_train_data"]) & {3, 8} and set(info["classes_in_test_data"]) == {3, 8}
    row = summary["last_metrics"]
    assert row["top5"] == 1.0  # only 2 unseen prompts: top-5 is trivially right, top-1 is the ZSL number
    assert {"gzsl_top1", "gzsl_top5"} <= row.keys()


# ---------------------------------------------------------------------------------------------------- extraction
@pytest.fixture
def few(ntu, tmp_path):
    """Three readable clips and the corrupt one."""
    d = tmp_path / "few"
    d.mkdir()
    for stem in ("S001C001P001R001A001", "S001C001P001R001A002", "S002C001P003R001A009", "S002C001P003R002A008"):
        shutil.copy(ntu / f"{stem}.skeleton.npy", d)
    return d


def test_extract_pose_files_validate_and_resume(trained, few, tiny_base, tmp_path, capsys):
    from llavidal.model.base import config_from_base
    from llavidal.model.files import read_config_dict

    base_cfg = config_from_base(read_config_dict(tiny_base), 32012)
    out = tmp_path / "feats"
    argv = ["extract-pose", "--skeletons", str(few), "--model", str(trained[0]), "--output", str(out),
            "--tokens", "75", "--workers", "0", "--no-progress"]
    assert cli_main(argv) == 1  # one file failed
    names = sorted(p.name for p in out.glob("*_pose.pkl"))
    assert names == ["S001C001P001R001A001_pose.pkl", "S001C001P001R001A002_pose.pkl", "S002C001P003R001A009_pose.pkl"]
    for n in names:
        arr = load_feature(out / n)
        assert arr.shape == (75, 216) and arr.dtype == np.float32  # SKI-LVLM-shaped
        validate_feature(arr, "pose", base_cfg, n)
    failures = read_jsonl(out / "failures.jsonl")
    assert [f["video"] for f in failures] == ["S002C001P003R002A008"]
    summary = json.loads((out / "extract_summary.json").read_text())
    assert (summary["written"], summary["failed"], summary["random_init"]) == (3, 1, False)
    assert len(summary["model_sha256"]) == 64

    # the features are the trained encoder's: the same clip through the loaded model gives the same rows
    from llavidal.pose.data import load_clip_array
    from llavidal.pose.modeling import load_pose_model

    enc = load_pose_model(trained[0]).encoder
    x = resample_frames(load_clip_array(few / "S001C001P001R001A001.skeleton.npy"), 300)
    with torch.no_grad():
        ref = enc(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(load_feature(out / names[0]), ref, atol=1e-5)

    before = (out / names[0]).stat().st_mtime_ns
    cli_main(argv)
    summary = json.loads((out / "extract_summary.json").read_text())
    assert (summary["written"], summary["already_done"]) == (0, 3)
    assert (out / names[0]).stat().st_mtime_ns == before

    # the published shape by default ([256, 216]), as .npy from a single file and a checkpoint folder
    one = tmp_path / "published"
    assert cli_main(["extract-pose", "--skeletons", str(few / "S001C001P001R001A002.skeleton.npy"), "--model",
                     str(trained[0] / "checkpoint-0004"), "--output", str(one), "--format", "npy",
                     "--workers", "0", "--no-progress"]) == 0
    arr = load_feature(one / "S001C001P001R001A002_pose.npy")
    assert arr.shape == (256, 216)
    validate_feature(arr, "pose", base_cfg)

    # a stitched video: two clips joined in order; a clip that is not found fails its video, never dropped
    stitch = tmp_path / "map.json"
    stitch.write_text(json.dumps({"001_video_001": ["S001C001P001R001A001_rgb.avi", "S001C001P001R001A002_rgb.avi"],
                                  "001_video_002": ["S001C001P001R001A001_rgb.avi", "S009C001P001R001A001_rgb.avi"]}))
    st = tmp_path / "stitched"
    assert cli_main(["extract-pose", "--skeletons", str(few), "--model", str(trained[0]), "--output", str(st),
                     "--stitch-map", str(stitch), "--tokens", "32", "--workers", "0", "--no-progress"]) == 1
    assert load_feature(st / "001_video_001_pose.pkl").shape == (32, 216)
    assert not (st / "001_video_002_pose.pkl").exists()
    assert "S009C001P001R001A001_rgb.avi" in read_jsonl(st / "failures.jsonl")[0]["error"]


def test_extract_pose_refuses_without_a_trained_model(few, tmp_path, capsys):
    out = tmp_path / "nothing"
    with pytest.raises(SystemExit, match="needs a trained pose encoder"):
        cli_main(["extract-pose", "--skeletons", str(few), "--output", str(out)])
    assert not out.exists()
    empty = tmp_path / "empty_model"
    PoseEncoderConfig().save(empty)  # a config but no weights
    assert cli_main(["extract-pose", "--skeletons", str(few), "--model", str(empty), "--output", str(out)]) == 2
    assert "model.safetensors" in capsys.readouterr().err and not list(out.glob("*_pose.pkl"))

    assert cli_main(["extract-pose", "--skeletons", str(few / "S001C001P001R001A001.skeleton.npy"), "--random-init",
                     "--output", str(out), "--tokens", "8", "--workers", "0", "--no-progress"]) == 0
    assert "UNTRAINED" in capsys.readouterr().err
    assert json.loads((out / "extract_summary.json").read_text())["random_init"] is True
    assert load_feature(out / "S001C001P001R001A001_pose.pkl").shape == (8, 216)


def test_skeleton_clip_logits_use_learned_scale():
    torch.manual_seed(0)
    model = SkeletonCLIP(PoseEncoderConfig(**TINY, projection_dim=16)).eval()
    x = torch.from_numpy(_body(24))[None, ..., None]
    text = torch.randn(5, 16)
    with torch.no_grad():
        logits = model(x, text)
        cos = model.embed(x) @ torch.nn.functional.normalize(text, dim=-1).T
    torch.testing.assert_close(logits, cos * (1 / 0.07))
    assert logits.abs().max() <= 1 / 0.07 + 1e-4

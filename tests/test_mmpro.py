"""MMPro: stage inits merged by name (projectors AND start/end rows), completed stages skipped, the merge CLI and
scripts/merge_weights.py, merges of original-layout .bin files (docs/design.md#artifacts, docs/design.md#recipe)."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from helpers_train import PYTHON, REPO, adapter, subprocess_env, synthetic_data
from llavidal.constants import MODALITIES

PROJ = {m: f"model.{MODALITIES[m].projector}" for m in MODALITIES}
ROW = "added_tokens.embed_tokens."
LR = 1e-2
EXTRA = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none",
         "--use_cpu", "True", "--learning_rate", str(LR),
         "--warmup_ratio", "0",  # the recipe's 3% warmup makes the only step of a 1-step run a step with lr 0
         "--disable_tqdm", "True"]


def parts(m: str) -> list[str]:
    """Adapter keys of one modality: its projector and its start/end rows."""
    mod = MODALITIES[m]
    return [f"{PROJ[m]}.weight", f"{PROJ[m]}.bias", ROW + mod.start_token, ROW + mod.end_token]


def run(cfg) -> tuple[dict, str]:
    from llavidal.train.mmpro import run_mmpro

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        outputs = run_mmpro(cfg)
    return outputs, buf.getvalue()


@pytest.fixture(scope="module")
def mmpro(tiny_base, tmp_path_factory):
    from llavidal.train.mmpro import MMProConfig

    data = synthetic_data(tmp_path_factory.mktemp("synth_mmpro"))
    root = tmp_path_factory.mktemp("mmpro") / "run"
    cfg = MMProConfig(base=str(tiny_base), data_path=data["train"],
                      folders={m: data[f"{m}_folder"] for m in ("video", "object", "pose")},
                      output_dir=str(root), extra_args=EXTRA)
    outputs, log = run(cfg)
    return cfg, root, outputs, log


def test_all_stages_ran_with_their_modalities(mmpro):
    cfg, root, outputs, log = mmpro
    assert list(outputs) == ["stage1-video", "stage1-object", "stage1-pose", "stage2-video-pose",
                             "stage3-video-object-pose"]
    want = {"stage1-video": ["video"], "stage1-object": ["object"], "stage1-pose": ["pose"],
            "stage2-video-pose": ["video", "pose"], "stage3-video-object-pose": ["video", "object", "pose"]}
    for name, mods in want.items():
        s = json.loads((root / name / "train_summary.json").read_text())
        assert s["modalities"] == mods and s["global_step"] == 1 and s["mode"] == "projector"
        with safe_open(str(root / name / "adapter.safetensors"), "pt") as fh:
            assert fh.metadata()["modalities"] == ",".join(mods)
    assert json.loads((root / "mmpro.json").read_text())["final"] == str(root / "stage3-video-object-pose")
    assert "skipped" not in log


def test_stage2_init_carries_stage1_video_and_pose_by_name(mmpro, tiny_base):
    from llavidal import load_pretrained

    _, root, _, _ = mmpro
    s1v, s1p = adapter(root / "stage1-video"), adapter(root / "stage1-pose")
    init = adapter(root / "stage2-video-pose-init.safetensors")
    assert set(init) == set(parts("video") + parts("pose"))
    for k in parts("video"):
        assert torch.equal(init[k], s1v[k]), k
    for k in parts("pose"):
        assert torch.equal(init[k], s1p[k]), k
    # the stage-1 pose file also holds (untrained) video rows: a plain dict union, later file wins, would have put
    # those over the trained ones. Stage 1 did train them, so they differ:
    base, _ = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    for k in (ROW + "<vid_start>", ROW + "<vid_end>"):
        assert (s1v[k] - s1p[k]).abs().max() > LR / 2
        assert torch.equal(s1p[k], base.get_input_embeddings().weight[base.config.token_id(k[len(ROW):])])
    # stage 2 trained from that init: one Adam step moves no element by more than the learning rate
    s2 = adapter(root / "stage2-video-pose")
    for k in parts("video") + parts("pose"):
        assert 0 < float((s2[k] - init[k]).abs().max()) <= LR * 1.001, k


def test_stage3_init_carries_stage2_video_pose_and_stage1_object(mmpro):
    _, root, _, _ = mmpro
    s2, s1o = adapter(root / "stage2-video-pose"), adapter(root / "stage1-object")
    init = adapter(root / "stage3-video-object-pose-init.safetensors")
    assert set(init) == set(parts("video") + parts("object") + parts("pose"))
    for k in parts("video") + parts("pose"):
        assert torch.equal(init[k], s2[k]), k
    for k in parts("object"):
        assert torch.equal(init[k], s1o[k]), k
    with safe_open(str(root / "stage3-video-object-pose-init.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["modalities"] == "video,object,pose"
    s3 = adapter(root / "stage3-video-object-pose")
    for k in init:
        assert 0 < float((s3[k] - init[k]).abs().max()) <= LR * 1.001, k


def test_completed_stages_are_skipped_and_a_missing_one_is_redone(mmpro):
    import shutil

    cfg, root, outputs, _ = mmpro
    files = sorted(root.rglob("*.safetensors"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again, log = run(cfg)
    assert again == outputs
    assert log.count("already complete, skipped") == 5
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    final = root / "stage3-video-object-pose"
    before = adapter(final)
    shutil.rmtree(final)
    _, log = run(cfg)
    assert log.count("already complete, skipped") == 4
    assert "MMPro stage3-video-object-pose: training video, object, pose" in log
    for p in files:
        if final not in p.parents and p.name != "stage3-video-object-pose-init.safetensors":
            assert p.stat().st_mtime_ns == mtimes[p], p
    after = adapter(final)
    assert all(torch.equal(before[k], after[k]) for k in before)  # same init, same seed: the same result


def test_stage_argv_uses_recipe_then_user_flags(mmpro):
    from llavidal.train.arguments import parse_args
    from llavidal.train.mmpro import STAGES, stage_argv

    cfg, root, _, _ = mmpro
    argv = stage_argv(cfg, STAGES[3], root / "stage2-video-pose-init.safetensors")
    m, d, t = parse_args(argv)
    assert m.pretrain_mm_mlp_adapter == str(root / "stage2-video-pose-init.safetensors")
    assert m.tune_mm_mlp_adapter and m.mm_use_vid_start_end
    assert d.video_folder and d.pose_folder and d.object_folder is None
    assert t.max_steps == 1 and t.learning_rate == LR and t.output_dir == str(root / "stage2-video-pose")


# ==================================================================== merging
def test_merge_cli_equals_the_stage_init(mmpro, tmp_path, capsys):
    from llavidal.cli import main

    _, root, _, _ = mmpro
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--weights", str(root / "stage1-video"), str(root / "stage1-pose" / "adapter.safetensors"),
                 "--output", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modalities"] == ["video", "pose"]
    assert report["token_rows"] == ["<pose_end>", "<pose_start>", "<vid_end>", "<vid_start>"]
    got, want = adapter(out), adapter(root / "stage2-video-pose-init.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert main(["merge", "--weights", str(root / "stage1-video"), "--output", str(out)]) == 2
    assert "at least two" in capsys.readouterr().err


def _legacy_bin(path: Path, n_rows: int, modalities, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    dims = {"video": 1024, "object": 512, "pose": 216}
    sd = {}
    for m in modalities:
        sd[f"{PROJ[m]}.weight"] = torch.randn(64, dims[m], generator=g)
        sd[f"{PROJ[m]}.bias"] = torch.randn(64, generator=g)
    sd["model.embed_tokens.weight"] = torch.randn(n_rows, 64, generator=g)
    torch.save(sd, path)
    return sd


def test_merge_script_with_original_layout_bin(mmpro, tiny_base, tmp_path):
    """An original-layout .bin of the tiny base (current layout: 1003 + 9 = 1012 rows; video projector) merged with
    our stage-1 pose adapter through scripts/merge_weights.py; rows are taken by token name."""
    from llavidal import load_pretrained
    from llavidal.cli import main

    _, root, _, _ = mmpro
    legacy = _legacy_bin(tmp_path / "mm_projector.bin", 1003 + 9, ["video"], seed=3)
    out = tmp_path / "merged.safetensors"
    proc = subprocess.run([PYTHON, "scripts/merge_weights.py", "--weights", str(tmp_path / "mm_projector.bin"),
                           str(root / "stage1-pose"), "--output", str(out), "--base", str(tiny_base)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["modalities"] == ["video", "pose"]
    got, pose = adapter(out), adapter(root / "stage1-pose")
    emb = legacy["model.embed_tokens.weight"]
    assert torch.equal(got[f"{PROJ['video']}.weight"], legacy[f"{PROJ['video']}.weight"])
    assert torch.equal(got[f"{PROJ['video']}.bias"], legacy[f"{PROJ['video']}.bias"])
    # current layout: 1003 <vid_patch>, 1004 <object_patch>, 1005 <pose_patch>, 1006 <vid_start>, 1007 <vid_end>
    assert torch.equal(got[ROW + "<vid_start>"], emb[1006]) and torch.equal(got[ROW + "<vid_end>"], emb[1007])
    for k in parts("pose"):
        assert torch.equal(got[k], pose[k]), k
    assert set(got) == set(parts("video") + parts("pose"))
    # the merged file loads, rows at the right ids
    model, tok = load_pretrained(tiny_base, projector=out, device="cpu", dtype=torch.float32)
    w = model.get_input_embeddings().weight
    assert torch.equal(w[tok.convert_tokens_to_ids("<vid_end>")], emb[1007])
    assert torch.equal(w[tok.convert_tokens_to_ids("<pose_start>")], pose[ROW + "<pose_start>"])

    # the 2024 layout (video + object, 1003 + 6 rows): other positions, same names
    old = _legacy_bin(tmp_path / "llavidal_weights.bin", 1003 + 6, ["video", "object"], seed=4)
    out2 = tmp_path / "merged2.safetensors"
    assert main(["merge", "--weights", str(tmp_path / "llavidal_weights.bin"), str(root / "stage1-pose"),
                 "--output", str(out2), "--base", str(tiny_base)]) == 0
    got2 = adapter(out2)
    e = old["model.embed_tokens.weight"]
    # 2024: 1003 <vid_patch>, 1004 <object_patch>, 1005 <vid_start>, 1006 <vid_end>, 1007 <object_start>, ...
    assert torch.equal(got2[ROW + "<vid_start>"], e[1005]) and torch.equal(got2[ROW + "<vid_end>"], e[1006])
    assert torch.equal(got2[ROW + "<object_start>"], e[1007]) and torch.equal(got2[ROW + "<object_end>"], e[1008])
    assert torch.equal(got2[f"{PROJ['object']}.weight"], old[f"{PROJ['object']}.weight"])
    assert set(got2) == set(parts("video") + parts("object") + parts("pose"))


def test_merge_of_original_bin_without_base_is_a_clear_error(mmpro, tiny_base, tmp_path, capsys):
    from llavidal.cli import main

    _, root, _, _ = mmpro
    _legacy_bin(tmp_path / "mm_projector.bin", 1012, ["video"], seed=5)
    assert main(["merge", "--weights", str(tmp_path / "mm_projector.bin"), str(root / "stage1-pose"),
                 "--output", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "1012 embedding rows" in err and "--base" in err
    assert not (tmp_path / "m.safetensors").exists()
    _legacy_bin(tmp_path / "odd.bin", 1010, ["video"], seed=5)
    assert main(["merge", "--weights", str(tmp_path / "odd.bin"), str(root / "stage1-pose"),
                 "--output", str(tmp_path / "m.safetensors"), "--base", str(tiny_base)]) == 2
    assert "1010 embedding rows match no token layout for a base vocabulary of 1003" in capsys.readouterr().err

"""Training: what each mode trains, loadable outputs, resume, a real 2-process torchrun, the published entry points,
training from a feature store (docs/design.md#model, docs/design.md#recipe, docs/design.md#differences)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from helpers_train import (
    PYTHON, REPO, adapter, free_port, max_abs_diff, subprocess_env, synthetic_data, train_flags,
)
from llavidal.constants import MODALITIES

START_END = {m: (MODALITIES[m].start_token, MODALITIES[m].end_token) for m in MODALITIES}
PROJ = {m: f"model.{MODALITIES[m].projector}" for m in MODALITIES}
ROW = "added_tokens.embed_tokens."
HEAD_ROW = "added_tokens.lm_head."


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("synth_train"))


def run_train(argv):
    from llavidal.train.train import train

    return train(argv)


def losses(out) -> dict[int, float]:
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


# ==================================================================== 7. what each mode trains
@pytest.mark.parametrize("mode", ["projector", "lora", "full"])
def test_trainable_parameters_per_mode(tiny_base, synth, tmp_path, mode):
    from llavidal.model.modeling_llavidal import EmbeddingWithTrainableRows
    from llavidal.train.arguments import parse_args
    from llavidal.train.train import build_model, unwrap

    extra = ["--training_mode", mode] + (["--tune_mm_mlp_adapter", "False"] if mode != "projector" else [])
    model, tok, active = build_model(*parse_args(
        train_flags(tiny_base, synth, tmp_path, ("video", "pose"), *extra)))
    assert active == ["video", "pose"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    inner = unwrap(model)
    emb = inner.get_input_embeddings()
    if mode == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
        return
    # the projectors of the ACTIVE modalities and the start/end rows of the active modalities, nothing else
    prefix = "base_model.model." if mode == "lora" else ""
    expected = {f"{prefix}{PROJ[m]}.{w}" for m in ("video", "pose") for w in ("weight", "bias")}
    expected.add(f"{prefix}model.embed_tokens.rows")
    lora = {n for n in trainable if ".lora_" in n}
    assert trainable - lora == expected
    assert bool(lora) == (mode == "lora")
    if mode == "lora":
        assert all("self_attn" in n or "mlp" in n for n in lora)
    assert isinstance(emb, EmbeddingWithTrainableRows)
    want_ids = [tok.convert_tokens_to_ids(t) for m in ("video", "pose") for t in START_END[m]]
    assert emb.ids.tolist() == want_ids
    assert not emb.base.weight.requires_grad and not inner.lm_head.weight.requires_grad
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    # without start/end tokens there are no rows to train
    model2, _, _ = build_model(*parse_args(train_flags(tiny_base, synth, tmp_path, ("video",), *extra,
                                                       mm_use_vid_start_end=False)))
    trainable2 = {n for n, p in model2.named_parameters() if p.requires_grad and ".lora_" not in n}
    assert trainable2 == {f"{prefix}{PROJ['video']}.{w}" for w in ("weight", "bias")}


def test_initial_projectors_follow_the_spec(tiny_base, synth, tmp_path):
    from llavidal.model.files import read_folder_state_dict
    from llavidal.train.arguments import parse_args
    from llavidal.train.train import build_model

    model, tok, _ = build_model(*parse_args(train_flags(tiny_base, synth, tmp_path)))
    base = read_folder_state_dict(tiny_base)
    inner = model.model
    assert torch.equal(inner.mm_projector.weight, base["model.mm_projector.weight"])  # video from the base folder
    assert torch.equal(inner.mm_projector.bias, base["model.mm_projector.bias"])
    for m in ("object", "pose"):  # normal(0, 0.02) weights, zero bias
        proj = inner.projector(m)
        assert not proj.bias.any()
        w = proj.weight.detach()
        assert 0.017 < float(w.std()) < 0.023 and abs(float(w.mean())) < 2e-3
    # start/end rows at the mean of the existing rows (input and output embeddings)
    n = base["model.embed_tokens.weight"].shape[0]
    vid_start = tok.convert_tokens_to_ids("<vid_start>")
    torch.testing.assert_close(model.get_input_embeddings().weight[vid_start],
                               base["model.embed_tokens.weight"].mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.lm_head.weight[vid_start], base["lm_head.weight"][:n].mean(0), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def init_adapter(tiny_base, tmp_path_factory):
    """A starting adapter with distinct random projectors and added-token rows (so changes are unambiguous)."""
    from llavidal import load_pretrained, save_adapter

    model, tok = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in MODALITIES:
            p = model.model.projector(m)
            p.weight.copy_(torch.randn(p.weight.shape, generator=g) * 0.02)
            p.bias.copy_(torch.randn(p.bias.shape, generator=g) * 0.02)
        for t in tok.convert_tokens_to_ids(list(model.config.modality_token_ids)):
            model.get_input_embeddings().weight[t] = torch.randn(model.config.hidden_size, generator=g)
    path = tmp_path_factory.mktemp("init") / "init.safetensors"
    save_adapter(model, tok, path)
    return path


def test_projector_only_training_changes_exactly_the_spec_parameters(tiny_base, synth, init_adapter, tmp_path):
    from llavidal import load_pretrained, load_projector
    from llavidal.model.files import read_folder_state_dict

    out = tmp_path / "proj"
    summary = run_train(train_flags(tiny_base, synth, out, ("video", "pose"),
                                    "--pretrain_mm_mlp_adapter", str(init_adapter), "--save_full_model", "True",
                                    "--max_steps", "3"))
    assert summary["mode"] == "projector" and summary["modalities"] == ["video", "pose"]
    assert summary["global_step"] == 3

    ref, tok = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    load_projector(ref, tok, init_adapter)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    after = read_folder_state_dict(out / "full_model")
    assert set(after) == set(before)
    changed_rows = [tok.convert_tokens_to_ids(t) for m in ("video", "pose") for t in START_END[m]]
    for k, v in before.items():
        if k == "model.embed_tokens.weight":
            diff = (after[k] - v).abs().amax(dim=1)
            assert (diff[changed_rows] > 1e-4).all(), diff[changed_rows]
            others = torch.ones(len(diff), dtype=torch.bool)
            others[changed_rows] = False
            assert not diff[others].any(), "an embedding row other than the active start/end rows changed"
        elif k.startswith((PROJ["video"] + ".", PROJ["pose"] + ".")):
            assert (after[k] - v).abs().max() > 1e-4, f"{k} did not train"
        else:  # LLM, lm_head, the inactive object projector: bit for bit unchanged
            assert torch.equal(after[k], v), f"{k} changed"

    # the output folder is adapter-only, points at the base and loads
    assert not any((out / n).exists() for n in ("model.safetensors", "pytorch_model.bin"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["llavidal_base_model"] == str(Path(tiny_base).resolve())
    assert cfg["llavidal_trained_modalities"] == ["video", "pose"]
    with safe_open(str(out / "adapter.safetensors"), "pt") as fh:
        assert fh.metadata()["modalities"] == "video,pose"
    ad, init = adapter(out), adapter(init_adapter)
    for k in init:
        trained = k.startswith((PROJ["video"] + ".", PROJ["pose"] + ".")) or k in {
            ROW + t for m in ("video", "pose") for t in START_END[m]}
        assert torch.equal(ad[k], init[k]) != trained, k
    loaded, _ = load_pretrained(out, device="cpu", dtype=torch.float32)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=0)
    legacy = torch.load(out / "mm_projector.bin", weights_only=True)
    assert torch.equal(legacy["model.mm_projector_forpose.weight"], after["model.mm_projector_forpose.weight"])
    assert torch.equal(legacy["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert "model.mm_projector_forobject.weight" not in legacy  # as the original: trained projectors only


# ==================================================================== 8. LoRA and full modes
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_lora_and_full_modes_write_loadable_folders(tiny_base, synth, tmp_path, mode):
    from llavidal import load_pretrained
    from llavidal.data import ADLXDataset, DataCollator, read_records
    from llavidal.model.files import read_folder_state_dict

    out = tmp_path / mode
    summary = run_train(train_flags(tiny_base, synth, out, ("video", "object"), "--training_mode", mode,
                                    "--tune_mm_mlp_adapter", "False", "--save_strategy", "steps",
                                    "--save_steps", "1", "--lora_r", "4"))
    assert summary["mode"] == mode and summary["global_step"] == 2
    assert (out / "model.safetensors").is_file() and (out / "adapter.safetensors").is_file()
    assert (out / "checkpoint-1" / "adapter.safetensors").is_file()
    if mode == "lora":
        assert (out / "checkpoint-1" / "adapter_model.safetensors").is_file()
    model, tok = load_pretrained(out, device="cpu", dtype=torch.float32)
    assert model.config.model_type == "llavidal"
    base = read_folder_state_dict(tiny_base)
    sd = model.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (sd[q] - base[q]).abs().max() > 1e-5  # the LLM itself was trained (LoRA merged in)
    n = base["lm_head.weight"].shape[0]
    if mode == "lora":
        assert torch.equal(sd["lm_head.weight"][:n], base["lm_head.weight"])  # LoRA leaves lm_head alone
    else:
        assert not torch.equal(sd["lm_head.weight"][:n], base["lm_head.weight"])
    ad = adapter(out)
    for k in (f"{PROJ['video']}.weight", f"{PROJ['object']}.bias"):
        assert torch.equal(sd[k], ad[k])
    assert torch.equal(sd["model.embed_tokens.weight"][tok.convert_tokens_to_ids("<vid_start>")],
                       ad[ROW + "<vid_start>"])
    ds = ADLXDataset(read_records(synth["train"]), tok, model.config,
                     {m: synth[f"{m}_folder"] for m in ("video", "object")})
    batch = DataCollator(tok.pad_token_id)([ds[0], ds[1]])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


# ==================================================================== 9. resume
def test_resume_after_interruption_matches_uninterrupted_run(tiny_base, synth, tmp_path):
    """16 samples, batch 4: 4 steps per epoch, 8 steps = 2 epochs. Masking (per-epoch draws), data order, RNG, AdamW
    state and the warmup+cosine schedule all have to resume for the weights to agree."""
    flags = dict(per_device_train_batch_size=4, max_steps=8, save_strategy="steps", save_steps=2,
                 lr_scheduler_type="cosine", warmup_steps=2, video_mask_prob=0.5, pose_mask_prob=0.5)
    full = tmp_path / "uninterrupted"
    s_full = run_train(train_flags(tiny_base, synth, full, **flags))
    assert s_full["global_step"] == 8 and s_full["resumed_from"] is None
    final = adapter(full)

    # kill 1, in the first epoch: checkpoint-2 made it to disk, checkpoint-4 was cut short while being written
    part = tmp_path / "killed_in_epoch_0"
    shutil.copytree(full / "checkpoint-2", part / "checkpoint-2")
    shutil.copytree(full / "checkpoint-4", part / "checkpoint-4")
    for name in ("trainer_state.json", "rng_state.pth", "scheduler.pt"):
        (part / "checkpoint-4" / name).unlink()
    # kill 2, in the second epoch (mask draws of epoch 1, data order of epoch 1, a partly consumed epoch)
    part2 = tmp_path / "killed_in_epoch_1"
    shutil.copytree(full / "checkpoint-6", part2 / "checkpoint-6")

    for out, ckpt in ((part, "checkpoint-2"), (part2, "checkpoint-6")):
        s = run_train(train_flags(tiny_base, synth, out, **flags))  # the same command again: auto-resume
        assert s["resumed_from"] == str(out / ckpt) and s["global_step"] == 8
        # the resumed steps changed the weights a lot (~1e-2) and in the same way as the uninterrupted run. Not
        # always bit-exact: two uninterrupted runs of this command already differ by ~1e-8 after the epoch boundary
        # (float summation order in CPU kernels), while any wrong piece of resume state (data order, a mask draw,
        # Adam moments, the lr) moves weights by ~1e-3.
        assert max_abs_diff(final, adapter(out / ckpt)) > 1e-3
        assert max_abs_diff(final, adapter(out)) <= 1e-6
        la, lb = losses(full), losses(out)
        assert sorted(lb) == list(range(1, 9))  # the history before the kill comes back with the checkpoint
        for step in lb:
            assert lb[step] == pytest.approx(la[step], rel=1e-5), step
    # the rewritten checkpoint-4 of the first resumed run equals the uninterrupted one's
    assert max_abs_diff(adapter(full / "checkpoint-4"), adapter(part / "checkpoint-4")) <= 1e-6


def test_rerun_of_a_finished_run_changes_nothing(tiny_base, synth, tmp_path, capsys):
    """Running the same command again after it finished leaves every output as it was (the summary was once
    rewritten with loss 0.0); a run killed after its last checkpoint but before its final outputs finishes from that
    checkpoint without training a step past the end (the Trainer alone would run one more step)."""
    flags = dict(per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2)
    out = tmp_path / "run"
    first = run_train(train_flags(tiny_base, synth, out, **flags))
    assert first["global_step"] == 4 and first["train_loss"] > 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = run_train(train_flags(tiny_base, synth, out, **flags))
    assert again == first and "training already finished" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    for name in ("train_summary.json", "adapter.safetensors", "mm_projector.bin"):  # killed before the end
        (out / name).unlink()
    resumed = run_train(train_flags(tiny_base, synth, out, **flags))
    assert resumed["global_step"] == 4 and resumed["resumed_from"] == str(out / "checkpoint-4")
    assert resumed["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)
    assert max_abs_diff(adapter(out), adapter(out / "checkpoint-4")) == 0.0
    assert not (out / "checkpoint-5").exists()


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_in_lora_and_full_modes(tiny_base, synth, tmp_path, mode):
    """LoRA resumes through its own checkpoint loader (peft adapter + projector/rows), full mode through the
    Trainer's; both must give the uninterrupted run's weights (LLM and adapter)."""
    from safetensors.torch import load_file

    from llavidal.model.files import read_folder_state_dict

    flags = dict(per_device_train_batch_size=4, max_steps=6, save_strategy="steps", save_steps=2, lora_r=4,
                 training_mode=mode, tune_mm_mlp_adapter=False, video_mask_prob=0.5)
    full, part = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_train(train_flags(tiny_base, synth, full, ("video", "pose"), **flags))
    shutil.copytree(full / "checkpoint-2", part / "checkpoint-2")
    s = run_train(train_flags(tiny_base, synth, part, ("video", "pose"), **flags))
    assert s["resumed_from"] == str(part / "checkpoint-2")
    assert max_abs_diff(adapter(full), adapter(part)) <= 1e-6
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert max_abs_diff(a, b) <= 1e-6
    q = "model.layers.1.self_attn.v_proj.weight"
    assert (a[q] - read_folder_state_dict(tiny_base)[q]).abs().max() > 1e-5  # the LLM did train


# ==================================================================== 10. torchrun with 2 processes
def test_torchrun_two_processes_match_single_process(tiny_base, synth, tmp_path):
    """2 ranks x batch 2 against 1 process x batch 4 (same global batch, same data order). SGD, so that weights
    follow gradients linearly: the two agree to ~1e-8, while averaging the loss per rank instead of over the
    global tokens (--average_tokens_across_devices False) already differs by ~3e-4."""
    data = dict(synth)
    pose = tmp_path / "pose_features"
    shutil.copytree(synth["pose_folder"], pose)
    recs = json.loads(Path(synth["train"]).read_text())
    for r in recs[:12]:  # 12 of 16 pose files missing: each rank meets some, logged per rank
        (pose / r["pose"]).unlink()
    data["pose_folder"] = str(pose)
    common = dict(max_steps=3, optim="sgd", learning_rate=1.0, missing_features="zeros", save_strategy="steps",
                  save_steps=2, lr_scheduler_type="constant")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "llavidal.train.train_mem",
           *train_flags(tiny_base, data, ddp, per_device_train_batch_size=2, **common)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    s_single = run_train(train_flags(tiny_base, data, single, per_device_train_batch_size=4, **common))

    s_ddp = json.loads((ddp / "train_summary.json").read_text())
    assert s_ddp["global_step"] == s_single["global_step"] == 3
    # both ranks trained: each read data (its own issue log) and saved its RNG state in the checkpoint
    for rank in (0, 1):
        events = (ddp / f"data_issues.rank{rank}.jsonl").read_text().splitlines()
        assert events and all(json.loads(e)["kind"] == "missing_zeros" for e in events)
        assert (ddp / "checkpoint-2" / f"rng_state_{rank}.pth").is_file()
    ranks = [{json.loads(e)["index"] for e in (ddp / f"data_issues.rank{r}.jsonl").read_text().splitlines()}
             for r in (0, 1)]
    assert not ranks[0] & ranks[1]  # the ranks saw different samples
    # together they saw what the single process saw
    single_seen = {json.loads(e)["index"] for e in (single / "data_issues.rank0.jsonl").read_text().splitlines()}
    assert ranks[0] | ranks[1] == single_seen
    assert s_ddp["data_issues"]["missing_zeros"]["samples"] == len(single_seen) == 12  # 3 steps x 4 samples
    assert s_single["data_issues"]["missing_zeros"]["samples"] == 12
    # only rank 0 wrote outputs: the same files as the single-process run, plus rank 1's own issue log and RNG
    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    expected = sorted(files(single) + ["data_issues.rank1.jsonl"])
    got = [f.replace("rng_state_0.pth", "rng_state.pth") for f in files(ddp) if not f.endswith("rng_state_1.pth")]
    assert sorted(got) == expected
    assert log.count("data issues (unique samples):") == 1  # the end-of-run report comes from rank 0 only
    # the same weights as one process with the same global batch
    assert max_abs_diff(adapter(ddp), adapter(single)) <= 1e-6
    assert max_abs_diff(adapter(ddp), adapter(ddp / "checkpoint-2")) > 1e-3
    la, lb = losses(ddp), losses(single)
    assert la.keys() == lb.keys() == {1, 2, 3}
    for k in la:
        assert la[k] == pytest.approx(lb[k], rel=1e-5)


# ==================================================================== 12. the published entry points
PUBLISHED = ["--version", "v1", "--tune_mm_mlp_adapter", "True", "--bf16", "False", "--num_train_epochs", "3",
             "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
             "--evaluation_strategy", "no", "--save_strategy", "steps", "--save_steps", "3000",
             "--save_total_limit", "3", "--learning_rate", "2e-5", "--weight_decay", "0.", "--warmup_ratio", "0.03",
             "--lr_scheduler_type", "cosine", "--logging_steps", "100", "--tf32", "True", "--model_max_length", "2048",
             "--gradient_checkpointing", "True", "--lazy_preprocess", "True", "--mm_use_vid_start_end"]


def test_train_mem_script_accepts_the_published_flags(tiny_base, synth, tmp_path):
    out = tmp_path / "published"
    cmd = [PYTHON, "llavidal/train/train_mem.py", "--model_name_or_path", str(tiny_base),
           "--data_path", synth["train"], "--video_folder", synth["video_folder"],
           "--object_folder", synth["object_folder"], "--pose_folder", synth["pose_folder"],
           "--output_dir", str(out), *PUBLISHED, "--max_steps", "1", "--report_to", "none"]
    env = subprocess_env()
    env.pop("PYTHONPATH")  # the script must find the package from the checkout by itself
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    s = json.loads((out / "train_summary.json").read_text())
    assert s["mode"] == "projector" and s["global_step"] == 1 and s["modalities"] == ["video", "object", "pose"]
    assert (out / "adapter.safetensors").is_file() and (out / "mm_projector.bin").is_file()
    assert "tf32 True ignored" in proc.stdout + proc.stderr  # no CUDA here: said, not silently dropped
    # --save_steps 3000: the only checkpoint is the one the Trainer writes at the end, complete and resumable
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()


def test_train_mem_parses_published_flags_into_the_right_fields(tiny_base, synth, tmp_path):
    from llavidal.train.arguments import parse_args

    m, d, t = parse_args(["--model_name_or_path", str(tiny_base), "--data_path", synth["train"],
                          "--video_folder", synth["video_folder"], "--output_dir", str(tmp_path), *PUBLISHED])
    assert m.mode() == "projector" and m.template() == "vicuna_v1_1" and m.mm_use_vid_start_end
    assert t.eval_strategy == "no" and t.save_steps == 3000 and t.save_total_limit == 3
    assert t.learning_rate == 2e-5 and t.weight_decay == 0.0 and t.warmup_steps == 0.03
    assert t.lr_scheduler_type == "cosine" and t.model_max_length == 2048 and t.gradient_checkpointing
    assert t.num_train_epochs == 3 and t.per_device_train_batch_size == 4
    assert d.folders() == {"video": synth["video_folder"], "object": None, "pose": None}


def test_cli_train(tiny_base, synth, tmp_path, capsys):
    from llavidal.cli import main

    out = tmp_path / "cli"
    assert main(["train", *train_flags(tiny_base, synth, out, ("pose",), max_steps=1)]) == 0
    assert json.loads((out / "train_summary.json").read_text())["modalities"] == ["pose"]
    assert "data: every sample was used as is" in capsys.readouterr().out
    # a data error is reported as one line and exit status 2, not a traceback
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "video": "missing.pkl", "conversations": [
        {"from": "human", "value": "<video>"}, {"from": "gpt", "value": "a"}]}]))
    flags = train_flags(tiny_base, synth, tmp_path / "cli_bad", ("video",), max_steps=1)
    flags[flags.index("--data_path") + 1] = str(bad)
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: record 0 x (video: missing.pkl)")
    assert "missing.pkl: video feature file not found" in err


# ==================================================================== 13. feature store in training
def test_training_from_a_feature_store_equals_training_from_folders(tiny_base, synth, tmp_path):
    from llavidal.data import pack_folder

    stores = dict(synth)
    for m in ("video", "object", "pose"):
        pack_folder(synth[f"{m}_folder"], tmp_path / f"{m}_store", modality=m)
        stores[f"{m}_folder"] = str(tmp_path / f"{m}_store")
    s1 = run_train(train_flags(tiny_base, synth, tmp_path / "folders", max_steps=3))
    s2 = run_train(train_flags(tiny_base, stores, tmp_path / "store", max_steps=3))
    assert s1["train_loss"] == s2["train_loss"]
    assert losses(tmp_path / "folders") == losses(tmp_path / "store")
    assert max_abs_diff(adapter(tmp_path / "folders"), adapter(tmp_path / "store")) == 0.0

"""FSDP (full_shard, the shipped configs/fsdp.json) over gloo with 2 torchrun CPU processes: the loss and weights of
one process with the same global batch, sharded checkpoints that resume bit for bit, and final outputs (adapter
folder, mm_projector.bin, merges) gathered whole and loadable. The save code never reads parameter shards."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers_train import PYTHON, REPO, adapter, free_port, max_abs_diff, subprocess_env, synthetic_data, train_flags

LAUNCHER = REPO / "tests" / "fsdp_cpu_train.py"
COMMON = dict(max_steps=3, optim="sgd", learning_rate=1.0, save_strategy="steps", save_steps=2,
              lr_scheduler_type="constant")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("synth_fsdp"))


def torchrun_fsdp(base, data, out, cwd):
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", str(LAUNCHER),
           *train_flags(base, data, out, per_device_train_batch_size=2, **COMMON),
           "--fsdp", "full_shard auto_wrap", "--fsdp_config", str(REPO / "configs" / "fsdp.json")]
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def losses(out) -> dict[int, float]:
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_fsdp_two_cpu_processes_save_resume_merge(tiny_base, synth, tmp_path):
    from llavidal.model import load_pretrained
    from llavidal.train.train import train

    fsdp, single, resumed = tmp_path / "fsdp", tmp_path / "single", tmp_path / "resumed"
    log = torchrun_fsdp(tiny_base, synth, fsdp, tmp_path)
    assert "did not enable FSDP" not in log
    # a sharded checkpoint (each rank its shard), not a whole-model file
    assert (fsdp / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    assert not (fsdp / "checkpoint-2" / "optimizer.pt").exists()
    train(train_flags(tiny_base, synth, single, per_device_train_batch_size=4, **COMMON))
    # the same global batch in one process: same losses, same weights (SGD: weights follow gradients linearly)
    la, lb = losses(fsdp), losses(single)
    assert la.keys() == lb.keys() == {1, 2, 3}
    for k in la:
        assert la[k] == pytest.approx(lb[k], rel=1e-5)
    assert max_abs_diff(adapter(fsdp), adapter(single)) <= 1e-6
    assert abs(la[3] - la[1]) > 1e-3  # it did train

    # killed after checkpoint-2: the same command resumes from the shards and ends where the uninterrupted run did
    shutil.copytree(fsdp / "checkpoint-2", resumed / "checkpoint-2")
    torchrun_fsdp(tiny_base, synth, resumed, tmp_path)
    summary = json.loads((resumed / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(resumed / "checkpoint-2") and summary["global_step"] == 3
    assert max_abs_diff(adapter(fsdp), adapter(resumed)) == 0.0

    # outputs gathered whole: the folder loads, mm_projector.bin has full shapes, a merge of two runs loads
    model, _ = load_pretrained(fsdp, device="cpu")
    assert model.model.mm_projector.weight.shape == (64, 1024)
    merged = tmp_path / "merged.safetensors"
    proc = subprocess.run([PYTHON, "-m", "llavidal.cli", "merge", "--weights", str(single), str(fsdp), "--output",
                           str(merged)], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    load_pretrained(tiny_base, projector=merged, device="cpu")
    load_pretrained(tiny_base, projector=fsdp / "mm_projector.bin", device="cpu")



@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_cpu_processes(tiny_base, synth, tmp_path, stage):
    """ZeRO-2/3 (the shipped configs) on 2 CPU processes, when deepspeed is installed (CI does not install it; see
    docs/dependencies.md): the losses of one process with the same global batch, and outputs gathered whole."""
    pytest.importorskip("deepspeed")
    from llavidal.model import load_pretrained
    from llavidal.train.train import train

    ds, single = tmp_path / "ds", tmp_path / "single"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "llavidal.train.train_mem", *train_flags(tiny_base, synth, ds, per_device_train_batch_size=2, **COMMON),
           "--deepspeed", str(REPO / "configs" / f"ds_zero{stage}.json")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (ds / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own (partitioned) checkpoint
    train(train_flags(tiny_base, synth, single, per_device_train_batch_size=4, **COMMON))
    la, lb = losses(ds), losses(single)
    assert la.keys() == lb.keys() == {1, 2, 3}
    for k in la:
        assert la[k] == pytest.approx(lb[k], rel=1e-5)
    assert max_abs_diff(adapter(ds), adapter(single)) <= 1e-5
    model, _ = load_pretrained(ds, device="cpu")
    assert model.model.mm_projector_forpose.weight.shape == (64, 216)

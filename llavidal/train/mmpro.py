"""MMPro, the multimodal progressive curriculum of LLAVIDAL (docs/design.md#recipe).

1. three independent projector-only runs: video, object, pose;
2. video + pose, initialised from the merge of the stage-1 video and pose results;
3. video + object + pose, initialised from stage 2 plus the stage-1 object projector → the final model.

Merges go by name (:mod:`llavidal.train.merge`), so every projector and every start/end row carries over. A stage
whose output is complete (``train_summary.json`` and ``adapter.safetensors``) is skipped on a re-run; a stage that
was interrupted resumes from its last checkpoint.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..model.checkpoint import ADAPTER_FOLDER_FILE
from .merge import merge_adapters


@dataclass(frozen=True)
class Stage:
    name: str
    modalities: tuple[str, ...]
    init_from: tuple[str, ...] = ()  # stage names whose outputs are merged to initialise this one


STAGES = (
    Stage("stage1-video", ("video",)),
    Stage("stage1-object", ("object",)),
    Stage("stage1-pose", ("pose",)),
    Stage("stage2-video-pose", ("video", "pose"), ("stage1-video", "stage1-pose")),
    Stage("stage3-video-object-pose", ("video", "object", "pose"), ("stage2-video-pose", "stage1-object")),
)

# The published hyper-parameters of every stage (docs/design.md#recipe); user flags given after them take precedence.
# No --version: each model trains on its own template (the published vicuna_v1_1 for LLaMA-Lightening).
RECIPE_FLAGS = [
    "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end", "True",
    "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
    "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "3000", "--save_total_limit", "3",
    "--learning_rate", "2e-5", "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine",
    "--logging_steps", "100", "--model_max_length", "2048", "--lazy_preprocess", "True",
]


@dataclass
class MMProConfig:
    base: str
    data_path: str
    folders: dict[str, str]
    output_dir: str
    nproc: int = 1  # >1: each stage runs under torchrun --nproc_per_node
    extra_args: list[str] = field(default_factory=list)  # appended to every stage's flags
    stages: tuple[Stage, ...] = STAGES
    master_port: int = 29001


def stage_done(out: Path) -> bool:
    return (out / "train_summary.json").is_file() and (out / ADAPTER_FOLDER_FILE).is_file()


def stage_argv(cfg: MMProConfig, stage: Stage, init: Path | None) -> list[str]:
    argv = ["--model_name_or_path", cfg.base, "--data_path", cfg.data_path,
            "--output_dir", str(Path(cfg.output_dir) / stage.name), *RECIPE_FLAGS]
    for m in stage.modalities:
        if not cfg.folders.get(m):
            raise ValueError(f"MMPro stage {stage.name} needs --{m}_folder")
        argv += [f"--{m}_folder", cfg.folders[m]]
    if init is not None:
        argv += ["--pretrain_mm_mlp_adapter", str(init)]
    return argv + list(cfg.extra_args)


def run_stage(cfg: MMProConfig, argv: list[str]) -> None:
    if cfg.nproc <= 1:
        from .train import train

        train(argv)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.nproc}",
           f"--master_port={cfg.master_port}", "-m", "llavidal.train.train_mem", *argv]
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_mmpro(cfg: MMProConfig) -> dict:
    """Run (or resume) every stage; returns ``{stage name: output folder}`` and writes ``mmpro.json``."""
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    for stage in cfg.stages:
        out = root / stage.name
        if stage_done(out):
            print(f"MMPro {stage.name}: already complete, skipped ({out})", flush=True)
            outputs[stage.name] = str(out)
            continue
        init = None
        if stage.init_from:
            missing = [s for s in stage.init_from if s not in outputs]
            if missing:
                raise RuntimeError(f"MMPro {stage.name} needs the outputs of {missing} first")
            init = root / f"{stage.name}-init.safetensors"
            report = merge_adapters([outputs[s] for s in stage.init_from], init)
            print(f"MMPro {stage.name}: initialised from {report['sources']} (token rows {report['token_rows']})",
                  flush=True)
        print(f"MMPro {stage.name}: training {', '.join(stage.modalities)}", flush=True)
        run_stage(cfg, stage_argv(cfg, stage, init))
        if not stage_done(out):
            raise RuntimeError(f"MMPro {stage.name}: training ended without writing {out}/{ADAPTER_FOLDER_FILE}")
        outputs[stage.name] = str(out)
    (root / "mmpro.json").write_text(json.dumps({"stages": outputs, "final": outputs[cfg.stages[-1].name]}, indent=2))
    return outputs


__all__ = ["MMProConfig", "RECIPE_FLAGS", "STAGES", "Stage", "run_mmpro"]

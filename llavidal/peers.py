"""The peers' methods, measured on the synthetic worlds (``llavidal quickstart --study pooling|ski-phase2|long-video``).

* ``pooling`` — PLLaVA-style pooled video features against the spatio-temporal rows. A tiny base learns the language
  of :class:`~llavidal.synthetic.SceneWorld` (stage 0, text only), then one video run per video representation —
  the rows, every per-frame token (the grid of the world itself, 8x4x4) and the tokens pooled to coarser grids;
  LoRA on the LLM with the projector, as PLLaVA trains — is scored on held-out multiple-choice items by option
  log-likelihood: accuracy against tokens per clip.
* ``ski-phase2`` — SKI-LVLM's phase 2 against phase 1: a pose encoder trained SkeletonCLIP-style (phase 1) on
  :func:`~llavidal.synthetic.make_skeleton_world` clips, then trained on for the same number of epochs either
  without (phase 1 continued) or with the CLIP video branch (phase 2, alpha = 10); pose-only test accuracy of each.
* ``long-video`` — LLaMA-VID-style two tokens per frame against the 100-frame sampler
  (:mod:`llavidal.quickstart_long`).

Results: ``results.json`` and ``results.md`` in ``--out``; docs/peers.md holds the tables and the commands.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_GRIDS = ("8x4x4", "4x4x4", "4x2x2", "2x2x2", "2x1x1", "1x1x1")  # 8x4x4: every token of the world


# ==================================================================== pooling
@dataclass
class PoolingStudyConfig:
    out: str = "study-pooling"
    seed: int = 0
    n_train: int = 1024
    n_test: int = 128
    grids: tuple[str, ...] = DEFAULT_GRIDS
    n_text: int = 800  # stage-0 conversations
    lm_epochs: int = 4
    lm_lr: float = 3e-3
    epochs: int = 6
    lr: float = 3e-3
    mode: str = "lora"  # --training_mode of the video runs (PLLaVA trains LoRA on the LLM with the projector)
    batch_size: int = 8
    hidden_size: int = 64
    layers: int = 2
    world: dict = field(default_factory=dict)  # SceneSpec fields


def _train(argv: list[str]) -> dict:
    from .train.train import train

    return train(argv)


def run_pooling_study(cfg: PoolingStudyConfig) -> dict:
    from .model.tiny import TinySpec, make_tiny
    from .quickstart import evaluate_mcq
    from .synthetic import SceneSpec, make_scene_dataset, scene_pretraining_text
    from .video.pool import PoolGrid

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = SceneSpec(**cfg.world)
    base = out / "tiny-base"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=cfg.seed, spec=TinySpec(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
                                                     mm_hidden_size=spec.dim))
    data = make_scene_dataset(out / "data", cfg.n_train, cfg.n_test, cfg.seed, spec)
    common = ["--per_device_train_batch_size", str(cfg.batch_size), "--seed", str(cfg.seed), "--logging_steps", "20",
              "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm",
              "True", "--use_cpu", "True", "--mm_use_vid_start_end", "True"]
    lm = out / "stage0-language"
    if not (lm / "train_summary.json").is_file():
        text = out / "data" / "pretrain_text.json"
        text.write_text(json.dumps(scene_pretraining_text(n=cfg.n_text, seed=cfg.seed)))
        print("[pooling] stage 0: language pre-training of the tiny LLM (text only)")
        _train(["--model_name_or_path", str(base), "--data_path", str(text), "--output_dir", str(lm),
                "--training_mode", "full", "--num_train_epochs", str(cfg.lm_epochs), "--learning_rate",
                str(cfg.lm_lr), "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05", *common])
    runs = [("rows", None)] + [(f"pooled {PoolGrid.parse(g)}", PoolGrid.parse(g)) for g in cfg.grids]
    table = []
    for name, grid in runs:
        run = out / ("video-rows" if grid is None else f"video-pool-{grid}")
        flags = ["--model_name_or_path", str(lm), "--data_path", str(data["train"]), "--output_dir", str(run),
                 "--training_mode", cfg.mode, "--num_train_epochs", str(cfg.epochs), "--learning_rate",
                 str(cfg.lr), "--warmup_ratio", "0.05", *common]
        if grid is None:
            flags += ["--video_folder", str(data["rows"])]
        else:
            flags += ["--video_folder", str(data["frames"]), "--video_pool", ",".join(map(str, grid.as_list())),
                      "--video_pool_frames", str(spec.frames)]
        print(f"[pooling] {name}: video training ({cfg.mode})")
        t_run = time.time()
        summary = _train(flags)
        train_s = time.time() - t_run
        folder = data["rows"] if grid is None else data["frames"]
        result = evaluate_mcq(run, data["test"], {"video_folder": folder}, ["video"], attributes=_scene_attributes())
        tokens = spec.frames + spec.side ** 2 if grid is None else grid.tokens
        table.append({"representation": name, "tokens": tokens, "accuracy": result["accuracy"],
                      "room_right": result["attribute_accuracy"]["room"],
                      "object_right": result["attribute_accuracy"]["object"],
                      "train_loss": summary.get("train_loss"), "train_s": round(train_s, 1)})
    results = {"study": "pooling", "world": asdict(spec), "items": cfg.n_test, "chance": 0.25, "runs": table,
               "seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
    _write(out, results, pooling_table(results))
    return results


def _scene_attributes() -> tuple[tuple[str, ...], dict[str, tuple[int, ...]]]:
    from .synthetic import SCENE_ACTIONS, scene_action_name

    return ("room", "object"), {scene_action_name(*a): a for a in SCENE_ACTIONS}


def pooling_table(results: dict) -> str:
    rows = ["| video representation | tokens per clip | MCQ accuracy | room right | object right |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for r in sorted(results["runs"], key=lambda r: -r["tokens"]):
        rows.append(f"| {r['representation']} | {r['tokens']} | {r['accuracy']:.3f} | {r['room_right']:.2f} | "
                    f"{r['object_right']:.2f} |")
    return "\n".join([f"Held-out MCQ accuracy ({results['items']} items, 4 options: chance 0.25; the room alone: 0.5)",
                      "", *rows])


def _write(out: Path, results: dict, table: str) -> None:
    from .io_utils import atomic_write_json, atomic_write_text

    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", table + "\n")
    print("\n" + table)


# ==================================================================== SKI-LVLM phase 2
@dataclass
class SkiStudyConfig:
    out: str = "study-ski-phase2"
    seeds: tuple[int, ...] = (0, 1, 2)
    phase1_epochs: int = 30
    phase2_epochs: int = 30
    alphas: tuple[float, ...] = (0.0, 10.0)
    layers: int = 2
    batch: int = 16
    lr: float = 3e-3
    frames: int = 32
    video_frames: int = 8
    align: str = "both"  # the branch(es) the alignment term trains (pose train --align)
    world: dict = field(default_factory=dict)  # SkeletonWorldSpec fields


def run_ski_study(cfg: SkiStudyConfig) -> dict:
    """Per seed: a world, phase 1, then phase 2 from it at each alpha (alpha = 0: the same run without the
    alignment term); the pose-only and video-text test accuracies of each."""
    from .pose.train import PoseTrainConfig, train
    from .synthetic import SkeletonWorldSpec, make_skeleton_world
    from .video.clip import TinyClipSpec, make_tiny_clip

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = out / "clip"
    if not (clip / "config.json").is_file():
        make_tiny_clip(clip, seed=0, spec=TinyClipSpec(vision_hidden_size=64, vision_intermediate_size=128,
                                                       vision_heads=4, vision_layers=2))
    spec = SkeletonWorldSpec(**cfg.world)
    common = {"clip": str(clip), "split": "xsub", "batch": cfg.batch, "lr": cfg.lr, "frames": cfg.frames,
              "workers": 0, "device": "cpu", "progress": False, "layers": cfg.layers, "dropout": 0.1,
              "warmup_epochs": 1.0}
    runs = []
    for seed in cfg.seeds:
        data = out / f"world-{seed}"
        if not (data / "skeletons").is_dir():
            make_skeleton_world(data, seed=seed, spec=spec)
        phase1 = out / f"seed{seed}-phase1"
        print(f"[ski-phase2] seed {seed}: phase 1 ({cfg.phase1_epochs} epochs)")
        s1 = train(PoseTrainConfig(data=str(data / "skeletons"), out=str(phase1), epochs=cfg.phase1_epochs, seed=seed,
                                   **common))
        row = {"seed": seed, "phase1": {"pose_top1": s1["last_metrics"]["top1"]}}
        for alpha in cfg.alphas:
            print(f"[ski-phase2] seed {seed}: phase 2, alpha {alpha:g} ({cfg.phase2_epochs} epochs)")
            s2 = train(PoseTrainConfig(data=str(data / "skeletons"), out=str(out / f"seed{seed}-phase2-alpha{alpha:g}"),
                                       epochs=cfg.phase2_epochs, seed=seed, phase=2, init=str(phase1),
                                       videos=str(data / "rgb"), alpha=alpha, video_frames=cfg.video_frames,
                                       align=cfg.align, **common))
            m = s2["last_metrics"]
            row[f"phase2_alpha{alpha:g}"] = {"pose_top1": m["pose_top1"], "video_top1": m["top1"],
                                             "train_mse": m["train_mse"]}
        runs.append(row)
    results = {"study": "ski-phase2", "world": asdict(spec), "runs": runs, "summary": _ski_summary(runs, cfg),
               "test_clips": s1["last_metrics"]["n_test"], "classes": len(spec.actions),
               "seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
    _write(out, results, ski_table(results))
    return results


def _ski_summary(runs: list[dict], cfg: SkiStudyConfig) -> dict:
    def stats(key, metric):
        vals = [r[key][metric] for r in runs]
        return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}

    out = {"phase1": {"pose_top1": stats("phase1", "pose_top1")}}
    for alpha in cfg.alphas:
        key = f"phase2_alpha{alpha:g}"
        out[key] = {"pose_top1": stats(key, "pose_top1"), "video_top1": stats(key, "video_top1")}
    return out


def _mean_std(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({', '.join(f'{v:.3f}' for v in s['values'])})"


def ski_table(results: dict) -> str:
    cfg, summary, fmt = results["config"], results["summary"], _mean_std
    rows = ["| pose encoder | epochs | pose-only top-1 | video-text top-1 (test-time logits) |",
            "| --- | ---: | --- | --- |",
            f"| phase 1 (SkeletonCLIP) | {cfg['phase1_epochs']} | {fmt(summary['phase1']['pose_top1'])} | - |"]
    for alpha in cfg["alphas"]:
        s = summary[f"phase2_alpha{alpha:g}"]
        what = "phase 2 without the alignment term" if alpha == 0 else f"phase 2, alpha = {alpha:g}"
        rows.append(f"| {what} | {cfg['phase1_epochs']} + {cfg['phase2_epochs']} | {fmt(s['pose_top1'])} | "
                    f"{fmt(s['video_top1'])} |")
    title = (f"Test top-1 among all 120 NTU class prompts ({results['test_clips']} test clips of unseen performers, "
             f"from {results['classes']} classes), mean ± std over seeds {', '.join(map(str, cfg['seeds']))}")
    return "\n".join([title, "", *rows])


def run_study(name: str, out: str, seed: int = 0, fast: bool = False,
              alphas: tuple[float, ...] | None = None) -> dict:
    """``llavidal quickstart --study NAME``: the full-size study, or with ``fast`` a small smoke run. ``alphas``: the
    phase-2 alignment weights the ski-phase2 study compares (default 0 and 10)."""
    if alphas is not None and name != "ski-phase2":
        raise ValueError(f"quickstart --study {name}: --alphas applies to the ski-phase2 study only")
    if name == "pooling":
        cfg = PoolingStudyConfig(out=out, seed=seed)
        if fast:
            cfg.n_train, cfg.n_test, cfg.n_text, cfg.lm_epochs, cfg.epochs, cfg.grids = 32, 8, 64, 1, 1, ("2x2x2",)
        return run_pooling_study(cfg)
    if name == "ski-phase2":
        cfg = SkiStudyConfig(out=out, seeds=(seed, seed + 1, seed + 2))
        if fast:
            cfg.seeds, cfg.phase1_epochs, cfg.phase2_epochs, cfg.layers = (seed,), 1, 1, 1
            cfg.world = {"actions": (1, 2, 3, 4), "train_performers": (1,), "test_performers": (3,),
                         "replications": 1, "frames": 16}
            cfg.frames, cfg.video_frames = 16, 2
        if alphas is not None:
            cfg.alphas = tuple(alphas)
        return run_ski_study(cfg)
    if name == "long-video":  # docs/benchmarks.md#long-video
        from .quickstart_long import LongVideoProofConfig, run_long_video_proof

        lcfg = LongVideoProofConfig(out=out, seed=seed)
        if fast:
            lcfg.n_train, lcfg.n_test, lcfg.epochs, lcfg.lm_texts, lcfg.lm_epochs = 32, 8, 2, 300, 2
        return run_long_video_proof(lcfg)
    raise ValueError(f"unknown study {name!r}; expected pooling, ski-phase2 or long-video")


__all__ = ["PoolingStudyConfig", "SkiStudyConfig", "pooling_table", "run_pooling_study", "run_ski_study", "run_study",
           "ski_table"]

"""The peers' methods, measured on the synthetic worlds (``llavidal quickstart --study NAME``, one of :data:`STUDIES`).

* ``pooling`` — PLLaVA-style pooled video features against the spatio-temporal rows. A tiny base learns the language
  of :class:`~llavidal.synthetic.SceneWorld` (stage 0, text only), then one video run per video representation —
  the rows, every per-frame token (the grid of the world itself, 8x4x4) and the tokens pooled to coarser grids;
  LoRA on the LLM with the projector, as PLLaVA trains — is scored on held-out multiple-choice items by option
  log-likelihood: accuracy against tokens per clip.
* ``ski-phase2`` (and ``-combinations``, ``-xsub``) — SKI-LVLM's phase 2 against phase 1: a pose encoder trained
  SkeletonCLIP-style (phase 1), then trained on for the same number of epochs either without (phase 1 continued) or
  with the CLIP video branch and the alignment term (phase 2); pose-only test accuracy of each, on the novel classes
  of :func:`~llavidal.synthetic.make_posture_world` (zero-shot) or the new performers of
  :func:`~llavidal.synthetic.make_skeleton_world` (cross-subject). :data:`SKI_STUDIES` holds each study's settings.
* ``long-video`` — LLaMA-VID-style two tokens per frame against the 100-frame sampler
  (:mod:`llavidal.quickstart_long`).

Results: ``results.json`` and ``results.md`` in ``--out``; docs/peers.md holds the tables and the commands.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
SKI_SETTINGS = ("zeroshot", "xsub")


@dataclass
class WorldClipConfig:
    """The tiny CLIP of the zero-shot setting, pre-trained on the world's pre-training clips (every class)."""
    epochs: int = 100
    lr: float = 1e-3
    batch: int = 32
    frames: int = 8  # frames per video: the phase-2 video branch's --video-frames
    seed: int = 0
    captions: bool = False  # also pre-train on the world's descriptions of each clip (captions.json)


def pretrain_world_clip(folder: str | Path, videos: str | Path, classes: tuple[int, ...], cfg: WorldClipConfig,
                        captions: dict[str, list[str]] | None = None) -> dict:
    """Pre-train a tiny CLIP (both towers) on ``videos`` (NTU-named, ``{stem}_rgb.*``) against the prompts of
    ``classes``: the mean image embedding of each video's ``cfg.frames`` frames against the class prompts' text
    embeddings, cross-entropy over the scaled cosines (CLIP's loss with the class prompts as the captions). With
    ``captions`` (``{video stem: [caption, ...]}``, the same number for every video), each caption place adds its own
    term: the video against the distinct captions found at that place — a CLIP that, as a web-scale one, has been
    told more about its videos than their class. It stands in for the pre-training that lets a real CLIP know
    classes no pose encoder was trained on. Written as a CLIP folder that ``--clip`` reads; ``world_clip.json``
    (written last) marks it done and holds the final training loss and top-1 (of the class prompts), so a rerun
    reuses it."""
    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel, CLIPTokenizer

    from .console import library_quiet
    from .curation.ntu import NTU_ACTIONS, NTUName
    from .io_utils import atomic_write_json
    from .pose.data import PROMPT_TEMPLATE
    from .video.clip import TinyClipSpec, image_stats, make_tiny_clip, normalise_frames, quiet_from_pretrained
    from .video.io import find_videos, sample_video, video_id

    folder = Path(folder)
    done = folder / "world_clip.json"
    if done.is_file():
        return json.loads(done.read_text())
    paths = sorted(find_videos(videos), key=video_id)
    label = {c: i for i, c in enumerate(classes)}
    # caption sets: (texts, label of each video); the class prompts first
    sets = [([PROMPT_TEMPLATE.format(NTU_ACTIONS[c - 1]) for c in classes],
             [label[NTUName.parse(p).action] for p in paths])]
    if captions is not None:
        stems = [NTUName.parse(p).stem for p in paths]
        missing = [s for s in stems if s not in captions]
        if missing:
            raise ValueError(f"captions: no caption for {len(missing)} of {len(stems)} videos under {videos} "
                             f"(first: {missing[0]})")
        width = len(captions[stems[0]])
        uneven = [s for s in stems if len(captions[s]) != width]
        if uneven:
            raise ValueError(f"captions: every video needs the same number of captions, found "
                             f"{sorted({len(captions[s]) for s in stems})} ({stems[0]}: {width}, {uneven[0]}: "
                             f"{len(captions[uneven[0]])})")
        for place in range(width):
            at = {t: i for i, t in enumerate(sorted({captions[s][place] for s in stems}))}
            sets.append((list(at), [at[captions[s][place]] for s in stems]))
    make_tiny_clip(folder, seed=cfg.seed, spec=TinyClipSpec(
        vision_hidden_size=64, vision_intermediate_size=128, vision_heads=4, vision_layers=2, projection_dim=32,
        image_size=32, patch_size=4))
    torch.manual_seed(cfg.seed)
    model = quiet_from_pretrained(CLIPModel, str(folder)).train()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    stats = image_stats(folder)
    pixels = torch.stack([normalise_frames(torch.from_numpy(sample_video(p, cfg.frames, stats.size)), stats)
                          for p in paths])  # [N, F, 3, S, S]
    prompts = [tokenizer(texts, padding=True, return_tensors="pt") for texts, _ in sets]
    labels = [torch.tensor(y) for _, y in sets]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for index in torch.randperm(len(paths), generator=order).split(cfg.batch):
            x = pixels[index]
            image = model.get_image_features(pixel_values=x.flatten(0, 1)).pooler_output  # [B * F, P]
            image = F.normalize(image.view(len(index), x.shape[1], -1).mean(dim=1), dim=-1)
            logits = [model.logit_scale.exp() * image @ F.normalize(model.get_text_features(**p).pooler_output,
                                                                    dim=-1).T for p in prompts]  # [B, K] per set
            loss = sum(F.cross_entropy(lg, y[index]) for lg, y in zip(logits, labels))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            correct += (logits[0].argmax(1) == labels[0][index]).sum()
    with library_quiet():
        model.save_pretrained(folder)
    (folder / "llavidal_tiny_clip.json").unlink(missing_ok=True)  # described the random initialisation
    info = {"videos": len(paths), "classes": list(classes), "epochs": cfg.epochs,
            "train_loss": float(loss_sum) / len(paths), "train_top1": int(correct) / len(paths),
            "caption_sets": [len(texts) for texts, _ in sets[1:]]}
    atomic_write_json(done, info)
    return info


@dataclass
class SkiStudyConfig:
    out: str = "study-ski-phase2"
    setting: str = "zeroshot"  # zeroshot: the posture world, novel classes; xsub: the skeleton world, new performers
    seeds: tuple[int, ...] = (0, 1, 2)
    phase1_epochs: int = 30
    phase2_epochs: int = 30
    alphas: tuple[float, ...] = (0.0, 10.0)
    aligns: tuple[str, ...] = ("both", "pose")  # per alpha > 0, the branch(es) the alignment trains (--align)
    layers: int = 2
    batch: int = 16
    lr: float = 3e-3
    frames: int = 32
    video_frames: int = 8
    video_lr_scale: float = 10.0  # phase 2's video branch learns at this multiple of lr (0: frozen)
    world: dict = field(default_factory=dict)  # PostureWorldSpec (zeroshot) or SkeletonWorldSpec (xsub) fields
    clip: dict = field(default_factory=dict)  # WorldClipConfig fields (zeroshot)


def _ski_runs(alphas: tuple[float, ...], aligns: tuple[str, ...]) -> list[tuple[str, float, str]]:
    """(results key, alpha, align) of each phase-2 run: alpha 0 once (the alignment term is absent, so ``align``
    changes nothing), every other alpha once per ``aligns``."""
    runs = []
    for alpha in alphas:
        for align in (("both",) if alpha == 0 else aligns):
            runs.append((f"phase2_alpha{alpha:g}" + ("" if align == "both" else f"_{align}"), alpha, align))
    return runs


def _ski_world(cfg: SkiStudyConfig, out: Path, seed: int, spec) -> tuple[dict, str]:
    """The seed's world and the CLIP its runs use, made once (a rerun reuses both)."""
    from .io_utils import atomic_write_json
    from .synthetic import make_posture_world, make_skeleton_world

    data = out / f"world-{seed}"
    if cfg.setting == "xsub":
        if not (data / "skeletons").is_dir():
            make_skeleton_world(data, seed=seed, spec=spec)
        return {"skeletons": data / "skeletons", "rgb": data / "rgb"}, str(out / "clip")
    marker = data / "world.json"
    if not marker.is_file():
        world = make_posture_world(data, seed=seed, spec=spec)
        atomic_write_json(marker, {"clips": world["clips"], "pretrain_clips": world["pretrain_clips"]})
    clip = data / "clip"
    ccfg = WorldClipConfig(**{**cfg.clip, "frames": cfg.video_frames, "seed": seed})
    if not (clip / "world_clip.json").is_file():
        print(f"[ski-phase2] seed {seed}: pre-training the world's CLIP ({ccfg.epochs} epochs)")
    captions = json.loads((data / "pretrain" / "captions.json").read_text()) if ccfg.captions else None
    info = pretrain_world_clip(clip, data / "pretrain" / "rgb", spec.classes, ccfg, captions)
    return {"skeletons": data / "skeletons", "rgb": data / "rgb", "clip_pretraining": info}, str(clip)


def run_ski_study(cfg: SkiStudyConfig) -> dict:
    """Per seed: a world, phase 1, then phase 2 from it for each run of :func:`_ski_runs` (alpha = 0: the same run
    without the alignment term, phase 1 continued); the pose-only and video-text test accuracies of each.

    ``zeroshot`` (SKI-LVLM's setting): the posture world, the novel classes held out of both phases, scored on them
    (top-1 among the novel classes, and GZSL top-1 among all 120 prompts) with a CLIP pre-trained on every class.
    ``xsub``: the skeleton world, NTU's cross-subject split, a random tiny CLIP."""
    from .pose.train import PoseTrainConfig, train
    from .synthetic import PostureWorldSpec, SkeletonWorldSpec
    from .video.clip import TinyClipSpec, make_tiny_clip

    if cfg.setting not in SKI_SETTINGS:
        raise ValueError(f"SkiStudyConfig.setting {cfg.setting!r}: expected one of {', '.join(SKI_SETTINGS)}")
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    zeroshot = cfg.setting == "zeroshot"
    spec = PostureWorldSpec(**cfg.world) if zeroshot else SkeletonWorldSpec(**cfg.world)
    if not zeroshot and not (out / "clip" / "config.json").is_file():
        make_tiny_clip(out / "clip", seed=0, spec=TinyClipSpec(vision_hidden_size=64, vision_intermediate_size=128,
                                                               vision_heads=4, vision_layers=2))
    common = {"batch": cfg.batch, "lr": cfg.lr, "frames": cfg.frames, "workers": 0, "device": "cpu",
              "progress": False, "layers": cfg.layers, "dropout": 0.1, "warmup_epochs": 1.0}
    if zeroshot:
        common.update(split="zeroshot", unseen_classes=",".join(map(str, spec.novel)))
    else:
        common.update(split="xsub")
    runs = []
    for seed in cfg.seeds:
        world, clip = _ski_world(cfg, out, seed, spec)
        data = str(world["skeletons"])
        phase1 = out / f"seed{seed}-phase1"
        print(f"[ski-phase2] seed {seed}: phase 1 ({cfg.phase1_epochs} epochs)")
        s1 = train(PoseTrainConfig(data=data, out=str(phase1), clip=clip, epochs=cfg.phase1_epochs, seed=seed,
                                   **common))
        row = {"seed": seed, "phase1": _ski_metrics(s1["last_metrics"], phase=1)}
        if "clip_pretraining" in world:
            row["clip_pretraining"] = world["clip_pretraining"]
        for key, alpha, align in _ski_runs(cfg.alphas, cfg.aligns):
            print(f"[ski-phase2] seed {seed}: phase 2, alpha {alpha:g}, align {align} ({cfg.phase2_epochs} epochs)")
            folder = f"seed{seed}-phase2-alpha{alpha:g}" + ("" if align == "both" else f"-align-{align}")
            s2 = train(PoseTrainConfig(data=data, out=str(out / folder), clip=clip, epochs=cfg.phase2_epochs,
                                       seed=seed, phase=2, init=str(phase1), videos=str(world["rgb"]), alpha=alpha,
                                       video_frames=cfg.video_frames, video_lr_scale=cfg.video_lr_scale,
                                       align=align, **common))
            row[key] = _ski_metrics(s2["last_metrics"], phase=2)
        runs.append(row)
    results = {"study": "ski-phase2", "setting": cfg.setting, "world": asdict(spec), "runs": runs,
               "summary": _ski_summary(runs, cfg), "test_clips": s1["last_metrics"]["n_test"],
               "classes": len(spec.classes) if zeroshot else len(spec.actions),
               "novel_classes": list(spec.novel) if zeroshot else None,
               "seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
    _write(out, results, ski_table(results))
    return results


def _ski_metrics(m: dict, phase: int) -> dict:
    """The test metrics of a run's last epoch: pose-only top-1 (and GZSL top-1 in the zero-shot setting) and, for
    phase 2, the video-text ones and the alignment term."""
    if phase == 1:
        return {"pose_top1": m["top1"], **({"pose_gzsl_top1": m["gzsl_top1"]} if "gzsl_top1" in m else {})}
    out = {"pose_top1": m["pose_top1"], "video_top1": m["top1"], "train_mse": m["train_mse"]}
    if "gzsl_top1" in m:
        out.update(pose_gzsl_top1=m["pose_gzsl_top1"], video_gzsl_top1=m["gzsl_top1"])
    return out


def _ski_summary(runs: list[dict], cfg: SkiStudyConfig) -> dict:
    out = {}
    for key in ["phase1", *(k for k, _, _ in _ski_runs(cfg.alphas, cfg.aligns))]:
        out[key] = {metric: _stats([r[key][metric] for r in runs]) for metric in runs[0][key]
                    if metric != "train_mse"}
    return out


def _stats(values: list[float]) -> dict:
    import numpy as np  # lazily: the CLI reads STUDIES from this module

    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def _mean_std(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({', '.join(f'{v:.3f}' for v in s['values'])})"


def ski_table(results: dict) -> str:
    cfg, summary, fmt = results["config"], results["summary"], _mean_std
    zeroshot = results.get("setting", "xsub") == "zeroshot"
    runs = [("phase1", "phase 1 (SkeletonCLIP)", str(cfg["phase1_epochs"]))]
    for key, alpha, align in _ski_runs(cfg["alphas"], cfg.get("aligns", ("both",))):
        what = ("phase 2 without the alignment term" if alpha == 0 else f"phase 2, alpha = {alpha:g}"
                + ("" if align == "both" else f", --align {align}"))
        runs.append((key, what, f"{cfg['phase1_epochs']} + {cfg['phase2_epochs']}"))
    if zeroshot:
        rows = ["| pose encoder | epochs | pose-only top-1 (novel) | pose-only GZSL top-1 | video-text top-1 (novel) |",
                "| --- | ---: | --- | --- | --- |"]
        for key, what, epochs in runs:
            s = summary[key]
            rows.append(f"| {what} | {epochs} | {fmt(s['pose_top1'])} | {fmt(s.get('pose_gzsl_top1'))} | "
                        f"{fmt(s.get('video_top1'))} |")
        title = (f"Zero-shot: top-1 on the {results['test_clips']} clips of the {len(results['novel_classes'])} novel "
                 f"classes {tuple(results['novel_classes'])}, which neither phase trains on (among the novel classes; "
                 f"GZSL: among all 120 NTU class prompts), mean ± std over seeds {', '.join(map(str, cfg['seeds']))}")
    else:
        rows = ["| pose encoder | epochs | pose-only top-1 | video-text top-1 (test-time logits) |",
                "| --- | ---: | --- | --- |"]
        for key, what, epochs in runs:
            s = summary[key]
            rows.append(f"| {what} | {epochs} | {fmt(s['pose_top1'])} | {fmt(s.get('video_top1'))} |")
        title = (f"Test top-1 among all 120 NTU class prompts ({results['test_clips']} test clips of unseen "
                 f"performers, from {results['classes']} classes), mean ± std over seeds "
                 f"{', '.join(map(str, cfg['seeds']))}")
    return "\n".join([title, "", *rows])


# The SKI-LVLM studies (docs/peers.md#ski-phase2): SkiStudyConfig fields over its defaults, and how many seeds.
# ski-phase2 is the zero-shot world in which phase 2 has something to teach: 6 base classes naming the left hand
# only, 12 novel ones naming both hands, a CLIP pre-trained on the hands' captions too, and the video branch frozen
# at that CLIP so that the alignment target is what it knows of the novel classes.
SKI_STUDIES = {
    "ski-phase2": {"seeds": 5, "alphas": (0.0, 10.0, 100.0), "aligns": ("pose",), "video_lr_scale": 0.0,
                   "world": {"layout": "coarse", "places": 6, "replications": 3}, "clip": {"captions": True}},
    "ski-phase2-combinations": {"seeds": 3},
    "ski-phase2-xsub": {"seeds": 3, "setting": "xsub"},
}


def ski_study_config(name: str, out: str, seed: int = 0, fast: bool = False) -> SkiStudyConfig:
    """The config of study ``name`` (a key of :data:`SKI_STUDIES`) from ``seed`` on; ``fast``: a smoke run (one
    seed, one epoch per phase, a tiny world)."""
    fields = dict(SKI_STUDIES[name])
    n = fields.pop("seeds")
    cfg = SkiStudyConfig(out=out, seeds=tuple(range(seed, seed + n)), **fields)
    if fast:
        cfg.seeds, cfg.phase1_epochs, cfg.phase2_epochs, cfg.layers = (seed,), 1, 1, 1
        cfg.frames, cfg.video_frames = 16, 2
        if cfg.setting == "xsub":
            cfg.world = {"actions": (1, 2, 3, 4), "train_performers": (1,), "test_performers": (3,),
                         "replications": 1, "frames": 16}
        else:
            from .synthetic import PostureWorldSpec

            layout = cfg.world.get("layout", PostureWorldSpec.layout)
            small = {"places": 2} if layout == "combinations" else {"places": 4}  # coarse needs 4
            cfg.world = {**cfg.world, **small, "performers": (1, 2), "pretrain_performers": (11,),
                         "replications": 1, "frames": 16}
            cfg.clip = {**cfg.clip, "epochs": 2}
    return cfg


def run_study(name: str, out: str, seed: int = 0, fast: bool = False,
              alphas: tuple[float, ...] | None = None) -> dict:
    """``llavidal quickstart --study NAME``: the full-size study, or with ``fast`` a small smoke run. ``alphas``: the
    phase-2 alignment weights the SKI studies compare (default: the study's)."""
    if alphas is not None and name not in SKI_STUDIES:
        raise ValueError(f"quickstart --study {name}: --alphas applies to the ski-phase2 studies only")
    if name == "pooling":
        cfg = PoolingStudyConfig(out=out, seed=seed)
        if fast:
            cfg.n_train, cfg.n_test, cfg.n_text, cfg.lm_epochs, cfg.epochs, cfg.grids = 32, 8, 64, 1, 1, ("2x2x2",)
        return run_pooling_study(cfg)
    if name in SKI_STUDIES:
        cfg = ski_study_config(name, out, seed, fast)
        if alphas is not None:
            cfg.alphas = tuple(alphas)
        return run_ski_study(cfg)
    if name == "long-video":  # docs/benchmarks.md#long-video
        from .quickstart_long import LongVideoProofConfig, run_long_video_proof

        lcfg = LongVideoProofConfig(out=out, seed=seed)
        if fast:
            lcfg.n_train, lcfg.n_test, lcfg.epochs, lcfg.lm_texts, lcfg.lm_epochs = 32, 8, 2, 300, 2
        return run_long_video_proof(lcfg)
    raise ValueError(f"unknown study {name!r}; expected one of {', '.join(STUDIES)}")


STUDIES = ("pooling", *SKI_STUDIES, "long-video")


__all__ = ["SKI_SETTINGS", "SKI_STUDIES", "STUDIES", "PoolingStudyConfig", "SkiStudyConfig", "WorldClipConfig",
           "pooling_table", "pretrain_world_clip", "run_pooling_study", "run_ski_study", "run_study",
           "ski_study_config", "ski_table"]

"""SkeletonCLIP training of the pose encoder (SKI-LVLM phase 1, and phase 2 with ``--phase 2``): ``llavidal pose train``.

Background: docs/design.md#pose-and-object-features.

Each NTU class gets the prompt "a photo of a {class}." embedded once by the frozen CLIP text tower
(``CLIPTextModelWithProjection`` + ``CLIPTokenizer`` from ``--clip``). The skeleton embedding (mean of the encoder's
tokens, projected to the CLIP projection dim) is trained with cross-entropy over the cosine logits against those
text embeddings, with a learned temperature. AdamW, linear warm-up then cosine decay, gradient clipping at 1.
Phase 2 (:mod:`.align`) starts from a phase-1 model and trains it next to a CLIP video branch: CE(video-text) +
CE(pose-text) + alpha * MSE(video-text cosines, pose-text cosines); its test metrics ``top1``/``top5`` are the
video-text ones (the prediction at test time), ``pose_top1``/``pose_top5`` the pose encoder's alone.

Output folder::

    config.json, model.safetensors        the latest epoch's model (what `llavidal extract-pose --model` reads)
    text_embeddings.safetensors           [120, P] class prompt embeddings (+ classes.json: names, template, clip)
    checkpoint-0003/                      the same files + optimizer.pt + state.json, for resuming (last 2 kept)
    metrics.jsonl                         one row per epoch: train loss/top-1, test top-1/top-5 (+ gzsl_* for
                                          zero-shot), lr, samples, time (phase 2: + the loss terms, pose_*)
    video_branch.safetensors              phase 2: the video branch (adapter + logit scale), also per checkpoint
    video_embeddings.safetensors          phase 2: the clips' CLIP image embeddings, computed once
    skipped.jsonl                         every file that was not used, with the reason
    train_config.json, train_summary.json

A run started again with the same ``--out`` resumes after the newest complete checkpoint; the data order, the
augmentation and dropout are seeded per epoch, so an interrupted and resumed run ends with the same weights as an
uninterrupted one. ``--epochs`` may be raised when resuming (the cosine schedule is then stretched over the new
total from the current step); resuming with different data/model/split/optimiser settings is refused (the
differing field is named).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io_utils import append_jsonl, atomic_path, atomic_write_json, commit, read_jsonl
from .configuration import PoseEncoderConfig
from .align import (ALIGN_CHOICES, DEFAULT_ALPHA, DEFAULT_VIDEO_FRAMES, DEFAULT_VIDEO_LR_SCALE, Phase2,
                    cached_image_embeddings, match_videos)
from .data import PROMPT_TEMPLATE, SkeletonDataset, Split, collate, make_split, scan_ntu
from .modeling import SkeletonCLIP, load_pose_model, save_pose_model

log = logging.getLogger("llavidal.pose")

TEXT_NAME = "text_embeddings.safetensors"
CLASSES_NAME = "classes.json"
# Fields that may change when a run is resumed; every other field must match the run being resumed.
_RESUMABLE_CHANGES = {"out", "epochs", "workers", "device", "resume", "progress", "eval_every", "keep_checkpoints"}


@dataclass
class PoseTrainConfig:
    data: str
    out: str
    clip: str
    split: str = "xsub"
    unseen_classes: str | None = None  # zeroshot: a count N or a list "3,7,12"
    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    frames: int = 300  # every training clip is resampled to this many frames (300 = 75 tokens, NTU's length)
    augment: bool = True
    seed: int = 0
    workers: int | None = None  # DataLoader processes (default min(4, CPUs - 1))
    device: str | None = None
    eval_every: int = 1
    keep_checkpoints: int = 2
    resume: bool = True
    progress: bool = True
    template: str = PROMPT_TEMPLATE
    # encoder sizes (PoseEncoderConfig)
    layers: int = 6
    width: int = 216
    heads: int = 9
    stride: int = 4
    tokens: int = 256  # default tokens of feature extraction, stored in the model config
    dropout: float = 0.1
    # SKI-LVLM phase 2 (docs/design.md#pose-and-object-features): the encoder sizes then come from `init`
    phase: int = 1
    init: str | None = None  # phase 2: the phase-1 output folder (or checkpoint) to start from
    videos: str | None = None  # phase 2: the clips' RGB videos ({stem}_rgb.avi as NTU's, searched recursively)
    alpha: float = DEFAULT_ALPHA  # phase 2: weight of the MSE between the video-text and pose-text logits
    video_frames: int = DEFAULT_VIDEO_FRAMES  # phase 2: frames per video through CLIP's image tower
    video_lr_scale: float = DEFAULT_VIDEO_LR_SCALE  # phase 2: the video branch's lr as a multiple of lr (0: frozen)
    align: str = "both"  # phase 2: the branch(es) the alignment term trains: both, pose or video


# ---------------------------------------------------------------------------------------------------- text side
def class_text_embeddings(clip: str, names: list[str], template: str = PROMPT_TEMPLATE,
                          device: str | torch.device = "cpu", batch: int = 64) -> torch.Tensor:
    """Frozen CLIP text embeddings ``[K, P]`` (projected, not normalised) of ``template.format(name)``."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from ..video.clip import ClipLoadError, _resolve, quiet_from_pretrained

    src = _resolve(clip)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(src)
    except OSError as e:
        raise ClipLoadError(f"--clip {src}: cannot load the CLIP tokenizer: {e}") from None
    model = quiet_from_pretrained(CLIPTextModelWithProjection, src).to(device).eval()
    prompts = [template.format(n) for n in names]
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            enc = tokenizer(prompts[i:i + batch], padding=True, truncation=True, return_tensors="pt").to(device)
            out.append(model(**enc).text_embeds.float().cpu())
    return torch.cat(out)


def save_text_embeddings(folder: Path, emb: torch.Tensor, names: list[str], clip: str, template: str) -> None:
    from safetensors.torch import save_file

    with atomic_path(folder / TEXT_NAME) as tmp:
        save_file({"text_embeds": emb.contiguous()}, str(tmp), metadata={"clip": str(clip), "template": template})
    atomic_write_json(folder / CLASSES_NAME, {"template": template, "clip": str(clip), "classes": names})


def _stored_text_matches(folder: Path, clip: str, template: str, names: list[str]) -> bool:
    """True when ``folder`` already holds the text embeddings of these prompts by this CLIP (reused on resume)."""
    try:
        meta = json.loads((folder / CLASSES_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return ((folder / TEXT_NAME).is_file() and meta.get("clip") == str(clip) and meta.get("template") == template
            and meta.get("classes") == names)


def load_text_embeddings(folder: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / TEXT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class text embeddings not found (a `llavidal pose train` output folder "
                                "or checkpoint holds them)")
    names = json.loads((folder / CLASSES_NAME).read_text())["classes"]
    return load_file(str(path))["text_embeds"], names


# ---------------------------------------------------------------------------------------------------- metrics
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of rows whose target is among the k highest logits, per k (k is capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # [N, kmax]
    hit = top == target[:, None]
    return {k: int(hit[:, :min(k, logits.shape[1])].any(dim=1).sum()) for k in ks}


def _positions(labels: torch.Tensor, classes: list[int], num_classes: int = 120) -> torch.Tensor:
    """1-based action ids → index into ``classes`` (-1 when absent)."""
    lut = torch.full((num_classes + 1,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    return lut[labels]


class _Skips:
    """Files that could not be used: counted once each, appended to ``skipped.jsonl`` once each."""

    def __init__(self, path: Path | None):
        self.path = path
        self.seen = {r.get("file") for r in read_jsonl(path)} if path is not None else set()
        self.this_run: dict[str, str] = {}

    def add(self, records: list[dict]) -> None:
        new = [r for r in records if r["file"] not in self.seen]
        for r in records:
            self.this_run[r["file"]] = r["reason"]
        self.seen.update(r["file"] for r in new)
        if new and self.path is not None:
            append_jsonl(self.path, new)

    def add_errors(self, dataset_items, errors) -> None:
        self.add([{"file": str(dataset_items[i].path), "reason": msg} for i, msg in errors])


@torch.no_grad()
def evaluate(model: SkeletonCLIP, loader, text: torch.Tensor, classes: list[int], device, skips: _Skips | None = None,
             all_classes: list[int] | None = None, phase2: Phase2 | None = None) -> dict:
    """Top-1/top-5 accuracy of the test loader against the prompts of ``classes`` (and of ``all_classes`` as
    ``gzsl_*`` when given). With ``phase2``: ``top1``/``top5`` are the video-text logits' (the prediction at test
    time) and ``pose_top1``/``pose_top5`` the pose encoder's."""
    model.eval()
    if phase2 is not None:
        phase2.head.eval()
    sets = {"": classes} | ({"gzsl_": all_classes} if all_classes is not None else {})
    heads = ("", "pose_") if phase2 is not None else ("",)
    hits = {h + p: {1: 0, 5: 0} for h in heads for p in sets}
    n = 0
    for batch in loader:
        if skips is not None:
            skips.add_errors(loader.dataset.items, batch["errors"])
        if batch["x"] is None:
            continue
        emb = model.embed(batch["x"].to(device))
        for prefix, cls in sets.items():
            prompts = text[torch.tensor(cls) - 1].to(device)
            logits = {"pose_" if phase2 is not None else "": model.logits(emb, prompts)}
            if phase2 is not None:
                logits[""] = phase2.video_logits("test", batch["index"], prompts)
            pos = _positions(batch["label"], cls).to(device)
            for head, lg in logits.items():
                for k, v in topk_correct(lg, pos).items():
                    hits[head + prefix][k] += v
        n += len(batch["index"])
    out = {"n_test": n}
    for key in hits:
        out[f"{key}top1"] = hits[key][1] / n if n else None
        out[f"{key}top5"] = hits[key][5] / n if n else None
    return out


# ---------------------------------------------------------------------------------------------------- checkpoints
def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    for p in out.glob("checkpoint-*"):
        if p.is_dir() and (p / "state.json").is_file() and p.name.removeprefix("checkpoint-").isdigit():
            found.append((int(p.name.removeprefix("checkpoint-")), p))
    return sorted(found)


def _save_checkpoint(out: Path, model, optimizer, state: dict, text, names, cfg: PoseTrainConfig,
                     phase2: Phase2 | None = None) -> Path:
    """Write ``checkpoint-{epoch}`` through a temporary folder renamed into place (a kill leaves no half
    checkpoint), then drop all but the newest ``keep_checkpoints``."""
    final = out / f"checkpoint-{state['epoch']:04d}"
    tmp = out / f".checkpoint-{state['epoch']:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pose_model(model, tmp, {"epoch": state["epoch"]})
    save_text_embeddings(tmp, text, names, cfg.clip, cfg.template)
    if phase2 is not None:
        phase2.save(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", state)
    shutil.rmtree(final, ignore_errors=True)
    commit(tmp, final)
    for _, old in _checkpoints(out)[:-max(1, cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _check_resume(out: Path, cfg: PoseTrainConfig) -> None:
    path = out / "train_config.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    for k, v in asdict(cfg).items():
        if k not in _RESUMABLE_CHANGES and k in before and before[k] != v:
            raise ValueError(f"{out}: resuming a run trained with {k}={before[k]!r}, but this run has {k}={v!r}; "
                             "use a new --out, or --no-resume to start over in this folder")


def _param_groups(named, weight_decay: float, lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: weight decay on matrices only; ``lr_scale`` multiplies the schedule's rate for the group."""
    decay, rest = [], []
    for n, p in named:
        (decay if p.ndim >= 2 and "bias" not in n else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
            {"params": rest, "weight_decay": 0.0, "lr_scale": lr_scale}]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _device(name: str | None) -> torch.device:
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _loader(dataset, batch: int, shuffle: bool, workers: int, generator=None):
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=shuffle, generator=generator,
                                       num_workers=workers, collate_fn=collate, persistent_workers=False,
                                       prefetch_factor=2 if workers else None)


# ---------------------------------------------------------------------------------------------------- training
def train(cfg: PoseTrainConfig) -> dict:
    """Train (or resume) and return the summary written to ``train_summary.json``."""
    from tqdm import tqdm

    from ..curation.ntu import NTU_ACTIONS

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    device = _device(cfg.device)
    if cfg.phase == 2:
        cfg = phase2_config(cfg)
    elif cfg.phase != 1:
        raise ValueError(f"--phase {cfg.phase}: expected 1 (SkeletonCLIP) or 2 (with the CLIP video branch)")
    if not cfg.resume:
        for _, p in _checkpoints(out):
            shutil.rmtree(p)
        for name in ("metrics.jsonl", "skipped.jsonl", "train_config.json"):
            (out / name).unlink(missing_ok=True)
    _check_resume(out, cfg)
    atomic_write_json(out / "train_config.json", asdict(cfg))

    # data
    items, skipped_scan, duplicates = scan_ntu(cfg.data)
    if not items:
        raise ValueError(f"{cfg.data}: no NTU skeleton files (SsssCcccPpppRrrrAaaa.skeleton.npy / .skeleton) found")
    split: Split = make_split(items, cfg.split, len(NTU_ACTIONS), cfg.unseen_classes, cfg.seed)
    if not split.train:
        raise ValueError(f"{cfg.data}: the {cfg.split} split leaves no training samples ({split.info()})")
    skips = _Skips(out / "skipped.jsonl")
    skips.add(skipped_scan)
    images: dict[str, torch.Tensor] = {}
    if cfg.phase == 2:
        split, images = _phase2_data(cfg, split, skips, out, device)
    workers = cfg.workers if cfg.workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))
    train_ds = SkeletonDataset(split.train, cfg.frames, augment=cfg.augment, seed=cfg.seed)
    test_ds = SkeletonDataset(split.test, cfg.frames)
    test_loader = _loader(test_ds, cfg.batch, False, min(workers, len(split.test))) if split.test else None

    # text side: computed once, stored with the model
    names = list(NTU_ACTIONS)
    if cfg.resume and _stored_text_matches(out, cfg.clip, cfg.template, names):
        text, _ = load_text_embeddings(out)
    else:
        text = class_text_embeddings(cfg.clip, names, cfg.template, device)
        save_text_embeddings(out, text, names, cfg.clip, cfg.template)
    train_text = text[torch.tensor(split.train_classes) - 1].to(device)

    # model and optimizer
    torch.manual_seed(cfg.seed)
    if cfg.phase == 2:
        mcfg = replace(PoseEncoderConfig.load(cfg.init), dropout=cfg.dropout)
        if mcfg.projection_dim != text.shape[1]:
            raise ValueError(f"--init {cfg.init}: its embeddings have {mcfg.projection_dim} dimensions but the CLIP text "
                             f"embeddings of --clip {cfg.clip} have {text.shape[1]}; use the CLIP of the phase-1 run")
    else:
        mcfg = PoseEncoderConfig(layers=cfg.layers, width=cfg.width, heads=cfg.heads, stride=cfg.stride,
                                 tokens=cfg.tokens, dropout=cfg.dropout, projection_dim=text.shape[1])
    if cfg.frames % mcfg.stride:
        raise ValueError(f"--frames {cfg.frames} is not a multiple of the stride {mcfg.stride}")
    model = SkeletonCLIP(mcfg).to(device)
    phase2 = None
    if cfg.phase == 2:
        model.load_state_dict(load_pose_model(cfg.init, device).state_dict())
        phase2 = Phase2(cfg.alpha, text.shape[1], device, cfg.align)
        for name, part in (("train", split.train), ("test", split.test)):
            if part:
                phase2.set_images(name, part, images, device)
    groups = _param_groups(model.named_parameters(), cfg.weight_decay)
    if phase2 is not None:  # the video branch: a linear probe on frozen embeddings, at its own rate
        groups += _param_groups(phase2.head.named_parameters(), cfg.weight_decay, cfg.video_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    steps_per_epoch = math.ceil(len(split.train) / cfg.batch)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(total_steps, max(1, round(cfg.warmup_epochs * steps_per_epoch)))

    start_epoch, step = 0, 0
    ckpts = _checkpoints(out) if cfg.resume else []
    if ckpts:
        _, path = ckpts[-1]
        resumed = load_pose_model(path, device)
        model.load_state_dict(resumed.state_dict())
        if phase2 is not None:
            phase2.load(path)
        saved = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        if len(saved.get("param_groups", [])) != len(optimizer.param_groups):  # written by an older llavidal
            raise ValueError(f"{path}: its optimizer state has {len(saved.get('param_groups', []))} parameter groups, "
                             f"this run {len(optimizer.param_groups)} (a checkpoint of an older llavidal, whose "
                             "phase 2 trained the video branch at the encoder's rate); use a new --out, or "
                             "--no-resume to start over in this folder")
        optimizer.load_state_dict(saved)
        state = json.loads((path / "state.json").read_text())
        start_epoch, step = state["epoch"], state["step"]
        logged = {r.get("epoch") for r in read_jsonl(out / "metrics.jsonl")}
        if state.get("metrics") and state["epoch"] not in logged:  # killed between checkpoint and metrics row
            append_jsonl(out / "metrics.jsonl", [state["metrics"]])
        print(f"pose train: resuming from {path} (epoch {start_epoch}, step {step})")

    rows = read_jsonl(out / "metrics.jsonl")
    last = rows[-1] if rows else None
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        if phase2 is not None:
            phase2.head.train()
        torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout
        train_ds.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = _loader(train_ds, cfg.batch, True, min(workers, len(split.train)), gen)
        # running sums stay on the device (float64, as Python floats were): no host sync per step
        zero = torch.zeros((), dtype=torch.float64, device=device)
        loss_sum, correct, seen = zero.clone(), zero.clone(), 0
        sums = {k: zero.clone() for k in ("ce_video", "ce_pose", "mse", "pose_correct")}  # phase 2
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, dynamic_ncols=True)
        for batch in bar:
            skips.add_errors(split.train, batch["errors"])
            if batch["x"] is None:
                step += 1
                continue
            x = batch["x"].to(device)
            target = _positions(batch["label"], split.train_classes).to(device)
            lr = lr_at(step, total_steps, warmup, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if phase2 is not None:
                pose_cos, pose_scale = model.cosines(model.embed(x), train_text), model.scale()
                logits = pose_scale * pose_cos
                terms = phase2.losses(pose_cos, pose_scale, batch["index"], train_text, target)
                loss = terms["loss"]
                for k in ("ce_video", "ce_pose", "mse"):
                    sums[k] += terms[k].detach().double() * len(target)
                sums["pose_correct"] += (logits.argmax(1) == target).sum()
                logits = terms["video_logits"]  # the prediction at test time
            else:
                logits = model(x, train_text)
                loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if phase2 is not None:  # each branch clipped on its own: alpha = 0 leaves the pose encoder's steps alone
                torch.nn.utils.clip_grad_norm_(phase2.head.parameters(), 1.0)
            optimizer.step()
            step += 1
            loss_sum += loss.detach().double() * len(target)
            correct += (logits.argmax(1) == target).sum()
            seen += len(target)
            if cfg.progress:  # the bar's loss costs a host sync per step: only when the bar is shown
                bar.set_postfix(loss=f"{loss.item():.3f}")
        row = {"epoch": epoch + 1, "step": step, "lr": lr_at(max(0, step - 1), total_steps, warmup, cfg.lr),
               "train_loss": float(loss_sum) / seen if seen else None,
               "train_top1": int(correct) / seen if seen else None,
               "n_train": seen, "logit_scale": float(model.logit_scale.detach().exp())}
        if phase2 is not None and seen:
            row.update({f"train_{k}": float(sums[k]) / seen for k in ("ce_video", "ce_pose", "mse")},
                       train_pose_top1=int(sums["pose_correct"]) / seen,
                       video_logit_scale=float(phase2.head.logit_scale.detach().exp()))
        if test_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            gz = list(range(1, len(names) + 1)) if cfg.split == "zeroshot" else None
            row.update(evaluate(model, test_loader, text, split.test_classes, device, skips, gz, phase2))
            row["test_classes"] = len(split.test_classes)
        row["time_s"] = round(time.perf_counter() - t0, 3)
        state = {"epoch": epoch + 1, "step": step, "metrics": row}
        _save_checkpoint(out, model, optimizer, state, text, names, cfg, phase2)
        append_jsonl(out / "metrics.jsonl", [row])
        save_pose_model(model, out, {"epoch": epoch + 1})
        if phase2 is not None:
            phase2.save(out)
        last = row
        msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        print(f"pose train: {msg}", flush=True)

    summary = {
        "data": cfg.data, "out": str(out), "split": split.info(),
        "files_found": len(items) + len(skipped_scan) + len(duplicates), "duplicates_not_used": len(duplicates),
        "files_used": sum(1 for i in items if str(i.path) not in skips.this_run),
        "skipped": len(skips.this_run), "skipped_reasons": _reason_counts(skips.this_run),
        "phase": cfg.phase, "alpha": cfg.alpha if cfg.phase == 2 else None, "init": cfg.init,
        "epochs": cfg.epochs, "resumed_from_epoch": start_epoch, "steps": step, "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()), "model_config": mcfg.to_dict(),
        "last_metrics": last, "wall_s": round(time.perf_counter() - t_start, 3),
    }
    atomic_write_json(out / "train_summary.json", summary)
    if skips.this_run:
        print(f"pose train: {len(skips.this_run)} file(s) not used, listed in {out / 'skipped.jsonl'}")
    return summary


def phase2_config(cfg: PoseTrainConfig) -> PoseTrainConfig:
    """Phase 2 reads its encoder sizes from the phase-1 model it starts from (recorded in ``train_config.json``)."""
    if not cfg.init or not cfg.videos:
        raise ValueError("--phase 2 needs --init (the output folder of a phase-1 `llavidal pose train`) and --videos "
                         "(the clips' RGB videos, e.g. NTU's rgb/ folder)")
    if cfg.alpha < 0 or cfg.video_frames < 1 or not cfg.video_lr_scale >= 0:
        raise ValueError(f"--alpha must be >= 0, --video-frames >= 1 and --video-lr-scale >= 0, got {cfg.alpha}, "
                         f"{cfg.video_frames} and {cfg.video_lr_scale}")
    if cfg.align not in ALIGN_CHOICES:
        raise ValueError(f"--align {cfg.align!r}: expected one of {', '.join(ALIGN_CHOICES)}")
    if cfg.align == "video" and cfg.video_lr_scale == 0 and cfg.alpha > 0:
        raise ValueError("--align video with --video-lr-scale 0: the alignment term would train nothing (the video "
                         "branch is frozen); use --align pose or both, or a video learning rate above 0")
    init = PoseEncoderConfig.load(cfg.init)
    return replace(cfg, layers=init.layers, width=init.width, heads=init.heads, stride=init.stride, tokens=init.tokens)


def _phase2_data(cfg: PoseTrainConfig, split: Split, skips: _Skips, out: Path, device) -> tuple[Split, dict]:
    """The clips with an RGB video and its CLIP image embedding (the others are skipped and recorded)."""
    videos, missing = match_videos(split.train + split.test, cfg.videos)
    skips.add(missing)
    images, failed = cached_image_embeddings(out, cfg.clip, videos, cfg.video_frames, device, cfg.progress)
    skeleton_of = {str(v): it.path for it in split.train + split.test if (v := videos.get(it.stem)) is not None}
    skips.add([{"file": str(skeleton_of.get(f["file"], f["file"])), "reason": f"RGB video {f['reason']}"}
               for f in failed])
    split = replace(split, train=[i for i in split.train if i.stem in images],
                    test=[i for i in split.test if i.stem in images])
    if not split.train:
        raise ValueError(f"{cfg.videos}: none of the {cfg.split} training clips has a readable RGB video "
                         f"({len(missing)} without a video, {len(failed)} unreadable; {out / 'skipped.jsonl'})")
    return split, images


def _reason_counts(skipped: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in skipped.values():
        key = ("bad name" if reason.startswith("not an NTU")
               else "no tracked body" if "no tracked body" in reason
               else "no RGB video" if reason.startswith("no RGB video") else "unreadable")
        counts[key] = counts.get(key, 0) + 1
    return counts


def evaluate_folder(model_dir: str, data: str, split: str = "xsub", unseen=None, seed: int = 0, frames: int = 300,
                    batch: int = 32, device: str | None = None, workers: int = 0) -> dict:
    """``llavidal pose eval``: top-1/top-5 of a trained model on a split's test side (all of ``data`` with
    ``split="all"``). Zero-shot without ``unseen`` takes the held-out classes (and seed) from the training run's
    ``train_config.json``."""
    dev = _device(device)
    model = load_pose_model(model_dir, dev)
    text, names = load_text_embeddings(model_dir)
    items, skipped, _ = scan_ntu(data)
    if split == "zeroshot" and unseen is None:  # the held-out classes of the run that trained this model
        for cfg_path in (Path(model_dir) / "train_config.json", Path(model_dir).parent / "train_config.json"):
            if cfg_path.is_file():
                trained_cfg = json.loads(cfg_path.read_text())
                unseen, seed = trained_cfg.get("unseen_classes"), trained_cfg.get("seed", seed)
                break
    if split == "all":
        test, classes = items, list(range(1, len(names) + 1))
    else:
        s = make_split(items, split, len(names), unseen, seed)
        test, classes = s.test, s.test_classes
    if not test:
        raise ValueError(f"{data}: no test samples for split {split!r}")
    skips = _Skips(None)
    loader = _loader(SkeletonDataset(test, frames), batch, False, workers)
    gz = list(range(1, len(names) + 1)) if split == "zeroshot" else None
    result = evaluate(model, loader, text, classes, dev, skips, gz)
    result.update({"model": str(model_dir), "data": data, "split": split, "test_classes": len(classes),
                   "skipped": len(skipped) + len(skips.this_run),
                   "skipped_files": skipped + [{"file": f, "reason": r} for f, r in skips.this_run.items()]})
    return result

"""``llavidal quickstart --study long-video``: why long videos need the two-token representation, on synthetic data.

Long synthetic videos (:func:`llavidal.synthetic.make_long_dataset`, 2 minutes each) hold one brief event (one
second): early, on a frame the default sampler picks, or late, between two of its frames. The default sampler (100
frames spread uniformly, Video-ChatGPT's spatio-temporal rows) therefore sees early events and never late ones; the
two-token representation samples every second and sees both. The same tiny model is trained once per
representation on the same records, and held-out four-way multiple-choice questions ("What does the person do?") are
scored by option log-likelihood, split by early / late → ``results.json`` and a table (docs/benchmarks.md#long-video).
A third run trains the default representation on the early-event videos only (the ones whose event its sampler
sees): a control showing what it can learn when its training answers are never about events it cannot see (with
this small recipe, unreliably: see the docs for every seed measured).

The recipe is the quickstart's: stage 0 teaches a tiny random LLM, from text alone, to pick the event's word out of
a caption of up to 240 frame words (:func:`llavidal.synthetic.long_pretraining_text`; it stands in for a real LLM's
language), then, per run, stage 1 trains the video projector (and the two-token context module) on the videos with
the LLM frozen; all runs get identical settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

# run -> (video representation, training records)
RUNS = {"default": ("default", "train"), "two_token": ("two_token", "train"),
        "default_seen": ("default", "train_seen")}
NAMES = {"default": "default: 100 frames, spatio-temporal rows", "two_token": "two-token: 1 fps, content + context",
         "default_seen": "control: default, trained on early-event videos only"}


@dataclass
class LongVideoProofConfig:
    out: str = "quickstart-long"
    seed: int = 0
    n_train: int = 256
    n_test: int = 64
    seconds: int = 120
    noise: float = 0.25  # per-element noise of a frame's patch features (the event's or scene's direction: 1)
    lm_texts: int = 2000  # stage 0: text-only captions that teach the tiny LLM to pick the event's word out
    lm_epochs: int = 3
    lm_lr: float = 3e-3  # 5e-3 and 1e-2 never learnt to pick the word (the loss stays at the answer prior)
    epochs: int = 16  # stage 1, per run: projector-only training on the videos
    lr: float = 1e-2
    batch_size: int = 8
    hidden_size: int = 64
    layers: int = 2
    extra_args: list = field(default_factory=list)


def train_flags(cfg: LongVideoProofConfig, base: Path, data: dict, kind: str, out: Path,
                records: str = "train") -> list[str]:
    flags = ["--model_name_or_path", str(base), "--data_path", str(data[records]), "--output_dir", str(out),
             "--video_folder", str(data[f"{kind}_folder"]), "--training_mode", "projector",
             "--mm_use_vid_start_end", "True",
             "--num_train_epochs", str(cfg.epochs), "--learning_rate", str(cfg.lr), "--lr_scheduler_type", "cosine",
             "--warmup_ratio", "0.05", "--weight_decay", "0.0", "--per_device_train_batch_size", str(cfg.batch_size),
             "--seed", str(cfg.seed), "--logging_steps", "20", "--save_strategy", "no", "--report_to", "none",
             "--dataloader_num_workers", "0", "--use_cpu", "True", "--model_max_length", "2048"]
    if kind == "two_token":
        flags += ["--video_representation", "two_token", "--video_grid", "2", "--video_fps", "1"]
    return flags + list(cfg.extra_args)


def evaluate(model_dir: Path, data: dict, kind: str) -> dict:
    """Accuracy by when the event happens (early: on a frame of the default sampler; late: between its frames), by
    option log-likelihood."""
    from .features import load_feature
    from .inference import GenerationOptions, Query, option_logprobs
    from .model import load_pretrained

    model, tok = load_pretrained(model_dir, device="cpu", dtype=torch.float32)
    items = json.loads(Path(data["test"]).read_text())
    right: dict[str, list[bool]] = {}
    tokens = []
    for it in items:
        video = load_feature(Path(data[f"{kind}_folder"]) / it["video"], "video")
        scores = option_logprobs(model, tok, Query(it["question"], video=video), it["choices"],
                                 GenerationOptions(max_new_tokens=0))
        right.setdefault(it["when"], []).append(it["choices"][int(np.argmax(scores))] == it["answer"])
        tokens.append(2 * len(video) if kind == "two_token" else len(video))
    per_kind = {k: float(np.mean(v)) for k, v in right.items()}
    return {"accuracy": float(np.mean([x for v in right.values() for x in v])), "by_when": per_kind,
            "items": len(items), "video_tokens": int(np.mean(tokens))}


def caption_check(lm_dir: Path, n: int = 64, seed: int = 0, frames: tuple[int, int] = (90, 240)) -> float:
    """Accuracy of the stage-0 LLM on held-out captions (every one naming its event), scored as the test items are:
    the text-only version of the question the videos ask, the ceiling of what stage 1 can reach."""
    from .inference import GenerationOptions, Query, option_logprobs
    from .model import load_pretrained
    from .synthetic import LONG_EVENTS, long_answer, long_choices, long_pretraining_text

    model, tok = load_pretrained(lm_dir, device="cpu", dtype=torch.float32)
    rng = np.random.default_rng(seed + 7)
    answers = [long_answer(e) for e in range(len(LONG_EVENTS))]
    right = []
    for rec in long_pretraining_text(n, seed=seed + 10_000, frames=frames, present=1.0):
        human, truth = (c["value"] for c in rec["conversations"])
        choices = [answers[e] for e in long_choices(answers.index(truth), rng)]
        scores = option_logprobs(model, tok, Query(human), choices, GenerationOptions(max_new_tokens=0))
        right.append(choices[int(np.argmax(scores))] == truth)
    return float(np.mean(right))


def run_long_video_proof(cfg: LongVideoProofConfig) -> dict:
    from .model.tiny import TinySpec, make_tiny
    from .synthetic import LongWorldSpec, long_pretraining_text, make_long_dataset
    from .train.train import train

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    spec = LongWorldSpec(seconds=cfg.seconds, noise=cfg.noise)
    base = out / "tiny-base"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=cfg.seed, spec=TinySpec(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
                                                     mm_hidden_size=spec.dim))
    data = make_long_dataset(out / "data", n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed, spec=spec)
    print(f"[long video] {cfg.n_train} training and {cfg.n_test} test videos of {cfg.seconds / 60:g} minutes in "
          f"{out / 'data'}")
    lm = out / "stage0-language"
    if not (lm / "train_summary.json").is_file():
        text = out / "data" / "pretrain_text.json"
        text.write_text(json.dumps(long_pretraining_text(cfg.lm_texts, seed=cfg.seed)))
        print("[long video] stage 0: language pre-training of the tiny LLM (text only, full fine-tune)")
        train(["--model_name_or_path", str(base), "--data_path", str(text), "--output_dir", str(lm),
               "--training_mode", "full", "--num_train_epochs", str(cfg.lm_epochs), "--learning_rate", str(cfg.lm_lr),
               "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05", "--weight_decay", "0.0",
               "--mm_use_vid_start_end", "True", "--per_device_train_batch_size", str(cfg.batch_size), "--seed",
               str(cfg.seed), "--logging_steps", "20", "--save_strategy", "no", "--report_to", "none",
               "--dataloader_num_workers", "0", "--use_cpu", "True"])
    captions = caption_check(lm, seed=cfg.seed)
    print(f"[long video] stage 0: {captions:.3f} on held-out captions of 90-240 words")
    details = {}
    for name, (kind, records) in RUNS.items():
        run = out / f"train-{name}"
        print(f"[long video] stage 1: projector-only training, {NAMES[name]}")
        train(train_flags(cfg, lm, data, kind, run, records))
        details[name] = evaluate(run, data, kind)
    results = {"chance": 0.25, "stage0_captions": captions, "details": details,
               "seconds": round(time.time() - t0, 1), "config": asdict(cfg), "world": asdict(spec)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    return results


def format_table(results: dict) -> str:
    rows = [("run", "video tokens", "early event (on one of the 100 frames)", "late event (between them)", "all")]
    for name in RUNS:
        d = results["details"][name]
        rows.append((NAMES[name], str(d["video_tokens"]), f"{d['by_when']['early']:.3f}",
                     f"{d['by_when']['late']:.3f}", f"{d['accuracy']:.3f}"))
    rows.append(("chance (4 options)", "-", "0.250", "0.250", "0.250"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    items = results["details"]["default"]["items"]
    head = f"held-out MCQ accuracy ({items} items, {results['seconds']} s)"
    if "stage0_captions" in results:
        head += f"; the stage-0 LLM on held-out captions: {results['stage0_captions']:.3f}"
    return "\n".join(["", head, *lines])


__all__ = ["NAMES", "RUNS", "LongVideoProofConfig", "caption_check", "evaluate", "format_table",
           "run_long_video_proof"]

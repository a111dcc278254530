"""``llavidal quickstart --study long-video``: why long videos need the two-token representation, on synthetic data.

Long synthetic videos (:func:`llavidal.synthetic.make_long_dataset`, 10 minutes each) hold two 2-second events
minutes apart: something eaten or drunk in the first third, something used in the last third. The default sampler
(100 frames spread uniformly, Video-ChatGPT's spatio-temporal rows) sees a frame of the early event but, by
construction, none of the late one; the two-token representation samples every second. The same tiny model is
trained twice on the same records, once per representation, and held-out multiple-choice questions about each event
are scored by option log-likelihood → ``results.json`` and a table (docs/benchmarks.md#long-video).

The recipe is the quickstart's: stage 0 teaches a tiny random LLM the words of the events from text alone
(:func:`llavidal.synthetic.long_pretraining_text`; it stands in for a real LLM's language), then, per
representation, stage 1 trains the video projector (and the two-token context module) on the videos with the LLM
frozen; both representations get identical settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

REPRESENTATIONS = ("default", "two_token")
NAMES = {"default": "default: 100 frames, spatio-temporal rows", "two_token": "two-token: 1 fps, content + context"}


@dataclass
class LongVideoProofConfig:
    out: str = "quickstart-long"
    seed: int = 0
    n_train: int = 64
    n_test: int = 32
    seconds: int = 600
    lm_texts: int = 1200  # stage 0: text-only conversations that teach the tiny LLM the words of the events
    lm_epochs: int = 5
    lm_lr: float = 3e-3
    epochs: int = 8  # stage 1, per representation: projector-only training on the videos
    lr: float = 1e-2
    batch_size: int = 8
    hidden_size: int = 64
    layers: int = 2
    extra_args: list = field(default_factory=list)


def train_flags(cfg: LongVideoProofConfig, base: Path, data: dict, kind: str, out: Path) -> list[str]:
    flags = ["--model_name_or_path", str(base), "--data_path", str(data["train"]), "--output_dir", str(out),
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
    """Accuracy per event kind (early event: seen by the default sampler; late: not) by option log-likelihood."""
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
        right.setdefault(it["kind"], []).append(it["choices"][int(np.argmax(scores))] == it["answer"])
        tokens.append(2 * len(video) if kind == "two_token" else len(video))
    per_kind = {k: float(np.mean(v)) for k, v in right.items()}
    return {"accuracy": float(np.mean([x for v in right.values() for x in v])), "by_event": per_kind,
            "items": len(items), "video_tokens": int(np.mean(tokens))}


def run_long_video_proof(cfg: LongVideoProofConfig) -> dict:
    from .model.tiny import TinySpec, make_tiny
    from .synthetic import LongWorldSpec, long_pretraining_text, make_long_dataset
    from .train.train import train

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    spec = LongWorldSpec(seconds=cfg.seconds)
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
    details = {}
    for kind in REPRESENTATIONS:
        run = out / f"train-{kind}"
        print(f"[long video] stage 1: projector-only training on the {NAMES[kind]} representation")
        train(train_flags(cfg, lm, data, kind, run))
        details[kind] = evaluate(run, data, kind)
    results = {"chance": 0.25, "details": details, "seconds": round(time.time() - t0, 1), "config": asdict(cfg),
               "world": asdict(spec)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    return results


def format_table(results: dict) -> str:
    rows = [("representation", "video tokens", "early event (seen by 100 frames)", "late event (between them)",
             "all")]
    for kind in REPRESENTATIONS:
        d = results["details"][kind]
        rows.append((NAMES[kind], str(d["video_tokens"]), f"{d['by_event']['eat']:.3f}", f"{d['by_event']['use']:.3f}",
                     f"{d['accuracy']:.3f}"))
    rows.append(("chance (4 options)", "-", "0.250", "0.250", "0.250"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    items = results["details"]["default"]["items"]
    return "\n".join(["", f"held-out MCQ accuracy ({items} items, {results['seconds']} s)", *lines])


__all__ = ["LongVideoProofConfig", "evaluate", "format_table", "run_long_video_proof"]

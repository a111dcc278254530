"""``llavidal quickstart``: the whole method on a laptop CPU in minutes.

1. a tiny base model in the LLaVA-Lightening layout (``make-tiny``);
2. a synthetic ADL-X-style dataset in the real formats (:mod:`llavidal.synthetic`): each modality carries one
   attribute of the action that the others lack;
3. stage 0, language pre-training of the tiny LLM on text about that world (it stands in for the knowledge a
   real LLaMA brings; the LLM is frozen from then on);
4. MMPro: projector-only stage-1 runs (video, object, pose), merge, stage 2 (video + pose), merge, stage 3
   (all three), through the same code path as the published recipe;
5. held-out multiple-choice items (Smarthome-AR format) scored by option log-likelihood for the model of each
   single modality and the final all-modality model → ``results.json`` and a table.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .constants import PUBLISHED_MODALITIES


@dataclass
class QuickstartConfig:
    out: str = "quickstart"
    seed: int = 0
    n_train: int = 320
    n_test: int = 64
    video_rows: int = 36  # 4 "temporal" + 32 "spatial" rows; the published files have 356 (see --full-size)
    pose_rows: int = 32
    lm_epochs: int = 5
    lm_lr: float = 3e-3
    stage_epochs: int = 6
    stage_lr: float = 1e-2
    batch_size: int = 8
    hidden_size: int = 64
    layers: int = 2
    tokenization: str = "clean"  # ids at span boundaries in training (docs/design.md#template)


def _train(argv: list[str]) -> None:
    from .train.train import train

    train(argv)


def evaluate_mcq(model_dir: Path, test_file: Path, data: dict, modalities: list[str],
                 tokenization: str | None = None, attributes: tuple | None = None) -> dict:
    """Accuracy on Smarthome-AR-format items, each option scored by its log-likelihood given the features; also
    how often the chosen option has the right value of each attribute (room / motion / object). ``tokenization``:
    the ids at span boundaries (default: what the model was trained with). ``attributes``: (names, {option text:
    attribute values}) of another synthetic world."""
    from .features import load_feature
    from .inference import GenerationOptions, Query, option_logprobs
    from .model import load_pretrained
    from .synthetic import ACTIONS, ATTRIBUTES, action_name

    names, attributes_of = attributes or (ATTRIBUTES, {action_name(*a): a for a in ACTIONS})
    model, tok = load_pretrained(model_dir, device="cpu", dtype=torch.float32)
    items = json.loads(Path(test_file).read_text())
    correct, right_attr = 0, np.zeros(len(names))
    for key in sorted(items, key=int):
        it = items[key]
        feats = {m: load_feature(Path(data[f"{m}_folder"]) / it[f"{m}_file"], m) for m in modalities}
        options = [it["choices"][k] for k in sorted(it["choices"], key=int)]
        scores = option_logprobs(model, tok, Query(it["question"], **feats), options,
                                 GenerationOptions(max_new_tokens=0, tokenization=tokenization))
        chosen = options[int(np.argmax(scores))]
        correct += chosen == it["ground_truth"]
        right_attr += np.equal(attributes_of[chosen], attributes_of[it["ground_truth"]])
    n = len(items)
    return {"correct": int(correct), "items": n, "accuracy": correct / n,
            "attribute_accuracy": {a: float(v / n) for a, v in zip(names, right_attr)}}


def run_quickstart(cfg: QuickstartConfig) -> dict:
    from .model.tiny import TinySpec, make_tiny
    from .synthetic import WorldSpec, make_dataset, pretraining_text
    from .train.mmpro import MMProConfig, run_mmpro

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    base = out / "tiny-base"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=cfg.seed, spec=TinySpec(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers))
    data = make_dataset(out / "data", n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed,
                        spec=WorldSpec(video_rows=cfg.video_rows, pose_rows=cfg.pose_rows))
    print(f"[quickstart] data: {cfg.n_train} training videos, {cfg.n_test} held-out MCQ items in {out / 'data'}")

    common = ["--per_device_train_batch_size", str(cfg.batch_size), "--seed", str(cfg.seed), "--logging_steps", "20",
              "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
              "--disable_tqdm", "False", "--use_cpu", "True", "--tokenization", cfg.tokenization]
    lm = out / "stage0-language"
    if not (lm / "train_summary.json").is_file():
        text = out / "data" / "pretrain_text.json"
        text.write_text(json.dumps(pretraining_text(n=1200, seed=cfg.seed)))
        print("[quickstart] stage 0: language pre-training of the tiny LLM (text only, full fine-tune)")
        _train(["--model_name_or_path", str(base), "--data_path", str(text), "--output_dir", str(lm),
                "--training_mode", "full", "--num_train_epochs", str(cfg.lm_epochs), "--learning_rate",
                str(cfg.lm_lr), "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05", "--weight_decay", "0.0",
                "--mm_use_vid_start_end", "True", *common])

    mm_flags = ["--num_train_epochs", str(cfg.stage_epochs), "--learning_rate", str(cfg.stage_lr),
                "--warmup_ratio", "0.05", *common]
    stages = run_mmpro(MMProConfig(base=str(lm), data_path=str(data["train"]),
                                   folders={m: str(data[f"{m}_folder"]) for m in PUBLISHED_MODALITIES},
                                   output_dir=str(out / "mmpro"), extra_args=mm_flags))

    print("[quickstart] evaluating held-out multiple-choice items (option log-likelihood)")
    evaluated = {
        "video": (stages["stage1-video"], ["video"]),
        "object": (stages["stage1-object"], ["object"]),
        "pose": (stages["stage1-pose"], ["pose"]),
        "all": (stages["stage3-video-object-pose"], list(PUBLISHED_MODALITIES)),
    }
    details = {k: evaluate_mcq(Path(d), data["test"], data, mods) for k, (d, mods) in evaluated.items()}
    results = {
        "chance": 0.25,
        "accuracy": {k: v["accuracy"] for k, v in details.items()},
        "attribute_accuracy": {k: v["attribute_accuracy"] for k, v in details.items()},
        "items": cfg.n_test,
        "details": details,
        "seconds": round(time.time() - t0, 1),
        "config": asdict(cfg),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    return results


def format_table(results: dict) -> str:
    from .synthetic import ATTRIBUTES

    rows = [("model", "modalities at test", "MCQ accuracy", *(f"{a} right" for a in ATTRIBUTES))]
    names = {"video": "stage 1 video", "object": "stage 1 object", "pose": "stage 1 pose",
             "all": "MMPro final (stage 3)"}
    mods = {"video": "video", "object": "object", "pose": "pose", "all": "video+object+pose"}
    for k in ("video", "object", "pose", "all"):
        attr = results["attribute_accuracy"][k]
        rows.append((names[k], mods[k], f"{results['accuracy'][k]:.3f}", *(f"{attr[a]:.2f}" for a in ATTRIBUTES)))
    rows.append(("chance (4 options)", "-", f"{results['chance']:.3f}", *("-" for _ in ATTRIBUTES)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(["", f"held-out MCQ accuracy ({results['items']} items, {results['seconds']} s)", *lines,
                      "", "(room is seen in the video, motion in the pose, the object in the object features)"])


__all__ = ["QuickstartConfig", "evaluate_mcq", "run_quickstart"]

#!/usr/bin/env python
"""Evaluation throughput: batched vs unbatched generation, and option log-likelihood vs generate-then-parse.

Issue item "Evaluation" (throughput): (a) samples/s of generate-then-parse multiple-choice evaluation at batch 8
vs batch 1 on the tiny model (goal: **>= 3x**); (b) log-likelihood MCQ scoring (``option_logprobs``, one forward
per item over its options) vs generate-then-parse: time per item, agreement of the chosen letters, and the
accuracy of each against the ground truth.

Model and data (one of):

default
    ``llavidal.quickstart.run_quickstart`` is run once into ``--work`` (a temporary folder unless given; an
    existing finished quickstart there is reused): a tiny base, stage-0 language pre-training, MMPro stages 1-3
    on the synthetic ADL world (:mod:`llavidal.synthetic`). The model is its final stage,
    ``mmpro/stage3-video-object-pose``, the items ``data/test_mcq.json`` (Smarthome-AR format) and the features
    ``data/{video,object,pose}_features``. A trained model gives meaningful, EOS-terminated answers, so the
    generation lengths are those of a real evaluation (about 13 tokens here). About 2-3 minutes on 2 CPU cores.
``--model DIR --qa-file F --features DIR``
    Reuse an existing quickstart output (or any Smarthome-AR file with features). ``--features`` is a folder
    holding ``video_features/``, ``object_features/``, ``pose_features/`` (a folder without them is taken as the
    video feature folder). Video features are found as ``llavidal eval run`` finds them (by the item's video file
    name); object and pose features by the record's ``object_file`` / ``pose_file`` fields (synthetic items
    carry them), else by the video name. ``--modalities`` restricts what is given.
``--quick``
    The untrained tiny base (``llavidal.model.tiny.make_tiny``) on freshly written synthetic items: seconds to
    set up, but its replies are noise that never stops before ``--max-new-tokens`` and parses to nothing, so only
    the timing means anything.

What is timed (all through the package's public functions, as ``llavidal.eval.runner.run_items`` calls them):

``generate bN``
    ``answer_batch(model, tok, queries, GenerationOptions(max_new_tokens, temperature=0), batch_size=N)`` over
    the N items, queries built as the runner builds them (``item.prompt``, i.e. question + instruction +
    ``(A) ... (D) ...``, and feature *paths*, so loading the pickles is included), then
    ``llavidal.eval.mcq.parse_item_reply`` on every reply (parsing is included in the time; it is ~0.1 ms).
``generate bN q`` (N the largest batch size; ``--no-question-row`` skips it)
    As ``generate bN`` but the prompt is the bare question (``item.question``, no choices listed), which is what
    the quickstart model was trained on and what ``loglik`` conditions on. It separates the effect of the prompt
    from the effect of the scoring method in the agreement figures.
``loglik``
    ``option_logprobs(model, tok, Query(item.question, ...), options)`` per item (the runner's ``--mcq-mode
    loglik``: the bare question, the options scored as the assistant's reply; the item's options go through the
    model as one batch), argmax -> letter.

Every mode goes over all items once per round; ``--rounds`` rounds, modes in rotating order, after one untimed
warm-up pass over the first batch of items; figures are medians over rounds (samples/s = items / seconds).
The ratio b8/b1 is given from the medians and as the median of per-round ratios (the modes of one round run back
to back, so drift of a shared machine mostly cancels). Replies of every round are compared with the first
round's (greedy decoding must be deterministic) and batch-N replies with batch-1 replies (left padding must not
change answers).

Breakdown (hooks that add microseconds): ``model.generate`` is wrapped to record the prompt lengths (attention
mask), the padded prompt length, the decode steps of each batch (new ids' width) and each reply's length up to
and including ``</s>``; forward pre/post hooks time every forward call, the first one of a ``generate`` being
the prefill. So the time of a batch splits into: outside ``generate`` (feature loading + prompt building in
``prepare_inputs``, decoding to text, parsing), prefill forward, decode forwards, and the rest of ``generate``
(HF's loop: logits processors, stopping criteria, cache bookkeeping). ``--profile`` adds a cProfile table of one
batch-1 pass and one batch-8 pass over the first 8 items.

No speed asserts: the goal lives in docs/benchmarks.md, this script only measures (exit status 0).

Examples::

    python bench/bench_eval.py --threads 1 --json /tmp/bench_eval.json          # quickstart + bench, ~4 min
    python bench/bench_eval.py --threads 1 --model /tmp/qs/mmpro/stage3-video-object-pose \\
        --qa-file /tmp/qs/data/test_mcq.json --features /tmp/qs/data
    python bench/bench_eval.py --quick --threads 1 --items 32 --rounds 2
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import machine_info

from llavidal.constants import PUBLISHED_MODALITIES
from llavidal.eval.mcq import grade, parse_item_reply
from llavidal.eval.runner import find_feature
from llavidal.eval.tasks import EvalItem, load_task
from llavidal.inference import GenerationOptions, Query, answer_batch, option_logprobs

GOAL_RATIO = 3.0


# ---------------------------------------------------------------------------------------------------- setup
def setup_quickstart(args) -> tuple[Path, Path, Path, dict]:
    """Run (or reuse) the quickstart in ``args.work``; returns model dir, qa file, features dir and info."""
    from llavidal.quickstart import QuickstartConfig, run_quickstart

    work = Path(args.work)
    final = work / "mmpro" / "stage3-video-object-pose"
    info: dict = {"source": "quickstart", "work": str(work)}
    if (work / "results.json").is_file() and (final / "config.json").is_file():
        info["reused"] = True
        info["quickstart_results"] = json.loads((work / "results.json").read_text()).get("accuracy")
    else:
        t0 = time.perf_counter()
        results = run_quickstart(QuickstartConfig(out=str(work), seed=args.seed))
        info["reused"] = False
        info["quickstart_seconds"] = round(time.perf_counter() - t0, 1)
        info["quickstart_results"] = results["accuracy"]
    return final, work / "data" / "test_mcq.json", work / "data", info


def setup_quick(args) -> tuple[Path, Path, Path, dict]:
    """The untrained tiny base and freshly written synthetic MCQ items."""
    from llavidal.model.tiny import make_tiny
    from llavidal.synthetic import WorldSpec, make_dataset

    work = Path(args.work)
    base = work / "tiny-base"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=args.seed)
    data = work / "data"
    if not (data / "test_mcq.json").is_file():
        make_dataset(data, n_train=0, n_test=args.items or 64, seed=args.seed,
                     spec=WorldSpec(video_rows=36, pose_rows=32))
    return base, data / "test_mcq.json", data, {"source": "untrained tiny base (--quick)", "work": str(work)}


@dataclass
class Item:
    item: EvalItem
    feats: dict[str, Path]


def load_items(qa_file: Path, features: Path, modalities: list[str], limit: int | None) -> tuple[list[Item], dict]:
    items, problems = load_task("smarthome-ar", qa_file)
    raw = json.loads(Path(qa_file).read_text())
    folders = {m: features / f"{m}_features" for m in PUBLISHED_MODALITIES}
    if not folders["video"].is_dir():  # a plain feature folder: video features only, as ``--feature-dir``
        folders = {"video": features, "object": None, "pose": None}
    out, missing = [], 0
    for it in items:
        rec = raw.get(it.id, {}) if isinstance(raw, dict) else {}
        feats = {}
        for m in modalities:
            folder = folders.get(m)
            if folder is None:
                continue
            named = rec.get(f"{m}_file")
            p = folder / named if named and (folder / named).is_file() else find_feature(folder, it.video)
            if p is not None:
                feats[m] = p
        if "video" in modalities and "video" not in feats:
            missing += 1
            continue
        out.append(Item(it, feats))
    if limit:
        out = out[:limit]
    given = {m: sum(m in x.feats for x in out) for m in PUBLISHED_MODALITIES}
    return out, {"items_in_file": len(items) + len(problems), "unreadable": len(problems),
                 "missing_video": missing, "items": len(out), "features_given": given}


# ---------------------------------------------------------------------------------------------------- hooks
@dataclass
class Probe:
    """Counters filled by the generate wrapper and the forward hooks."""

    eos_id: int
    pad_id: int
    gen_calls: int = 0
    gen_s: float = 0.0
    fwd_calls: int = 0
    fwd_s: float = 0.0
    prefill_s: float = 0.0
    in_generate: bool = False
    first_fwd: bool = False
    batches: list[dict] = field(default_factory=list)
    _t: float = 0.0

    def reset(self) -> None:
        self.gen_calls = self.fwd_calls = 0
        self.gen_s = self.fwd_s = self.prefill_s = 0.0
        self.batches = []


def install_probe(model, tokenizer) -> Probe:
    probe = Probe(eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    inner = model.generate

    def generate(*a, **kw):
        mask = kw.get("attention_mask")
        probe.in_generate, probe.first_fwd = True, True
        t0 = time.perf_counter()
        try:
            new = inner(*a, **kw)
        finally:
            probe.in_generate = False
        probe.gen_s += time.perf_counter() - t0
        probe.gen_calls += 1
        lens = []
        for row in new.tolist():
            n = len(row)
            if probe.eos_id in row:
                n = row.index(probe.eos_id) + 1
            lens.append(n)
        probe.batches.append({
            "batch": new.shape[0], "steps": new.shape[1], "reply_tokens": lens,
            "prompt_tokens": mask.sum(1).tolist() if mask is not None else None,
            "padded_prompt": int(mask.shape[1]) if mask is not None else None,
            "stopped": sum(probe.eos_id in row for row in new.tolist()),
        })
        return new

    model.generate = generate

    def pre(_m, _a):
        probe._t = time.perf_counter()

    def post(_m, _a, _o):
        dt = time.perf_counter() - probe._t
        probe.fwd_calls += 1
        probe.fwd_s += dt
        if probe.in_generate and probe.first_fwd:
            probe.prefill_s += dt
            probe.first_fwd = False

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)
    return probe


# ---------------------------------------------------------------------------------------------------- modes
def run_generate(model, tok, items: list[Item], opts: GenerationOptions, batch: int,
                 question_only: bool = False) -> list[dict]:
    queries = [Query(x.item.question if question_only else x.item.prompt, **x.feats) for x in items]
    replies = answer_batch(model, tok, queries, opts, batch_size=batch)
    out = []
    for x, r in zip(items, replies):
        p = parse_item_reply(x.item, r)
        out.append({"reply": r, "letter": p.letter, "method": p.method})
    return out


def run_loglik(model, tok, items: list[Item], opts: GenerationOptions) -> list[dict]:
    out = []
    for x in items:
        letters = sorted(x.item.options)
        scores = option_logprobs(model, tok, Query(x.item.question, **x.feats), [x.item.options[k] for k in letters],
                                 opts)
        out.append({"letter": letters[max(range(len(letters)), key=scores.__getitem__)], "method": "loglik"})
    return out


def run(args) -> dict:
    from llavidal.model import load_pretrained

    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_setup = time.perf_counter()
    if args.model:
        if not (args.qa_file and args.features):
            raise SystemExit("--model needs --qa-file and --features")
        model_dir, qa_file, features = Path(args.model), Path(args.qa_file), Path(args.features)
        info = {"source": "given"}
    elif args.quick:
        model_dir, qa_file, features, info = setup_quick(args)
    else:
        model_dir, qa_file, features, info = setup_quickstart(args)
    if args.threads:  # the quickstart's trainer may change it
        torch.set_num_threads(args.threads)
    info["setup_seconds"] = round(time.perf_counter() - t_setup, 1)

    model, tok = load_pretrained(model_dir, device=args.device, dtype=torch.float32 if args.device == "cpu" else None)
    model.eval()
    items, data_info = load_items(qa_file, features, args.modalities, args.items)
    if not items:
        raise SystemExit(f"no item of {qa_file} has video features under {features}")
    n = len(items)
    opts = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=0.0, seed=args.seed)
    ll_opts = GenerationOptions(max_new_tokens=0)
    probe = install_probe(model, tok)

    modes = {f"generate b{b}": (lambda b=b, xs=None: run_generate(model, tok, xs or items, opts, b))
             for b in args.batch_sizes}
    if args.question_row:
        bq = max(args.batch_sizes)
        modes[f"generate b{bq} q"] = lambda xs=None: run_generate(model, tok, xs or items, opts, bq, True)
    modes["loglik"] = lambda xs=None: run_loglik(model, tok, xs or items, ll_opts)
    names = list(modes)

    warm = items[:max(args.batch_sizes)]
    for name in names:  # untimed warm-up
        modes[name](xs=warm)

    times: dict[str, list[float]] = {k: [] for k in names}
    outputs: dict[str, list[dict]] = {}
    stable: dict[str, bool] = {k: True for k in names}
    breakdown: dict[str, dict] = {}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            probe.reset()
            with torch.inference_mode():
                t0 = time.perf_counter()
                res = modes[name]()
                dt = time.perf_counter() - t0
            times[name].append(dt)
            if name not in outputs:
                outputs[name] = res
            elif [x["letter"] for x in res] != [x["letter"] for x in outputs[name]] or \
                    [x.get("reply") for x in res] != [x.get("reply") for x in outputs[name]]:
                stable[name] = False
            bd = {"total_s": dt, "generate_s": probe.gen_s, "forward_s": probe.fwd_s, "prefill_s": probe.prefill_s,
                  "forward_calls": probe.fwd_calls, "generate_calls": probe.gen_calls, "batches": probe.batches}
            breakdown.setdefault(name, []).append(bd)
        if args.verbose:
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k}={n / times[k][-1]:.1f}/s" for k in names),
                  flush=True)

    # ---------------------------------------------------------------- figures
    res: dict[str, dict] = {}
    for name in names:
        ts = times[name]
        med = statistics.median(ts)
        # the breakdown of the round whose time is the median (closest)
        bd = min(breakdown[name], key=lambda b: abs(b["total_s"] - med))
        row = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "rounds": len(ts),
               "samples_per_s": n / med, "ms_per_item": 1e3 * med / n, "deterministic": stable[name]}
        row["ms_per_item_outside_generate"] = 1e3 * (bd["total_s"] - bd["generate_s"]) / n
        row["ms_per_item_forward"] = 1e3 * bd["forward_s"] / n
        row["forward_calls"] = bd["forward_calls"]
        if bd["generate_calls"]:
            batches = bd["batches"]
            reply = [t for b in batches for t in b["reply_tokens"]]
            steps = [b["steps"] for b in batches]
            prompts = [t for b in batches for t in (b["prompt_tokens"] or [])]
            padded = sum(b["padded_prompt"] * b["batch"] for b in batches if b["padded_prompt"])
            row.update({
                "ms_per_item_prefill": 1e3 * bd["prefill_s"] / n,
                "ms_per_item_decode_forward": 1e3 * (bd["forward_s"] - bd["prefill_s"]) / n,
                "ms_per_item_generate_loop": 1e3 * (bd["generate_s"] - bd["forward_s"]) / n,
                "ms_per_decode_step": 1e3 * (bd["forward_s"] - bd["prefill_s"]) / max(1, sum(steps) - len(steps)),
                "ms_per_prefill": 1e3 * bd["prefill_s"] / len(batches),
                "generate_calls": len(batches),
                "mean_reply_tokens": statistics.mean(reply),
                "max_reply_tokens": max(reply),
                "replies_stopped_by_eos": sum(b["stopped"] for b in batches),
                "decode_steps_total": sum(steps),
                "decode_steps_per_item": sum(steps) / n,
                # row-steps computed (batch x steps) per reply token actually wanted
                "row_steps_per_reply_token": sum(b["batch"] * b["steps"] for b in batches) / sum(reply),
                "mean_prompt_tokens": statistics.mean(prompts) if prompts else None,
                "prompt_padding_pct": 100.0 * (padded - sum(prompts)) / padded if padded else None,
            })
        res[name] = row

    truth = [x.item.answer for x in items]
    letters = {k: [o["letter"] for o in v] for k, v in outputs.items()}
    acc = {}
    for k, ls in letters.items():
        grades = [grade(a, l) for a, l in zip(truth, ls)]
        acc[k] = {"correct": grades.count("correct"), "wrong": grades.count("wrong"),
                  "unparsed": grades.count("unparsed"), "accuracy": grades.count("correct") / n}
    methods = {k: {m: [o["method"] for o in v].count(m) for m in sorted({o["method"] for o in v})}
               for k, v in outputs.items()}
    b1, bmax = f"generate b{args.batch_sizes[0]}", f"generate b{args.batch_sizes[-1]}"

    def agree(a, b):
        return sum(x == y for x, y in zip(letters[a], letters[b])) / n

    agreement = {f"{b1} vs loglik": agree(b1, "loglik"), f"{bmax} vs loglik": agree(bmax, "loglik"),
                 **({f"{bmax} q vs loglik": agree(f"{bmax} q", "loglik")} if f"{bmax} q" in letters else {}),
                 f"{b1} vs {bmax} (letters)": agree(b1, bmax),
                 f"{b1} vs {bmax} (identical replies)":
                     sum(x["reply"] == y["reply"] for x, y in zip(outputs[b1], outputs[bmax])) / n}
    both_parsed = [i for i in range(n) if letters[b1][i] is not None]
    agreement[f"{b1} vs loglik, parsed replies only"] = (
        sum(letters[b1][i] == letters["loglik"][i] for i in both_parsed) / len(both_parsed) if both_parsed else None)

    ratio = res[bmax]["samples_per_s"] / res[b1]["samples_per_s"]
    ratios = {f"b{b}": res[f"generate b{b}"]["samples_per_s"] / res[b1]["samples_per_s"] for b in args.batch_sizes}
    paired = statistics.median(a / b for a, b in zip(times[b1], times[bmax]))
    best = min(times[b1]) / min(times[bmax])
    examples = [{"id": x.item.id, "answer": x.item.answer, "generate": outputs[b1][i]["reply"],
                 "parsed": letters[b1][i], "loglik": letters["loglik"][i]} for i, x in enumerate(items[:3])]
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "model_dir": str(model_dir), "qa_file": str(qa_file), "features": str(features), "setup": info,
        "data": data_info, "modalities": args.modalities,
        "model": {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                          "vocab_size")},
        "params": sum(p.numel() for p in model.parameters()),
        "max_new_tokens": args.max_new_tokens, "batch_sizes": args.batch_sizes, "rounds": args.rounds,
        "device": args.device, "machine": machine_info(), "loadavg_start": load_start,
        "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "results": res, "accuracy": acc, "parse_methods": methods, "agreement": agreement,
        "ratio": ratio, "ratios_vs_smallest": ratios, "ratio_paired": paired, "ratio_best": best,
        "goal_ratio": GOAL_RATIO,
        "loglik_vs_generate_b1_time": res["loglik"]["median_s"] / res[b1]["median_s"],
        "loglik_vs_generate_bmax_time": res["loglik"]["median_s"] / res[bmax]["median_s"],
        "examples": examples,
    }


def report(r: dict) -> str:
    res = r["results"]
    b1, bmax = f"generate b{r['batch_sizes'][0]}", f"generate b{r['batch_sizes'][-1]}"
    m = r["machine"]
    lines = [
        f"command: {r['command']}",
        f"model {r['model_dir']} {r['model']} ({r['params'] / 1e6:.2f} M params); setup: {r['setup']['source']}"
        + (f" ({r['setup'].get('quickstart_seconds')} s)" if r["setup"].get("quickstart_seconds") else ""),
        f"items: {r['data']['items']} from {r['qa_file']} (features given: {r['data']['features_given']}; "
        f"missing video {r['data']['missing_video']})",
        f"device {r['device']} ({m['processor']}, {m['torch_threads']} threads), torch {m['torch']}, "
        f"transformers {m['transformers']}; greedy, max_new_tokens {r['max_new_tokens']}; median of {r['rounds']} "
        f"rounds" + (f"; load average {r['loadavg_start'][0]:.2f} -> {r['loadavg_end'][0]:.2f}"
                     if r["loadavg_start"] else ""),
        "",
        f"{'mode':<14} {'samples/s':>9} {'ms/item':>8} {'min s':>7} {'max s':>7} {'accuracy':>8} {'unparsed':>8} "
        f"{'reply tok':>9} {'steps/item':>10} {'determ.':>7}",
    ]
    for name, v in res.items():
        a = r["accuracy"][name]
        lines.append(
            f"{name:<14} {v['samples_per_s']:>9.1f} {v['ms_per_item']:>8.1f} {v['min_s']:>7.2f} {v['max_s']:>7.2f} "
            f"{a['accuracy']:>8.3f} {a['unparsed']:>8d} "
            f"{v.get('mean_reply_tokens', float('nan')):>9.1f} {v.get('decode_steps_per_item', float('nan')):>10.2f} "
            f"{'yes' if v['deterministic'] else 'NO':>7}")
    lines += ["", "time per item (ms), median round:",
              f"{'mode':<14} {'outside gen':>11} {'prefill':>8} {'decode fwd':>10} {'gen loop':>8} "
              f"{'ms/step':>7} {'ms/prefill':>10} {'prompt tok':>10} {'prompt pad %':>12} {'row-steps/tok':>13}"]
    for name, v in res.items():
        if "ms_per_item_prefill" in v:
            lines.append(
                f"{name:<14} {v['ms_per_item_outside_generate']:>11.2f} {v['ms_per_item_prefill']:>8.2f} "
                f"{v['ms_per_item_decode_forward']:>10.2f} {v['ms_per_item_generate_loop']:>8.2f} "
                f"{v['ms_per_decode_step']:>7.2f} {v['ms_per_prefill']:>10.2f} {v['mean_prompt_tokens']:>10.1f} "
                f"{v['prompt_padding_pct']:>12.1f} {v['row_steps_per_reply_token']:>13.2f}")
        else:
            lines.append(f"{name:<14} {v['ms_per_item_outside_generate']:>11.2f} "
                         f"(forward {v['ms_per_item_forward']:.2f} ms/item, {v['forward_calls']} forwards)")
    met = "met" if r["ratio"] >= r["goal_ratio"] else "NOT met"
    lines += [
        "",
        f"batch {r['batch_sizes'][-1]} vs batch {r['batch_sizes'][0]}: {r['ratio']:.2f}x samples/s "
        f"(goal >= {r['goal_ratio']:.0f}x: {met}); median of per-round ratios {r['ratio_paired']:.2f}x, "
        f"best-of-rounds {r['ratio_best']:.2f}x",
        *([f"all batch sizes vs batch {r['batch_sizes'][0]}: "
           + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios_vs_smallest"].items())]
          if len(r["batch_sizes"]) > 2 else []),
        f"loglik time / {b1} time: {r['loglik_vs_generate_b1_time']:.2f}; loglik / {bmax}: "
        f"{r['loglik_vs_generate_bmax_time']:.2f}",
        "agreement: " + "; ".join(f"{k} {v:.3f}" for k, v in r["agreement"].items() if v is not None),
        "parse methods: " + "; ".join(f"{k}: {v}" for k, v in r["parse_methods"].items()),
        f"example: {r['examples'][0]}",
    ]
    return "\n".join(lines)


def profile(args) -> None:
    """cProfile of one batch-1 pass and one batch-N pass over the first N items."""
    from llavidal.model import load_pretrained

    if args.model:
        model_dir, qa_file, features = Path(args.model), Path(args.qa_file), Path(args.features)
    elif args.quick:
        model_dir, qa_file, features, _ = setup_quick(args)
    else:
        model_dir, qa_file, features, _ = setup_quickstart(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_pretrained(model_dir, device=args.device, dtype=torch.float32 if args.device == "cpu" else None)
    model.eval()
    bmax = args.batch_sizes[-1]
    items, _ = load_items(qa_file, features, args.modalities, bmax)
    opts = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=0.0, seed=args.seed)
    for b in args.batch_sizes:
        run_generate(model, tok, items, opts, b)  # warm
        pr = cProfile.Profile()
        pr.enable()
        run_generate(model, tok, items, opts, b)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(args.profile_rows)
        print(f"==== generate, batch {b}, {len(items)} items")
        print(s.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (with --qa-file and --features); default: run the quickstart")
    ap.add_argument("--qa-file", help="Smarthome-AR-format MCQ file")
    ap.add_argument("--features", help="folder with video_features/ object_features/ pose_features/")
    ap.add_argument("--quick", action="store_true", help="untrained tiny base, no quickstart (timing only)")
    ap.add_argument("--work", help="folder for the quickstart / --quick files (default: a temporary folder)")
    ap.add_argument("--modalities", default="video,object,pose", help="modalities given to the model")
    ap.add_argument("--items", type=int, default=None, help="only the first N items (default: all)")
    ap.add_argument("--batch-sizes", default="1,8", help="generation batch sizes, smallest first (default 1,8)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-question-row", dest="question_row", action="store_false",
                    help="skip the 'generate bN q' row (the bare question as prompt, no choices listed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--profile", action="store_true", help="print cProfile tables of batch-1 and batch-N passes")
    ap.add_argument("--profile-rows", type=int, default=30)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.batch_sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    args.modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if not args.work and not args.model:
            args.work = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_eval_"))
        if args.profile:
            profile(args)
            return 0
        r = run(args)
    print(report(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

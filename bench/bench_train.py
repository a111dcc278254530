#!/usr/bin/env python
"""Training throughput of llavidal's trainer vs a bare PyTorch loop, data-loading rate and peak memory.

Issue item "Benchmarks" (training): (a) tokens/s of ``llavidal.train.train.train`` in projector mode vs (b) a
bare PyTorch loop over the same model and the same batches (goal: trainer >= 0.85 x bare), (c) data-loading
samples/s vs the training step rate (goal >= 5x), (d) peak memory; on a GPU (e) 7B-shaped projector-only
training at seq 2048 in bf16: tokens/s, MFU (goal >= 35 % on H100) and peak memory.

CPU / small GPU presets (``tiny``, ``small``): a tiny base folder is written with ``llavidal.model.tiny.make_tiny``
and a synthetic ADL-X dataset in the published formats with ``llavidal.synthetic.make_dataset`` (video
[356, 1024] float16, pose [256, 216], objects [n, 8, 512] pickles; ``--video-rows``/``--pose-rows`` shrink them).

``trainer``
    ``llavidal.train.train.train(argv)`` exactly as ``llavidal train`` runs it (projector mode,
    ``--tune_mm_mlp_adapter True --mm_use_vid_start_end True``, constant lr, ``--save_strategy no``,
    ``--report_to none``, ``--disable_tqdm True``, huge ``--logging_steps``). Two hooks are swapped into the
    module for the duration of the call and change nothing the trainer does: a ``LlavidalTrainer`` subclass that
    adds a callback stamping ``time.perf_counter()`` at every ``on_step_end`` (after the optimizer step and
    ``zero_grad``) and counts the non-pad tokens of each batch, and an ``ADLXDataset`` subclass that records the
    sample indices in the order the trainer's data loader asks for them.
``bare``
    The same model (``build_model`` with the same parsed flags), the same ``ADLXDataset`` and ``DataCollator``,
    a ``torch.utils.data.DataLoader`` whose batch sampler replays the trainer's recorded index lists (same
    batches, same order, same batch size, same ``num_workers``), ``torch.optim.AdamW`` with the trainer's
    hyper-parameters (lr, betas, eps, weight decay 0) and no schedule: ``forward -> backward -> step ->
    zero_grad``. No gradient clipping, no callbacks.
``bare_cached``
    As ``bare`` but over batches collated once before the loop: the model + optimizer alone, without data
    loading. ``trainer - bare`` is the trainer's own overhead; ``bare - bare_cached`` is the data-loading share.

Timing: a run stamps the end of every optimizer step; the first ``--warmup`` steps are dropped and the run's
steady-state rate is (tokens of the remaining steps) / (time from the end of step ``warmup`` to the end of the
last step), so it includes everything between two steps (fetching + collating the next batch, forward,
backward, clipping, optimizer, callbacks). An untimed trainer run comes first (it records the batches and warms
the process up); then the variants are interleaved run by run in rotating order over ``--rounds`` rounds; the figures are medians over rounds, and the ratio is also given as the median of per-round
ratios and as a best-of-rounds figure (every run trains on the same batches in the same order, so each step's
minimum over the runs is taken, then tokens / summed minima): the noise-robust estimates on a shared machine.
Within every run the forward + backward of each step is timed as well (trainer: its whole ``training_step``,
i.e. also ``model.train()`` and input preparation; synchronised on CUDA), so the time per step *outside*
forward + backward (next batch fetched and collated, clipping, optimizer, scheduler, ``zero_grad``, callbacks)
is known within each run, free of the drift between runs: trainer minus bare of that figure is the trainer's own
machinery, bare minus bare_cached the data loading.

Data loading: the ``ADLXDataset`` + ``DataCollator`` through a ``DataLoader`` (batch size as training, random
order) without the model, ``num_workers`` 0 and 2, from the pickle folders and from memory-mapped stores
(``llavidal.data.store.pack_folder``); samples/s after the first batch (worker start-up reported apart), vs the
trainer's steady-state samples/s.

Peak memory: on CPU the process's peak RSS (VmHWM) during each run, reset before it through
``/proc/self/clear_refs`` (Linux; elsewhere ``resource.getrusage`` ru_maxrss, which never goes down), plus
``RUSAGE_CHILDREN`` for DataLoader workers; on CUDA ``torch.cuda.max_memory_allocated``.

GPU, ``--preset 7b --device cuda --dtype bf16``: LLaMA-7B shape (hidden 4096, 32 layers, 32 heads, inter 11008,
vocab 32012, modality tokens = last 9 ids), random init directly on the GPU in bf16 (no base folder), projector
mode (``llavidal.train.modes.set_trainable``, as ``build_model``), dense rows of
``--seq-len`` (2048) real tokens: back-to-back ADL-X-shaped samples (system + question + video/object/pose
spans + answer) filled up with text, so no token is padding. Variants ``trainer`` (``LlavidalTrainer`` with
``--bf16`` over an in-memory dataset of those samples and the ``DataCollator``) and ``bare`` (same model,
batches and optimizer, under the same bf16 autocast). MFU uses

    FLOPs/token (projector-only) = 4 N + 12 L T d

with N the parameters that multiply activations (decoder layers + lm_head; the embedding lookup and the
projectors are left out): forward 2N, backward 2N for the activation gradients only (the LLM weights are frozen:
no weight-gradient matmuls), plus attention scores QK^T and AV (4 L T d forward, 8 L T d backward, no causal
halving, as in PaLM's MFU) with L layers, T = seq len, d = hidden. ``--grad-ckpt`` recomputation is not counted
(MFU, not HFU). Full fine-tuning would be 6 N + 12 L T d. Peak: H100/H200 SXM dense bf16 989 TFLOP/s (H100 PCIe
756, A100 312), or ``--peak-tflops``. ``--dry-run`` runs this path on the CPU with a tiny config (hidden 64,
2 layers) to check that it constructs and steps; its figures mean nothing.

No speed asserts: goals are judged in docs/benchmarks.md; the script only measures (exit status 0).

Examples::

    PYTHONPATH=. python bench/bench_train.py --preset tiny --threads 1 --json /tmp/bench_train_tiny.json
    PYTHONPATH=. python bench/bench_train.py --preset small --threads 1 --rounds 1 --steps 3 --warmup 1
    PYTHONPATH=. python bench/bench_train.py --preset 7b --dry-run
    PYTHONPATH=. python bench/bench_train.py --preset 7b --device cuda --dtype bf16 --json bench_train_7b.json
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import re
import resource
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path
import torch
from _common import ANSWER_TOKENS, MODEL_SHAPES, PEAK_TFLOPS, QUESTION_TOKENS, SYSTEM_TOKENS, dtypes, machine_info

from llavidal.constants import (
    ADDED_TOKENS,
    DEFAULT_POSE_TOKENS,
    DEFAULT_VIDEO_TOKENS,
    IGNORE_INDEX,
    OBJECT_FRAMES,
    PUBLISHED_MODALITIES,
)
from llavidal.train.modes import set_trainable

# ---------------------------------------------------------------------------------------------------- presets
# tiny and small train through make_tiny folders: their vocabulary is a sentencepiece size (the tiny tokenizer tops
# out near 1.8 k pieces); 7b builds the model directly, with dense rows of seq_len 2048
PRESETS = {
    "tiny": {**MODEL_SHAPES["tiny"], "sp_vocab_size": 1000, "batch": 4, "steps": 10, "warmup": 3, "rounds": 3},
    "small": {**MODEL_SHAPES["small"], "sp_vocab_size": 4000, "batch": 2, "steps": 4, "warmup": 1, "rounds": 1},
    "7b": {**MODEL_SHAPES["7b"], "batch": 2, "steps": 10, "warmup": 3, "rounds": 2, "seq_len": 2048},
}
for _p in ("tiny", "small"):
    del PRESETS[_p]["vocab_size"]
# the 7b path's stand-in for --dry-run on a CPU
DRY_RUN_SHAPE = dict(MODEL_SHAPES["tiny"])
DTYPES = dtypes()
LR = 2e-5  # the published recipe's learning rate (no schedule here: constant)


# ---------------------------------------------------------------------------------------------------- memory
def _vm_hwm_bytes() -> int | None:
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _vm_rss_bytes() -> int | None:
    try:
        m = re.search(r"VmRSS:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _ru_maxrss_bytes(who=resource.RUSAGE_SELF) -> int:
    r = resource.getrusage(who).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or the CPU process's peak RSS (reset before the block)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = self.start = self.children = None
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            self._reset = _reset_hwm()
            self.start = _vm_rss_bytes() or _ru_maxrss_bytes()
            self.method = "VmHWM (reset via clear_refs)" if self._reset else "ru_maxrss (process lifetime)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = (_vm_hwm_bytes() if self._reset else None) or _ru_maxrss_bytes()
        self.children = _ru_maxrss_bytes(resource.RUSAGE_CHILDREN)

    def as_dict(self) -> dict:
        mib = lambda b: None if b is None else b / 2 ** 20  # noqa: E731
        return {"peak_mib": mib(self.peak), "start_mib": mib(self.start), "method": self.method,
                "children_peak_rss_mib": mib(self.children)}


# ---------------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepLog:
    """End-of-step stamps and the tokens of each step's batch; the steady-state figures of one run."""

    def __init__(self):
        self.t_begin: float | None = None  # start of the training loop (first batch not yet fetched)
        self.ends: list[float] = []
        self.tokens: list[int] = []  # non-pad tokens per step
        self.padded: list[int] = []  # B x L per step
        self.samples: list[int] = []
        self.fb: list[float] = []  # forward + backward of each step (trainer: the whole training_step)
        self.indices: list[int] = []  # dataset indices in the order they were asked for
        self.threads: int | None = None

    def add_batch(self, batch: dict) -> None:
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.padded.append(int(batch["input_ids"].numel()))
        self.samples.append(int(batch["input_ids"].shape[0]))

    def summary(self, warmup: int) -> dict:
        n = len(self.ends)
        if n <= warmup:
            raise SystemExit(f"only {n} steps were stamped; need more than --warmup {warmup}")
        t0 = self.ends[warmup - 1] if warmup > 0 else self.t_begin
        t1 = self.ends[-1]
        steps = n - warmup
        stamps = ([self.t_begin] if warmup == 0 else []) + self.ends[max(warmup - 1, 0):]
        per_step = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
        tok = sum(self.tokens[warmup:n])
        fb = self.fb[warmup:n]
        outside = [a - b for a, b in zip(per_step, fb)]
        return {
            "fwd_bwd_ms_median": 1e3 * statistics.median(fb) if fb else None,
            "outside_ms_median": 1e3 * statistics.median(outside) if outside else None,
            "steps": steps, "seconds": t1 - t0, "step_ms_mean": 1e3 * (t1 - t0) / steps,
            "step_ms_median": 1e3 * statistics.median(per_step), "step_ms_min": 1e3 * min(per_step),
            "tokens_per_s": tok / (t1 - t0), "padded_tokens_per_s": sum(self.padded[warmup:n]) / (t1 - t0),
            "samples_per_s": sum(self.samples[warmup:n]) / (t1 - t0),
            "tokens_per_step": tok / steps, "first_steps_ms": [1e3 * x for x in self._first(warmup)],
            "torch_threads": self.threads, "per_step_s": per_step, "steady_tokens": self.tokens[warmup:n],
            "steady_samples": self.samples[warmup:n],
        }

    def _first(self, warmup: int) -> list[float]:
        st = [self.t_begin] + self.ends[:warmup]
        return [b - a for a, b in zip(st[:-1], st[1:])] if self.t_begin is not None else []


# ---------------------------------------------------------------------------------------------------- workspace
class Workspace:
    """The tiny base folder, the synthetic dataset and (on demand) its memory-mapped stores."""

    def __init__(self, args, root: Path):
        from llavidal.model.tiny import TinySpec, make_tiny
        from llavidal.synthetic import WorldSpec, make_dataset

        p = PRESETS[args.preset]
        self.root = root
        t = time.perf_counter()
        spec = TinySpec(hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
                        num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
                        sp_vocab_size=p["sp_vocab_size"])
        self.base = make_tiny(root / "base", seed=args.seed, spec=spec)
        data = make_dataset(root / "data", n_train=args.n_train, n_test=0, seed=args.seed,
                            spec=WorldSpec(video_rows=args.video_rows, pose_rows=args.pose_rows))
        self.train_json = data["train"]
        self.folders = {m: data[f"{m}_folder"] for m in ("video", "object", "pose")}
        self._stores: dict[str, Path] | None = None
        self.setup_s = time.perf_counter() - t
        self.runs = 0

    def stores(self) -> dict[str, Path]:
        if self._stores is None:
            from llavidal.data.store import pack_folder

            with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
                self._stores = {}
                for m, f in self.folders.items():
                    pack_folder(f, self.root / f"store_{m}", modality=m)
                    self._stores[m] = self.root / f"store_{m}"
        return self._stores

    def argv(self, args, max_steps: int) -> list[str]:
        self.runs += 1
        out = self.root / f"out_{self.runs}"
        argv = [
            "--model_name_or_path", str(self.base), "--data_path", str(self.train_json),
            "--video_folder", str(self.folders["video"]), "--object_folder", str(self.folders["object"]),
            "--pose_folder", str(self.folders["pose"]), "--output_dir", str(out),
            "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end", "True", "--version", "v1",
            "--per_device_train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1",
            "--max_steps", str(max_steps), "--learning_rate", str(LR), "--weight_decay", "0.",
            "--lr_scheduler_type", "constant", "--save_strategy", "no", "--report_to", "none",
            "--logging_steps", "1000000", "--disable_tqdm", "True", "--auto_resume", "False",
            "--model_max_length", "2048", "--dataloader_num_workers", str(args.trainer_workers),
            "--seed", str(args.seed), "--attn_implementation", args.attn,
        ]
        if args.dtype == "bf16":
            argv += ["--bf16", "True"]
        elif args.dtype == "fp16":
            argv += ["--fp16", "True"]
        if args.grad_ckpt:
            argv += ["--gradient_checkpointing", "True"]
        if args.device == "cpu" and torch.cuda.is_available():
            argv += ["--use_cpu", "True"]
        return argv + list(args.train_flag or [])


# ---------------------------------------------------------------------------------------------------- (a) trainer
def _timed_trainer_class(base_cls, log: StepLog, device: torch.device):
    from transformers import TrainerCallback

    class _Stamp(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            sync(device)
            log.threads = torch.get_num_threads()
            log.t_begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            log.ends.append(time.perf_counter())

    class TimedTrainer(base_cls):
        def __init__(self, *a, **kw):
            kw["callbacks"] = list(kw.get("callbacks") or []) + [_Stamp()]
            super().__init__(*a, **kw)

        def training_step(self, model, inputs, num_items_in_batch=None):
            log.add_batch(inputs)  # on CUDA: the queue is empty here (on_step_end synced), so no real wait
            t0 = time.perf_counter()
            loss = super().training_step(model, inputs, num_items_in_batch)
            sync(device)
            log.fb.append(time.perf_counter() - t0)
            return loss

    return TimedTrainer


def _recording_dataset_class(base_cls, log: StepLog):
    class RecordingDataset(base_cls):
        def __getitem__(self, index):
            log.indices.append(int(index))
            return super().__getitem__(index)

    return RecordingDataset


def run_trainer(args, ws: Workspace) -> dict:
    """One ``llavidal.train.train.train`` call; returns its steady-state figures and recorded batches."""
    import llavidal.train.train as tm

    device = torch.device(args.device)
    log = StepLog()
    saved = tm.LlavidalTrainer, tm.ADLXDataset
    tm.LlavidalTrainer = _timed_trainer_class(saved[0], log, device)
    tm.ADLXDataset = _recording_dataset_class(saved[1], log)
    out = io.StringIO()
    try:
        with PeakMemory(device) as mem, contextlib.redirect_stdout(sys.stdout if args.verbose else out):
            t0 = time.perf_counter()
            tm.train(ws.argv(args, args.warmup + args.steps))
            wall = time.perf_counter() - t0
    finally:
        tm.LlavidalTrainer, tm.ADLXDataset = saved
    r = log.summary(args.warmup)
    r.update(wall_s=wall, setup_s=(log.t_begin - t0) if log.t_begin else None, memory=mem.as_dict())
    B = args.batch
    idx = log.indices[: B * (args.warmup + args.steps)]
    r["batches"] = [idx[i:i + B] for i in range(0, len(idx), B)] if args.trainer_workers == 0 else None
    return r


# ---------------------------------------------------------------------------------------------------- (b) bare loop
def _bare_setup(args, ws: Workspace, argv: list[str]):
    from llavidal.data import ADLXDataset, DataIssueLog, read_records
    from llavidal.train.arguments import parse_args
    from llavidal.train.train import build_model, unwrap

    model_args, data_args, training_args = parse_args(argv)
    import transformers

    transformers.set_seed(training_args.seed)
    model, tokenizer, _ = build_model(model_args, data_args, training_args)
    device = torch.device(args.device)
    model.to(device)
    if training_args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs)
    dataset = ADLXDataset(read_records(data_args.data_path), tokenizer, unwrap(model).config, data_args.folders(),
                          missing=data_args.missing_features, mask_probs=data_args.mask_probs(),
                          max_length=training_args.model_max_length, template=model_args.template(),
                          system=model_args.system_prompt, seed=training_args.seed, issue_log=DataIssueLog())
    return model, tokenizer, dataset, training_args


def _autocast(args, device: torch.device):
    if args.dtype in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=DTYPES[args.dtype])
    return contextlib.nullcontext()


def bare_loop(model, batches, device: torch.device, args, log: StepLog) -> None:
    """forward -> backward -> AdamW step -> zero_grad over ``batches`` (an iterable of collated dicts)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.0)
    model.train()
    sync(device)
    log.threads = torch.get_num_threads()
    log.t_begin = time.perf_counter()
    for batch in batches:
        log.add_batch(batch)
        t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(args, device):
            loss = model(**batch).loss
        loss.backward()
        sync(device)
        log.fb.append(time.perf_counter() - t0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        log.ends.append(time.perf_counter())


def run_bare(args, ws: Workspace, batches: list[list[int]], cached: bool) -> dict:
    from torch.utils.data import DataLoader

    from llavidal.data import DataCollator

    device = torch.device(args.device)
    log = StepLog()
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        model, tokenizer, dataset, _ = _bare_setup(args, ws, ws.argv(args, args.warmup + args.steps))
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=DataCollator(tokenizer.pad_token_id),
                            num_workers=args.trainer_workers)
        if cached:
            loader = list(loader)
        setup = time.perf_counter() - t0
        bare_loop(model, loader, device, args, log)
        wall = time.perf_counter() - t0
    r = log.summary(args.warmup)
    r.update(wall_s=wall, setup_s=setup, memory=mem.as_dict())
    del model, loader, dataset
    gc.collect()
    return r


# ---------------------------------------------------------------------------------------------------- (c) loading
def run_loading(args, ws: Workspace, tokenizer, config, source: str, workers: int) -> dict:
    from torch.utils.data import DataLoader, RandomSampler

    from llavidal.data import ADLXDataset, DataCollator, DataIssueLog, read_records

    folders = ws.stores() if source == "store" else ws.folders
    ds = ADLXDataset(read_records(ws.train_json), tokenizer, config, folders, seed=args.seed,
                     issue_log=DataIssueLog())
    g = torch.Generator().manual_seed(args.seed)
    n = args.load_samples
    loader = DataLoader(ds, batch_size=args.batch, sampler=RandomSampler(ds, num_samples=n, generator=g),
                        collate_fn=DataCollator(tokenizer.pad_token_id), num_workers=workers)
    with PeakMemory(torch.device("cpu")) as mem:
        t0 = time.perf_counter()
        it = iter(loader)
        first = next(it)
        t1 = time.perf_counter()
        count = 0
        for b in it:
            count += b["input_ids"].shape[0]
        t2 = time.perf_counter()
        del it
    return {"source": source, "workers": workers, "samples": count + first["input_ids"].shape[0],
            "first_batch_s": t1 - t0, "samples_per_s": count / (t2 - t1) if count else float("nan"),
            "memory": mem.as_dict()}


# ---------------------------------------------------------------------------------------------------- CPU presets
def rotate(names: list[str], i: int) -> list[str]:
    return names[i % len(names):] + names[:i % len(names)]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def aggregate(runs: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Per variant: medians over runs, and the best-of-rounds rate (each step's minimum over the runs: every run
    of every variant trains on the same batches in the same order). Returns (results, ratios vs bare)."""
    res = {}
    for v, rs in runs.items():
        n = min(len(r["per_step_s"]) for r in rs)
        best = [min(r["per_step_s"][i] for r in rs) for i in range(n)]
        toks, samples = rs[0]["steady_tokens"][:n], rs[0]["steady_samples"][:n]
        res[v] = {
            "tokens_per_s": med([r["tokens_per_s"] for r in rs]),
            "tokens_per_s_best": sum(toks) / sum(best),
            "padded_tokens_per_s": med([r["padded_tokens_per_s"] for r in rs]),
            "samples_per_s": med([r["samples_per_s"] for r in rs]),
            "samples_per_s_best": sum(samples) / sum(best),
            "step_ms_mean": med([r["step_ms_mean"] for r in rs]),
            "step_ms_median": med([r["step_ms_median"] for r in rs]),
            "step_ms_best": 1e3 * sum(best) / n,
            "fwd_bwd_ms": med([r["fwd_bwd_ms_median"] for r in rs]),
            "outside_ms": med([r["outside_ms_median"] for r in rs]),
            "tokens_per_s_runs": [r["tokens_per_s"] for r in rs],
            "tokens_per_step": rs[0]["tokens_per_step"],
            "same_batches": all(r["steady_tokens"] == rs[0]["steady_tokens"] for r in rs),
            "setup_s": med([r.get("setup_s") for r in rs]), "wall_s": med([r.get("wall_s") for r in rs]),
            "peak_mib": max(r["memory"]["peak_mib"] for r in rs),
            "start_mib": med([r["memory"]["start_mib"] for r in rs]),
            "memory_method": rs[0]["memory"]["method"],
            "torch_threads": rs[0]["torch_threads"],
        }
    same = all(r["steady_tokens"] == runs["trainer"][0]["steady_tokens"] for rs in runs.values() for r in rs)
    tr, ba = runs["trainer"], runs["bare"]
    ratios = {
        "ratio_trainer_vs_bare": res["trainer"]["tokens_per_s"] / res["bare"]["tokens_per_s"],
        "ratio_paired": med([a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(tr, ba)]),
        "ratio_best": res["trainer"]["tokens_per_s_best"] / res["bare"]["tokens_per_s_best"],
        "same_batches_all_variants": same,
    }
    return res, ratios


def run_cpu_presets(args) -> dict:
    from llavidal.model import load_pretrained

    device = torch.device(args.device)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="bench_train_", dir=args.tmp) as tmp:
        ws = Workspace(args, Path(tmp))
        variants = ["trainer", "bare"] + ([] if args.no_cached else ["bare_cached"])
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        # an untimed trainer run first: records the batches (index lists) the bare loops replay, and warms the
        # process (page cache, allocator arenas, lazy imports) so that no variant pays for a cold start
        warm = run_trainer(args, ws)
        batches = warm["batches"]
        if batches is None:
            raise SystemExit("--trainer-workers > 0: the trainer's batches cannot be recorded")
        for rnd in range(args.rounds):
            for v in rotate(variants, rnd):
                if v == "trainer":
                    r = run_trainer(args, ws)
                    if r["batches"] != batches:
                        print("note: the trainer's batch order differs between runs", file=sys.stderr)
                else:
                    r = run_bare(args, ws, batches, cached=(v == "bare_cached"))
                r.pop("batches", None)
                runs[v].append(r)
                if args.verbose:
                    print(f"round {rnd} {v:<12} {r['tokens_per_s']:9.0f} tok/s  step {r['step_ms_mean']:8.1f} ms "
                          f"(median {r['step_ms_median']:.1f})  peak {r['memory']['peak_mib']:.0f} MiB",
                          file=sys.stderr)

        # (c) data loading, interleaved over rounds
        loading = []
        if not args.skip_loading:
            model, tokenizer = load_pretrained(ws.base, device="cpu", dtype=torch.float32)
            config = model.config
            config.mm_use_vid_start_end, config.use_modality_string_prefix = True, False  # as build_model sets
            del model
            combos = [(s, w) for w in args.load_workers for s in ("files", "store")]
            res: dict[tuple, list[dict]] = {c: [] for c in combos}
            for rnd in range(args.load_rounds):
                for c in rotate(combos, rnd):
                    res[c].append(run_loading(args, ws, tokenizer, config, *c))
            for (s, w), rs in res.items():
                loading.append({"source": s, "workers": w, "samples_per_s": med([r["samples_per_s"] for r in rs]),
                                "samples_per_s_all": [r["samples_per_s"] for r in rs],
                                "first_batch_s": med([r["first_batch_s"] for r in rs]),
                                "peak_rss_mib": max(r["memory"]["peak_mib"] for r in rs),
                                "children_peak_rss_mib": max(r["memory"]["children_peak_rss_mib"] or 0 for r in rs)})
        setup_s, n_records = ws.setup_s, args.n_train
        base_cfg = json.loads((ws.base / "config.json").read_text())
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None

    res, ratios = aggregate(runs)
    train_sps = res["trainer"]["samples_per_s"]
    for ld in loading:
        ld["x_training_rate"] = ld["samples_per_s"] / train_sps
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "preset": args.preset, "device": args.device, "dtype": args.dtype, "attn": args.attn,
        "grad_ckpt": args.grad_ckpt, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "trainer_workers": args.trainer_workers,
        "model": {k: base_cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "vocab_size")},
        "feature_rows": {"video": args.video_rows, "pose": args.pose_rows}, "n_records": n_records,
        "setup_s": setup_s, "results": res, **ratios, "ratio_goal": 0.85, "loading": loading, "loading_goal_x": 5.0, "training_samples_per_s": train_sps,
        "machine": machine_info(device), "loadavg_start": load_start, "loadavg_end": load_end,
    }


# ---------------------------------------------------------------------------------------------------- 7B on GPU
def build_synthetic_model(shape: dict, device: torch.device, dtype: torch.dtype, attn: str, grad_ckpt: bool,
                          seq_len: int, seed: int):
    from llavidal.model import LlavidalConfig, LlavidalForCausalLM

    vocab = shape["vocab_size"]
    cfg = LlavidalConfig(
        vocab_size=vocab, hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        max_position_embeddings=max(2048, seq_len), rms_norm_eps=1e-6,
        mm_hidden_size=1024, object_hidden_size=512, pose_hidden_size=216, mm_use_vid_start_end=True,
        modality_token_ids={t: vocab - len(ADDED_TOKENS) + i for i, t in enumerate(ADDED_TOKENS)},
        use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavidalForCausalLM._from_config(cfg, attn_implementation=attn, dtype=dtype)
    set_trainable(model, "projector", PUBLISHED_MODALITIES)  # what build_model does (trainable parts in fp32)
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def make_dense_items(cfg, n_items: int, seq_len: int, video_rows: int, pose_rows: int, seed: int) -> list[dict]:
    """Items as ADLXDataset returns them, each exactly ``seq_len`` real tokens: back-to-back ADL-X-shaped samples
    (system + question + video/object/pose spans + answer), the remainder filled with supervised text."""
    g = torch.Generator().manual_seed(seed)
    tid = cfg.token_id
    n_text = cfg.vocab_size - len(ADDED_TOKENS) - 3
    text = lambda n: torch.randint(3, n_text, (n,), generator=g)  # noqa: E731
    items = []
    for i in range(n_items):
        ids, labels, vids, objs, poses = [torch.tensor([1])], [torch.tensor([IGNORE_INDEX])], [], [], []
        n = 1
        k = 0
        while True:
            n_obj = 1 + (i + k) % 3
            block = SYSTEM_TOKENS + QUESTION_TOKENS + (video_rows + 2) + (OBJECT_FRAMES * n_obj + 2) \
                + (pose_rows + 2) + ANSWER_TOKENS
            if n + block > seq_len:
                break
            prompt = torch.cat([
                text(SYSTEM_TOKENS + QUESTION_TOKENS),
                torch.tensor([tid("<vid_start>")] + [tid("<vid_patch>")] * video_rows + [tid("<vid_end>")]),
                torch.tensor([tid("<object_start>")] + [tid("<object_patch>")] * (OBJECT_FRAMES * n_obj)
                             + [tid("<object_end>")]),
                torch.tensor([tid("<pose_start>")] + [tid("<pose_patch>")] * pose_rows + [tid("<pose_end>")]),
            ])
            answer = torch.cat([text(ANSWER_TOKENS - 1), torch.tensor([2])])
            ids += [prompt, answer]
            labels += [torch.full_like(prompt, IGNORE_INDEX), answer]
            vids.append((0.05 * torch.randn(video_rows, cfg.mm_hidden_size, generator=g)).half())
            objs.append(0.05 * torch.randn(n_obj, OBJECT_FRAMES, cfg.object_hidden_size, generator=g))
            poses.append(0.05 * torch.randn(pose_rows, cfg.pose_hidden_size, generator=g))
            n += block
            k += 1
        fill = text(seq_len - n)
        ids.append(fill)
        labels.append(fill)
        item = {"input_ids": torch.cat(ids), "labels": torch.cat(labels),
                "video": torch.cat(vids) if vids else None, "object": torch.cat(objs) if objs else None,
                "pose": torch.cat(poses) if poses else None}
        assert item["input_ids"].numel() == seq_len
        items.append(item)
    return items


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict], log: StepLog | None = None):
        self.items, self.log = items, log

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if self.log is not None:
            self.log.indices.append(int(i))
        return self.items[i]


def flops_per_token(model, seq_len: int, projector_only: bool = True) -> dict:
    cfg = model.config
    n_matmul = sum(p.numel() for p in model.model.layers.parameters()) + model.lm_head.weight.numel()
    attn = 12 * cfg.num_hidden_layers * seq_len * cfg.hidden_size
    lin = (4 if projector_only else 6) * n_matmul
    return {"n_matmul_params": n_matmul, "linear": lin, "attention": attn, "total": lin + attn}


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"--peak-tflops {override}"
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_TFLOPS:
        if key in name:
            return tf * 1e12, f"{name}: {tf:g} TFLOP/s dense bf16"
    return None, f"{name}: unknown peak, pass --peak-tflops"


def run_7b(args) -> dict:
    from llavidal.data import DataCollator
    from llavidal.train.arguments import TrainingArguments
    from llavidal.train.train import LlavidalTrainer

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    shape = {k: PRESETS["7b"][k] for k in DRY_RUN_SHAPE} if not args.dry_run else dict(DRY_RUN_SHAPE)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    with PeakMemory(device) as mem_build:
        model = build_synthetic_model(shape, device, dtype, args.attn, args.grad_ckpt, args.seq_len, args.seed)
    build_s = time.perf_counter() - t0
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_items = args.batch * (args.warmup + args.steps)
    items = make_dense_items(cfg, n_items, args.seq_len, args.video_rows, args.pose_rows, args.seed)
    collator = DataCollator(pad_token_id=0)
    fl = flops_per_token(model, args.seq_len)
    peak, peak_src = peak_flops(device, args.peak_tflops)

    def one_trainer(tmp: str) -> dict:
        log = StepLog()
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
            max_steps=args.warmup + args.steps, learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant",
            save_strategy="no", report_to="none", logging_steps=10 ** 6, disable_tqdm=True, seed=args.seed,
            bf16=args.dtype == "bf16", fp16=args.dtype == "fp16", dataloader_num_workers=0,
            use_cpu=device.type == "cpu", auto_resume=False,
            **(dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
               if args.grad_ckpt else {}))
        cls = _timed_trainer_class(LlavidalTrainer, log, device)
        with PeakMemory(device) as mem, contextlib.redirect_stdout(sys.stdout if args.verbose else io.StringIO()):
            trainer = cls(model=model, args=targs, train_dataset=ListDataset(items, log), data_collator=collator,
                          mode="projector", modalities=["video", "object", "pose"], base_path="")
            trainer.train()
        r = log.summary(args.warmup)
        r["memory"] = mem.as_dict()
        B = args.batch
        idx = log.indices[: B * (args.warmup + args.steps)]
        r["batches"] = [idx[i:i + B] for i in range(0, len(idx), B)]
        del trainer
        return r

    def one_bare(batches) -> dict:
        from torch.utils.data import DataLoader

        log = StepLog()
        with PeakMemory(device) as mem:
            loader = DataLoader(ListDataset(items), batch_sampler=batches, collate_fn=collator)
            bare_loop(model, loader, device, args, log)
        r = log.summary(args.warmup)
        r["memory"] = mem.as_dict()
        return r

    runs: dict[str, list[dict]] = {"trainer": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="bench_train_7b_", dir=args.tmp) as tmp:
        batches = one_trainer(tmp)["batches"]  # untimed: records the batches, warms kernels and allocator
        model.zero_grad(set_to_none=True)
        for rnd in range(args.rounds):
            for v in (["trainer", "bare"] if rnd % 2 == 0 else ["bare", "trainer"]):
                if v == "trainer":
                    r = one_trainer(tmp)
                    r.pop("batches")
                else:
                    r = one_bare(batches)
                runs[v].append(r)
                model.zero_grad(set_to_none=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if args.verbose:
                    print(f"round {rnd} {v:<8} {r['tokens_per_s']:9.0f} tok/s  step {r['step_ms_mean']:8.1f} ms",
                          file=sys.stderr)
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    res, ratios = aggregate(runs)
    for x in res.values():
        tps = x["tokens_per_s"]
        x.update(tflops=tps * fl["total"] / 1e12, tflops_4n=tps * fl["linear"] / 1e12,
                 mfu=(tps * fl["total"] / peak) if peak else None, mfu_4n=(tps * fl["linear"] / peak) if peak else None)
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "preset": "7b" + (" (dry run: tiny config)" if args.dry_run else ""), "dry_run": args.dry_run,
        "device": args.device, "dtype": args.dtype, "attn": args.attn, "grad_ckpt": args.grad_ckpt,
        "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "model": shape, "params": n_params, "trainable_params": n_train,
        "feature_rows": {"video": args.video_rows, "pose": args.pose_rows},
        "build_s": build_s, "build_peak_mib": mem_build.as_dict()["peak_mib"],
        "flops_per_token": fl, "peak_flops": peak, "peak_source": peak_src, "mfu_goal": 0.35,
        "results": res, **ratios, "ratio_goal": 0.85, "machine": machine_info(device), "loadavg_start": load_start, "loadavg_end": load_end,
    }


# ---------------------------------------------------------------------------------------------------- report
def _fmt(x, spec=".0f", none="-"):
    return none if x is None else format(x, spec)


def report(r: dict) -> str:
    m = r["machine"]
    mem_unit = "peak alloc MiB" if r["device"] == "cuda" else "peak RSS MiB"
    lines = [f"command: {r['command']}"]
    if "n_records" in r:
        lines.append(f"preset {r['preset']}: {r['model']}; batch {r['batch']}, feature rows video {r['feature_rows']['video']} "
                     f"pose {r['feature_rows']['pose']}, {r['n_records']} records")
    else:
        lines.append(f"preset {r['preset']}: {r['model']}; {r['params'] / 1e6:.1f} M params "
                     f"({r['trainable_params'] / 1e6:.3f} M trainable); batch {r['batch']} x seq {r['seq_len']} dense")
    lines.append(
        f"device {r['device']} ({m.get('gpu', m['processor'])}, {m['torch_threads']} threads), dtype {r['dtype']}, "
        f"attn {r['attn']}, grad ckpt {r['grad_ckpt']}; torch {m['torch']}, transformers {m['transformers']}; "
        f"{r['steps']} timed steps after {r['warmup']} warmup per run, {r['rounds']} round(s)"
        + (f"; load average {r['loadavg_start'][0]:.2f} -> {r['loadavg_end'][0]:.2f}" if r["loadavg_start"] else ""))
    lines += ["", f"{'variant':<12} {'tokens/s':>10} {'best tok/s':>10} {'samples/s':>10} {'step ms':>9} "
                  f"{'best ms':>9} {'tok/step':>9} {mem_unit:>15} {'at start':>9}"
              + ("   MFU 4N+attn  MFU 4N" if "flops_per_token" in r else "")]
    for v, x in r["results"].items():
        line = (f"{v:<12} {x['tokens_per_s']:>10.0f} {x['tokens_per_s_best']:>10.0f} {x['samples_per_s']:>10.2f} "
                f"{x['step_ms_mean']:>9.1f} {x['step_ms_best']:>9.1f} {x['tokens_per_step']:>9.0f} "
                f"{_fmt(x['peak_mib']):>15} {_fmt(x['start_mib']):>9}")
        if "flops_per_token" in r:
            line += f"   {_fmt(x['mfu'] and 100 * x['mfu'], '.1f'):>10} %  {_fmt(x['mfu_4n'] and 100 * x['mfu_4n'], '.1f'):>5} %"
        lines.append(line)
    ok = "met" if r["ratio_trainer_vs_bare"] >= r["ratio_goal"] else "NOT met"
    lines += ["", f"trainer / bare tokens/s: {r['ratio_trainer_vs_bare']:.3f} (median over runs); median of per-round "
                  f"ratios {r['ratio_paired']:.3f}; best-of-rounds {r['ratio_best']:.3f}; goal >= {r['ratio_goal']}: {ok}"
              + ("" if r["same_batches_all_variants"] else "  [WARNING: the variants' batches differ]")]
    res = r["results"]
    lines.append("per step outside forward+backward (within-run medians, insensitive to drift): "
                 + ", ".join(f"{v} {x['outside_ms']:.1f} ms" for v, x in res.items())
                 + f"; trainer machinery = trainer - bare = {res['trainer']['outside_ms'] - res['bare']['outside_ms']:+.1f} ms"
                 + (f", data loading = bare - bare_cached = {res['bare']['outside_ms'] - res['bare_cached']['outside_ms']:+.1f} ms"
                    if "bare_cached" in res else ""))
    lines.append("forward+backward per step (median): " + ", ".join(f"{v} {x['fwd_bwd_ms']:.1f} ms" for v, x in res.items()))
    if "bare_cached" in res:
        for key, what in (("step_ms_best", "best-of-rounds"), ("step_ms_mean", "median over runs")):
            t, b, c = (res[v][key] for v in ("trainer", "bare", "bare_cached"))
            lines.append(f"step time split ({what}): model+optimizer {c:.1f} ms, data loading in the loop "
                         f"{b - c:+.1f} ms, trainer machinery {t - b:+.1f} ms")
    if res["trainer"].get("setup_s") is not None and res["bare"].get("setup_s") is not None:
        lines.append(f"fixed cost per run (outside the steps): trainer {res['trainer']['setup_s']:.2f} s from train() to "
                     f"the first step, {res['trainer']['wall_s']:.1f} s wall per call; bare {res['bare']['setup_s']:.2f} s")
    if r.get("loading"):
        lines += ["", f"data loading (batch {r['batch']}, no model) vs training {r['training_samples_per_s']:.2f} samples/s "
                      f"(goal >= {r['loading_goal_x']:.0f}x):",
                  f"{'source':<8} {'workers':>7} {'samples/s':>10} {'x train':>8} {'1st batch s':>12} {'peak RSS MiB':>13} "
                  f"{'worker RSS MiB':>15}"]
        for ld in r["loading"]:
            lines.append(f"{ld['source']:<8} {ld['workers']:>7} {ld['samples_per_s']:>10.1f} {ld['x_training_rate']:>7.1f}x "
                         f"{ld['first_batch_s']:>12.2f} {ld['peak_rss_mib']:>13.0f} "
                         f"{_fmt(ld['children_peak_rss_mib'] if ld['workers'] else None):>15}")
    if "flops_per_token" in r:
        fl = r["flops_per_token"]
        lines += ["", f"FLOPs/token = 4N + 12LTd = 4 x {fl['n_matmul_params'] / 1e9:.3f} G + {fl['attention'] / 1e9:.3f} G "
                      f"= {fl['total'] / 1e9:.2f} GFLOP; peak: {r['peak_source']}; MFU goal >= {100 * r['mfu_goal']:.0f} %"]
        for v, x in res.items():
            lines.append(f"  {v}: {x['tflops']:.1f} TFLOP/s achieved (4N only: {x['tflops_4n']:.1f})")
        if r.get("dry_run"):
            lines.append("DRY RUN: tiny config on this device; the figures above mean nothing")
    lines.append(f"memory: {next(iter(res.values()))['memory_method']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- profile
def run_profile(args) -> None:
    """cProfile of one trainer or bare run (CPU presets): where the time outside the model goes."""
    with tempfile.TemporaryDirectory(prefix="bench_train_prof_", dir=args.tmp) as tmp:
        ws = Workspace(args, Path(tmp))
        batches = run_trainer(args, ws)["batches"]
        prof = cProfile.Profile()
        if args.profile == "trainer":
            prof.enable()
            r = run_trainer(args, ws)
        else:
            prof.enable()
            r = run_bare(args, ws, batches, cached=False)
        prof.disable()
        print(f"{args.profile}: {r['tokens_per_s']:.0f} tokens/s, step {r['step_ms_mean']:.1f} ms, "
              f"wall {r['wall_s']:.2f} s (profiled: slower than unprofiled)")
        st = pstats.Stats(prof)
        st.sort_stats("tottime").print_stats(args.profile_rows)
        st.sort_stats("cumulative").print_stats(args.profile_rows)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on cpu, bf16 on cuda")
    ap.add_argument("--attn", choices=("sdpa", "eager", "flash_attention_2"), default="sdpa")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (both variants)")
    ap.add_argument("--batch", type=int, default=None, help="samples per step (default per preset: 4 tiny, 2 else)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (after warmup)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps of every run")
    ap.add_argument("--rounds", type=int, default=None, help="runs per variant, interleaved")
    ap.add_argument("--seq-len", type=int, default=None, help="7b path: dense row length (default 2048)")
    ap.add_argument("--video-rows", type=int, default=DEFAULT_VIDEO_TOKENS, help="rows per video file (356)")
    ap.add_argument("--pose-rows", type=int, default=DEFAULT_POSE_TOKENS, help="rows per pose file (256)")
    ap.add_argument("--n-train", type=int, default=None, help="records in the synthetic dataset")
    ap.add_argument("--trainer-workers", type=int, default=0,
                    help="--dataloader_num_workers of trainer and bare loop (0, the recipe's default)")
    ap.add_argument("--train-flag", action="append", help="extra flag for train() (repeat; e.g. --train-flag=--tf32)")
    ap.add_argument("--no-cached", action="store_true", help="skip the bare_cached variant")
    ap.add_argument("--skip-loading", action="store_true", help="skip the data-loading measurements")
    ap.add_argument("--load-samples", type=int, default=256, help="samples per data-loading measurement")
    ap.add_argument("--load-workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--load-rounds", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="7b: the device's dense peak (TFLOP/s)")
    ap.add_argument("--dry-run", action="store_true", help="7b path on the CPU with a tiny config (checks only)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the temporary base/data (default: system temp)")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--profile", choices=("trainer", "bare"), help="cProfile one run of a CPU preset instead")
    ap.add_argument("--profile-rows", type=int, default=30)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    p = PRESETS[args.preset]
    if args.dry_run:
        if args.preset != "7b":
            raise SystemExit("--dry-run is for --preset 7b")
        args.device = "cpu"
        args.dtype = args.dtype or "fp32"
        args.steps, args.warmup, args.rounds = args.steps or 2, args.warmup if args.warmup is not None else 1, \
            args.rounds or 1
    args.batch = args.batch or p["batch"]
    args.steps = args.steps or p["steps"]
    args.warmup = args.warmup if args.warmup is not None else p["warmup"]
    args.rounds = args.rounds or p["rounds"]
    args.seq_len = args.seq_len or p.get("seq_len", 2048)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.n_train = args.n_train or max(64, args.batch * (args.warmup + args.steps))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False (use --dry-run to check the 7b path)")
    if args.preset == "7b" and args.device == "cpu" and not args.dry_run:
        raise SystemExit("--preset 7b needs --device cuda (or --dry-run for a tiny CPU stand-in)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise SystemExit("--attn flash_attention_2 needs the flash-attn package and a CUDA GPU")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)  # train()'s basicConfig: no-op
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    warnings.filterwarnings("ignore", message=".*bf16.*CPU.*")

    if args.profile:
        if args.preset == "7b":
            raise SystemExit("--profile is for the tiny/small presets")
        run_profile(args)
        return 0
    r = run_7b(args) if args.preset == "7b" else run_cpu_presets(args)
    print(report(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

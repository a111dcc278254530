#!/usr/bin/env python
"""Multimodal overhead of LLAVIDAL: forward + backward of the full model vs the bare LLaMA backbone.

Issue item "Benchmark": time one training step (forward + backward of the loss) of ``LlavidalForCausalLM`` on a
mixed multimodal batch, and of the bare LLaMA path of *the very same module* fed the same batch at the same
sequence length. Goal: multimodal overhead <= 10 %.

Variants (all share one model, its weights, the batch, the attention mask and the labels):

``llavidal``
    ``model(input_ids, attention_mask, labels, video_features=..., object_features=..., pose_features=...)``:
    token embedding, the three projectors, the ``masked_scatter`` splice, the LLaMA decoder, ``lm_head`` and the
    loss. This is the training step of ``llavidal.train``.
``bare``
    ``model(inputs_embeds=E, attention_mask, labels)`` with ``E`` the spliced embeddings computed once before
    timing (a leaf that requires grad, so backward runs through every layer down to the input exactly as in
    ``llavidal``). The only thing left out is what makes the model multimodal plus the embedding lookup: this is
    the issue's "bare LLaMA backbone fed the same ``inputs_embeds``".
``bare_ids``
    ``model(inputs_embeds=model.embed_tokens(input_ids), ...)``: what a text-only ``LlamaForCausalLM`` costs on
    the same ids (embedding lookup and its weight gradient included); the difference to ``llavidal`` is the
    projectors and the splice alone.

Gradients: ``--grads full`` (default) trains every parameter, as ``LlamaForCausalLM`` fine-tuning would, so the
baseline does the same weight-gradient work as the model (only the projectors' and embedding's grads differ).
``--grads projector`` is the stage-1 setup (``set_trainable``): no weight gradients in the
decoder, but backward still runs through it to reach the projectors; ``bare`` then back-propagates to ``E``.

Timing: variants are interleaved step by step (rotating order) so that drift of a shared machine hits all of
them alike; each step is ``zero_grad -> [sync] t0 -> forward -> backward -> [sync] t1``; the figure is the
median of ``--steps`` after ``--warmup``. Peak memory: ``torch.cuda.max_memory_allocated`` per step on GPU; on
CPU the peak RSS above the RSS before the step, sampled by a background thread (psutil), which is approximate.

No speed asserts: the goal lives in docs/benchmarks.md, this script only measures (exit status 0).

Examples::

    PYTHONPATH=. python bench/bench_overhead.py --preset tiny
    PYTHONPATH=. python bench/bench_overhead.py --preset small --steps 5 --warmup 2
    PYTHONPATH=. python bench/bench_overhead.py --preset 7b --device cuda --dtype bf16 --json bench_7b.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path
import torch
from _common import ANSWER_TOKENS, MODEL_SHAPES, QUESTION_TOKENS, SYSTEM_TOKENS, dtypes, machine_info

from llavidal.constants import (
    ADDED_TOKENS,
    DEFAULT_POSE_TOKENS,
    DEFAULT_VIDEO_TOKENS,
    IGNORE_INDEX,
    OBJECT_FRAMES,
    PUBLISHED_MODALITIES,
)
from llavidal.model import LlavidalConfig, LlavidalForCausalLM
from llavidal.train.modes import set_trainable

# ---------------------------------------------------------------------------------------------------- presets
# tiny: the projectors (1024 -> 64) weigh as much as a decoder layer, so it shows the splice's fixed cost, not the
# overhead at real size; small: the step is dominated by the decoder, as at 7B
PRESETS = {name: {**MODEL_SHAPES[name], **run} for name, run in
           {"tiny": dict(seq_len=1024, batch=4), "small": dict(seq_len=1024, batch=2),
            "7b": dict(seq_len=2048, batch=2)}.items()}
DTYPES = dtypes()

# Per-sample modality subsets of the mixed batch (cycled): (video?, number of objects or 0, pose?)
SAMPLE_KINDS = [
    (True, 3, True),  # video + 3 objects + pose: the full LLAVIDAL prompt
    (True, 0, False),  # video only (ADL-X video QA without side modalities)
    (True, 0, True),  # video + pose
    (True, 5, False),  # video + 5 objects
    (False, 2, True),  # objects + pose, no video
    (True, 1, True),  # video + 1 object + pose
]


# ---------------------------------------------------------------------------------------------------- batch
@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L]
    video: torch.Tensor | None  # packed rows [R_v, 1024]
    object: torch.Tensor | None  # packed rows [R_o, 512]
    pose: torch.Tensor | None  # packed rows [R_p, 216]
    kinds: list[str] = field(default_factory=list)
    real_tokens: int = 0  # non-padding tokens

    def to(self, device: torch.device, dtype: torch.dtype) -> "Batch":
        f = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                     f(self.video), f(self.object), f(self.pose), self.kinds, self.real_tokens)


def sample_layout(has_video: bool, n_objects: int, has_pose: bool, video_rows: int, pose_rows: int) -> int:
    """Token count of one sample: bos + system + question + spans + answer."""
    n = 1 + SYSTEM_TOKENS + QUESTION_TOKENS + ANSWER_TOKENS
    n += (video_rows + 2) if has_video else 0
    n += (OBJECT_FRAMES * n_objects + 2) if n_objects else 0
    n += (pose_rows + 2) if has_pose else 0
    return n


def default_seq_len(batch: int, video_rows: int, pose_rows: int, preset_len: int) -> int:
    longest = max(sample_layout(*SAMPLE_KINDS[i % len(SAMPLE_KINDS)], video_rows, pose_rows) for i in range(batch))
    return max(preset_len, longest)


def make_batch(cfg: LlavidalConfig, batch: int, seq_len: int, video_rows: int, pose_rows: int,
               seed: int = 0) -> Batch:
    """A right-padded mixed batch in the layout of llavidal's prompts, with packed feature rows."""
    g = torch.Generator().manual_seed(seed)
    tid = cfg.token_id
    n_text = cfg.vocab_size - len(ADDED_TOKENS) - 3  # text ids: below the LLaVA + modality tokens
    text = lambda n: torch.randint(3, n_text, (n,), generator=g)  # noqa: E731
    ids = torch.zeros(batch, seq_len, dtype=torch.long)  # pad id 0 (<unk>), as llavidal's collator
    mask = torch.zeros(batch, seq_len, dtype=torch.long)
    labels = torch.full((batch, seq_len), IGNORE_INDEX, dtype=torch.long)
    vids, objs, poses, kinds, real = [], [], [], [], 0
    for b in range(batch):
        has_video, n_obj, has_pose = SAMPLE_KINDS[b % len(SAMPLE_KINDS)]
        parts = [torch.tensor([1]), text(SYSTEM_TOKENS), text(QUESTION_TOKENS)]  # bos, system+USER:, question
        if has_video:
            parts.append(torch.tensor([tid("<vid_start>")] + [tid("<vid_patch>")] * video_rows + [tid("<vid_end>")]))
            vids.append(torch.randn(video_rows, cfg.mm_hidden_size, generator=g))
        if n_obj:
            rows = OBJECT_FRAMES * n_obj
            parts.append(torch.tensor([tid("<object_start>")] + [tid("<object_patch>")] * rows
                                      + [tid("<object_end>")]))
            objs.append(torch.randn(n_obj, OBJECT_FRAMES, cfg.object_hidden_size, generator=g).reshape(rows, -1))
        if has_pose:
            parts.append(torch.tensor([tid("<pose_start>")] + [tid("<pose_patch>")] * pose_rows + [tid("<pose_end>")]))
            poses.append(torch.randn(pose_rows, cfg.pose_hidden_size, generator=g))
        answer = torch.cat([text(ANSWER_TOKENS - 1), torch.tensor([2])])  # ... </s>
        parts.append(answer)
        row = torch.cat(parts)
        if row.numel() > seq_len:
            raise SystemExit(f"sample {b} needs {row.numel()} tokens but --seq-len is {seq_len}; raise --seq-len")
        n = row.numel()
        ids[b, :n] = row
        mask[b, :n] = 1
        labels[b, n - ANSWER_TOKENS:n] = answer
        real += n
        kinds.append("+".join(k for k, on in (("video", has_video), (f"obj{n_obj}", n_obj), ("pose", has_pose))
                              if on))
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return Batch(ids, mask, labels, cat(vids), cat(objs), cat(poses), kinds, real)


# ---------------------------------------------------------------------------------------------------- memory
class RssSampler:
    """Peak resident set size above a reference, sampled every ``interval`` s in a thread (CPU runs)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def __enter__(self) -> "RssSampler":
        self.base = self.rss()
        self.peak = self.base
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta(self) -> int:
        return self.peak - self.base


# ---------------------------------------------------------------------------------------------------- bench
def build_model(args, device: torch.device, dtype: torch.dtype) -> LlavidalForCausalLM:
    p = PRESETS[args.preset]
    vocab = p["vocab_size"]
    cfg = LlavidalConfig(
        vocab_size=vocab, hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
        max_position_embeddings=max(2048, args.seq_len), rms_norm_eps=1e-6,
        mm_hidden_size=1024, object_hidden_size=512, pose_hidden_size=216,
        modality_token_ids={t: vocab - len(ADDED_TOKENS) + i for i, t in enumerate(ADDED_TOKENS)},
        use_cache=False,
    )
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlavidalForCausalLM._from_config(cfg, attn_implementation=args.attn, dtype=dtype)
    model.train()
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    if args.grads == "projector":
        set_trainable(model, "projector", PUBLISHED_MODALITIES)
    else:
        model.requires_grad_(True)
    return model


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")

    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    model = build_model(args, device, dtype)
    cfg = model.config
    batch = make_batch(cfg, args.batch, args.seq_len, args.video_rows, args.pose_rows, args.seed).to(device, dtype)
    feats = dict(video_features=batch.video, object_features=batch.object, pose_features=batch.pose)

    # inputs_embeds for the bare baseline: the spliced embeddings, computed once, a leaf that needs grad
    with torch.no_grad():
        embeds0 = model.embed_multimodal(batch.input_ids, **feats).detach()
    embeds = embeds0.clone().requires_grad_(True)
    grad_out = torch.randn_like(embeds0)  # fixed upstream gradient for the splice-only rows

    def step_llavidal():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, **feats)
        out.loss.backward()

    def step_bare():
        out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=batch.labels)
        out.loss.backward()

    def step_bare_ids():
        e = model.get_input_embeddings()(batch.input_ids)
        out = model(inputs_embeds=e, attention_mask=batch.attention_mask, labels=batch.labels)
        out.loss.backward()

    # the embedding stage alone (no decoder): what the splice adds, in absolute time
    def step_splice_only():
        e = model.embed_multimodal(batch.input_ids, **feats)
        e.backward(grad_out)

    def step_embed_only():
        e = model.get_input_embeddings()(batch.input_ids)
        e.backward(grad_out)

    variants = {"llavidal": step_llavidal, "bare": step_bare, "bare_ids": step_bare_ids}
    micro = {"splice_only": step_splice_only, "embed_only": step_embed_only}
    if args.skip_micro:
        micro = {}

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def one(fn) -> tuple[float, int | None]:
        model.zero_grad(set_to_none=True)
        embeds.grad = None
        if not cuda:
            gc.collect()
        sync()
        mem = None
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            fn()
            sync()
            t1 = time.perf_counter()
            mem = torch.cuda.max_memory_allocated(device) - base
        elif args.rss:
            with RssSampler() as s:
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
            mem = s.delta
        else:
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
        return (t1 - t0) * 1e3, mem

    times: dict[str, list[float]] = {k: [] for k in (*variants, *micro)}
    mems: dict[str, list[int]] = {k: [] for k in (*variants, *micro)}
    names = list(variants)
    for i in range(args.warmup + args.steps):
        order = names[i % len(names):] + names[:i % len(names)]  # rotate so no variant always goes first
        for name in order:
            ms, mem = one(variants[name])
            if i >= args.warmup:
                times[name].append(ms)
                if mem is not None:
                    mems[name].append(mem)
        if args.verbose and i >= args.warmup:
            print(f"  step {i + 1 - args.warmup}/{args.steps}: "
                  + ", ".join(f"{n}={times[n][-1]:.1f}ms" for n in names), flush=True)
    for name, fn in micro.items():
        for i in range(args.warmup + args.micro_steps):
            ms, mem = one(fn)
            if i >= args.warmup:
                times[name].append(ms)
                if mem is not None:
                    mems[name].append(mem)
    model.zero_grad(set_to_none=True)

    tokens = args.batch * args.seq_len
    res = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        res[name] = {
            "median_ms": med, "min_ms": min(ts), "max_ms": max(ts), "n": len(ts),
            "tokens_per_s": tokens / (med / 1e3),
            "peak_mem_mib": (max(mems[name]) / 2**20) if mems[name] else None,
        }
    base = res["bare"]["median_ms"]
    base_ids = res["bare_ids"]["median_ms"]
    mm = res["llavidal"]["median_ms"]
    rows_v = 0 if batch.video is None else batch.video.shape[0]
    rows_o = 0 if batch.object is None else batch.object.shape[0]
    rows_p = 0 if batch.pose is None else batch.pose.shape[0]
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "command": "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv),
        "preset": args.preset,
        "model": {k: PRESETS[args.preset][k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                       "num_attention_heads", "vocab_size")},
        "params": n_params, "trainable_params": n_train, "grads": args.grads, "grad_ckpt": args.grad_ckpt,
        "batch": args.batch, "seq_len": args.seq_len, "tokens_per_step": tokens, "real_tokens": batch.real_tokens,
        "sample_kinds": batch.kinds, "feature_rows": {"video": rows_v, "object": rows_o, "pose": rows_p},
        "modality_tokens": rows_v + rows_o + rows_p,
        "device": args.device, "dtype": args.dtype, "attn": model.config._attn_implementation,
        "warmup": args.warmup, "steps": args.steps,
        "machine": machine_info(device),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "results": res,
        "overhead_pct": 100.0 * (mm - base) / base,
        "overhead_vs_bare_ids_pct": 100.0 * (mm - base_ids) / base_ids,
        # robust to a shared, noisy machine: best-of-N, and the median of per-round ratios (the variants of
        # one round run back to back, so slow drift cancels)
        "overhead_min_pct": 100.0 * (res["llavidal"]["min_ms"] - res["bare"]["min_ms"]) / res["bare"]["min_ms"],
        "overhead_paired_pct": 100.0 * (statistics.median(
            a / b for a, b in zip(times["llavidal"], times["bare"])) - 1.0),
        "overhead_vs_bare_ids_paired_pct": 100.0 * (statistics.median(
            a / b for a, b in zip(times["llavidal"], times["bare_ids"])) - 1.0),
        "splice_ms": (res["splice_only"]["median_ms"] - res["embed_only"]["median_ms"]) if micro else None,
        # component estimate: what the projectors + splice add, as a share of the bare step
        "splice_share_pct": (100.0 * (res["splice_only"]["median_ms"] - res["embed_only"]["median_ms"]) / base)
        if micro else None,
        "goal_pct": 10.0,
    }


def report(r: dict) -> str:
    res = r["results"]
    mem_unit = "peak alloc MiB" if r["device"] == "cuda" else "peak RSS+ MiB"
    lines = [
        f"command: {r['command']}",
        f"preset {r['preset']} {r['model']}  params {r['params'] / 1e6:.1f} M (trainable {r['trainable_params'] / 1e6:.1f} M, "
        f"grads={r['grads']})",
        f"batch {r['batch']} x seq {r['seq_len']} = {r['tokens_per_step']} tokens ({r['real_tokens']} non-pad); "
        f"samples: {', '.join(r['sample_kinds'])}",
        f"modality rows: video {r['feature_rows']['video']}, object {r['feature_rows']['object']}, "
        f"pose {r['feature_rows']['pose']}",
        f"device {r['device']} ({r['machine'].get('gpu', r['machine']['processor'])}, "
        f"{r['machine']['torch_threads']} threads), dtype {r['dtype']}, attn {r['attn']}, "
        f"torch {r['machine']['torch']}, transformers {r['machine']['transformers']}; "
        f"median of {r['steps']} steps after {r['warmup']} warmup"
        + (f"; load average {r['loadavg_start'][0]:.2f} -> {r['loadavg_end'][0]:.2f}" if r["loadavg_start"] else ""),
        "",
        f"{'variant':<12} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'tokens/s':>10} {mem_unit:>15}",
    ]
    for name, v in res.items():
        mem = "-" if v["peak_mem_mib"] is None else f"{v['peak_mem_mib']:.0f}"
        lines.append(f"{name:<12} {v['median_ms']:>10.1f} {v['min_ms']:>9.1f} {v['max_ms']:>9.1f} "
                     f"{v['tokens_per_s']:>10.0f} {mem:>15}")
    met = "met" if r["overhead_pct"] <= r["goal_pct"] else "NOT met"
    lines += [
        "",
        f"overhead llavidal vs bare (same inputs_embeds): {r['overhead_pct']:+.1f} %  (goal <= {r['goal_pct']:.0f} %: {met})",
        f"overhead llavidal vs bare_ids (text-only LLaMA on the same ids): {r['overhead_vs_bare_ids_pct']:+.1f} %",
        f"robust estimates vs bare: best-of-{r['steps']} {r['overhead_min_pct']:+.1f} %, median of per-round ratios "
        f"{r['overhead_paired_pct']:+.1f} % (vs bare_ids: {r['overhead_vs_bare_ids_paired_pct']:+.1f} %)",
    ]
    if r["splice_ms"] is not None:
        lines.append(f"embedding stage alone: splice_only - embed_only = {r['splice_ms']:.2f} ms per step "
                     f"= {r['splice_share_pct']:.1f} % of the bare step")
    return "\n".join(lines)


def profile(args) -> None:
    """One profiled llavidal step: where the time of the embedding stage goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    model = build_model(args, device, dtype)
    batch = make_batch(model.config, args.batch, args.seq_len, args.video_rows, args.pose_rows, args.seed).to(device, dtype)
    feats = dict(video_features=batch.video, object_features=batch.object, pose_features=batch.pose)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, **feats)
        out.loss.backward()

    for _ in range(max(1, args.warmup)):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tprofile(activities=acts, record_shapes=False) as prof:
        step()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--batch", type=int, default=None, help="samples per step (default: per preset)")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="padded sequence length (default: 1024 tiny/small, 2048 7b; at least the longest sample)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: 20 tiny, 5 else)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (default: 3 tiny, 2 else)")
    ap.add_argument("--micro-steps", type=int, default=20, help="timed steps of the embedding-only rows")
    ap.add_argument("--skip-micro", action="store_true", help="skip the splice_only / embed_only rows")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on cpu, bf16 on cuda")
    ap.add_argument("--attn", choices=("sdpa", "eager", "flash_attention_2"), default="sdpa")
    ap.add_argument("--grads", choices=("full", "projector"), default="full",
                    help="full: every parameter trainable (default); projector: stage-1 freezing")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (for GPUs short of memory)")
    ap.add_argument("--video-rows", type=int, default=DEFAULT_VIDEO_TOKENS)
    ap.add_argument("--pose-rows", type=int, default=DEFAULT_POSE_TOKENS)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--no-rss", dest="rss", action="store_false", help="CPU: do not sample RSS")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one llavidal step")
    ap.add_argument("--profile-rows", type=int, default=25)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    p = PRESETS[args.preset]
    args.batch = args.batch or p["batch"]
    args.seq_len = args.seq_len or default_seq_len(args.batch, args.video_rows, args.pose_rows, p["seq_len"])
    args.steps = args.steps or (20 if args.preset == "tiny" else 5)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.preset == "tiny" else 2)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss and args.device == "cpu":
        try:
            import psutil  # noqa: F401
        except ImportError:
            args.rss = False
    if args.attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise SystemExit("--attn flash_attention_2 needs the flash-attn package and a CUDA GPU")

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

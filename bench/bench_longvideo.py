#!/usr/bin/env python
"""Long videos: the two-token representation against the 356-row default (docs/design.md#two-token-video).

``--part tokens``   video tokens per clip and prefill time of one prompt (embedding + splice + one forward of the
                    whole prompt), for clips of 1, 10 and 60 minutes: the default representation is 356 rows whatever
                    the length (100 frames at most); the two-token one is 2 tokens per second. A random model of the
                    ``--shape`` of bench/_common.py with an 8,192-position window (an hour needs 7,200 + text), built
                    with make_tiny; ``embed`` is the splice alone (the context attention included).
``--part memory``   peak memory of raw-video extraction for synthetic videos of 1, 10 and 60 minutes (``--res``,
                    ``--fps``; written once into ``--work`` by a process of their own), each extraction in a fresh
                    process: ``stream`` is ``LongVideoFeaturizer.write`` (chunked decoding, features appended to the
                    file); ``naive`` reads every 1-fps frame first and encodes them at once (what streaming avoids);
                    ``default`` is the 100-frame spatio-temporal extraction. Reported, above the process's memory
                    once the model is loaded and warmed up: the peak RSS sampled every 2 ms by a thread
                    (``peak_rss_above_load_mb``; a C call that holds the GIL can hide a short spike from it), the
                    growth of the kernel's high-water mark ``ru_maxrss`` (``maxrss_above_load_mb``; exact, never
                    missed) and, with ``--tracemalloc`` (a separate run: its bookkeeping is memory too), the peak
                    of numpy allocations. ``--decoder`` picks decord or PyAV.
                    The CLIP is a small random one (width 64, 1 layer): the memory of frames does not depend on it.

The accuracy of both representations on long synthetic videos is ``llavidal quickstart --study long-video`` (docs/benchmarks.md#long-video).

    PYTHONPATH=. python bench/bench_longvideo.py --part tokens --shape small
    PYTHONPATH=. python bench/bench_longvideo.py --part memory --minutes 1 10 60
    PYTHONPATH=. python bench/bench_longvideo.py --part memory --minutes 1 10 60 --decoder pyav --modes stream
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common  # noqa: F401 - the repository on sys.path
import numpy as np

MINUTES = (1, 10, 60)


# ==================================================================== tokens and prefill
def part_tokens(args) -> dict:
    import torch

    from llavidal import load_pretrained
    from llavidal.inference import GenerationOptions, Query, prepare_inputs
    from llavidal.model.tiny import TinySpec, make_tiny
    from llavidal.model.two_token import enable_two_token
    from llavidal.representation import TwoTokenSpec

    shape = _common.MODEL_SHAPES[args.shape]
    work = Path(args.work)
    base = work / f"base-{args.shape}"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=0, spec=TinySpec(hidden_size=shape["hidden_size"],
                                              intermediate_size=shape["intermediate_size"],
                                              num_hidden_layers=shape["num_hidden_layers"],
                                              num_attention_heads=shape["num_attention_heads"],
                                              max_position_embeddings=8192))
    device = torch.device(args.device)
    dtype = _common.dtypes()[args.dtype]
    default, tok = load_pretrained(base, device=device, dtype=dtype)
    two, _ = load_pretrained(base, device=device, dtype=dtype)
    enable_two_token(two, TwoTokenSpec(16, 1.0))
    two.to(device=device, dtype=dtype)
    g = np.random.default_rng(0)
    question = "What does the person do after the phone rings, and what does the person drink?"
    opts = GenerationOptions(max_new_tokens=1)

    def timed(model, video) -> dict:
        batch = prepare_inputs(model, tok, [Query(question, video=video)], opts)
        feats = {k: v for k, v in batch.items() if k.endswith("_features") or k == "query_mask"}
        with torch.inference_mode():
            def embed():
                return model.embed_multimodal(batch["input_ids"], **feats)

            def prefill():
                return model(inputs_embeds=embed(), attention_mask=batch["attention_mask"], logits_to_keep=1).logits

            out = {"prompt_tokens": int(batch["input_ids"].shape[1]),
                   "video_tokens": int((batch["input_ids"] == model.patch_token_id("video")).sum())}
            for name, fn in (("embed", embed), ("prefill", prefill)):
                fn()  # warm-up
                times = []
                for _ in range(args.repeats):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                out[f"{name}_ms"] = round(1000 * float(np.median(times)), 2)
        return out

    rows = []
    rows.append({"representation": "default (356 rows)", "minutes": "any",
                 **timed(default, g.standard_normal((356, 1024)).astype(np.float16))})
    for minutes in args.minutes:
        video = g.standard_normal((int(60 * minutes), 16, 1024)).astype(np.float16)
        rows.append({"representation": "two-token (1 fps)", "minutes": minutes, **timed(two, video)})
    base_ms = rows[0]["prefill_ms"]
    for r in rows:
        r["prefill_vs_default"] = round(r["prefill_ms"] / base_ms, 2)
    return {"shape": args.shape, **shape, "window": 8192, "device": str(device), "dtype": args.dtype,
            "question": question, "rows": rows}


# ==================================================================== extraction memory
def make_video(path: Path, minutes: float, fps: float, res: tuple[int, int]) -> Path:
    """A synthetic clip: a moving gradient (realistic to decode), H.264."""
    from llavidal.video.io import write_video

    if path.is_file():
        return path
    w, h = res
    n = int(minutes * 60 * fps)
    yy, xx = (a.astype(np.uint8) for a in np.mgrid[0:h, 0:w])
    t = (np.arange(n) % 256).astype(np.uint8)[:, None, None]  # uint8 arithmetic wraps around: mod 256
    frames = np.stack([xx + 3 * t, yy + 5 * t, xx + yy + 7 * t], axis=-1)  # [n, h, w, 3] uint8
    return write_video(path, frames, fps=fps)


def child_extract(args) -> dict:
    """One extraction in this (fresh) process; prints its memory figures."""
    try:
        import psutil
    except ImportError:
        raise SystemExit("bench_longvideo.py measures memory with psutil: pip install -e \".[bench]\"") from None
    import torch

    torch.set_num_threads(args.threads)
    import tracemalloc

    from llavidal.video.io import read_frames
    from llavidal.video.longvideo import LongVideoConfig, LongVideoFeaturizer, sample_indices, video_meta

    video = Path(args.child_extract)
    if args.mode == "default":
        from llavidal.video.extract import VideoFeaturizer

        fz = VideoFeaturizer(args.clip, device="cpu", batch=32, decoder=args.decoder)
    else:
        fz = LongVideoFeaturizer(LongVideoConfig(clip=args.clip, device="cpu", chunk=32, progress=False,
                                                 decoder=args.decoder))
    fz(Path(args.work) / "warm.mp4")  # allocator warmed, model loaded
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    high = [rss0]
    stop = threading.Event()

    def sample():  # the RSS high-water mark of the extraction alone (ru_maxrss also holds model loading)
        while not stop.wait(0.002):
            high[0] = max(high[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if args.tracemalloc:  # its bookkeeping is memory too: a run of its own, not one that measures RSS
        tracemalloc.start()
    t0 = time.perf_counter()
    out = Path(args.work) / f"out-{video.stem}-{args.mode}.npy"
    if args.mode == "stream":
        info = fz.write(video, out)
        frames = info["sampled"]
    elif args.mode == "naive":
        total, rate = video_meta(video, args.decoder)
        whole, _ = read_frames(video, indices=sample_indices(total, rate), decoder=args.decoder)
        frames = len(fz.features_from_frames(whole))
    else:
        frames = len(fz.frames(video))
        fz(video)
    wall = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
    tracemalloc.stop()
    stop.set()
    sampler.join()
    peak = max(high[0], proc.memory_info().rss)
    return {"frames": frames, "wall_s": round(wall, 2), "rss_after_load_mb": round(rss0 / 2**20, 1),
            "peak_rss_above_load_mb": round((peak - rss0) / 2**20, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "maxrss_above_load_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) / 2**10, 1),
            "numpy_peak_mb": round(traced / 2**20, 2) if traced is not None else None}


def part_memory(args) -> dict:
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip

    work = Path(args.work)
    clip = work / "clip-small"
    if not (clip / "config.json").is_file():
        make_tiny_clip(clip, spec=TinyClipSpec(vision_hidden_size=64, vision_intermediate_size=64, vision_layers=1,
                                               vision_heads=2, text_hidden_size=16, text_intermediate_size=16,
                                               text_layers=1, text_heads=2, projection_dim=16))
    def child(*extra: str) -> str:
        cmd = [sys.executable, __file__, "--work", str(work), "--fps", str(args.fps), "--res", *map(str, args.res),
               "--decoder", args.decoder, "--threads", str(args.threads), *(["--tracemalloc"] * args.tracemalloc),
               *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(_common.ROOT)})
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        return proc.stdout

    # the videos are made by a process of their own: ru_maxrss survives exec, so this process must stay small
    child("--child-make-video", "warm.mp4", "--minutes", "0.05")
    rows = []
    for minutes in args.minutes:
        video = work / f"synthetic_{minutes:g}min.mp4"
        child("--child-make-video", video.name, "--minutes", str(minutes))
        for mode in args.modes:
            if mode == "naive" and minutes > args.naive_max_minutes:
                continue
            out = child("--child-extract", str(video), "--mode", mode, "--clip", str(clip))
            rows.append({"minutes": minutes, "mode": mode, "decoder": args.decoder,
                         **json.loads(out.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    stream = [r for r in rows if r["mode"] == "stream"]
    growth = ({k: round(stream[-1][k] - stream[0][k], 1) for k in ("peak_rss_above_load_mb", "maxrss_above_load_mb")}
              if len(stream) > 1 else None)
    return {"fps": args.fps, "res": args.res, "decoder": args.decoder, "clip": "random, width 64, 1 layer",
            "threads": args.threads,
            "rows": rows, "stream_peak_growth_mb": growth}


# ==================================================================== entry point
def table(rows: list[dict], keys: list[str]) -> str:
    out = [" | ".join(keys), " | ".join("---" for _ in keys)]
    out += [" | ".join(str(r.get(k, "")) for k in keys) for r in rows]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["tokens", "memory"], default="tokens")
    p.add_argument("--shape", default="small", choices=list(_common.MODEL_SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--minutes", type=float, nargs="+", default=list(MINUTES))
    p.add_argument("--modes", nargs="+", default=["stream", "naive", "default"])
    p.add_argument("--naive-max-minutes", type=int, default=60)
    p.add_argument("--fps", type=float, default=4.0, help="frame rate of the synthetic videos")
    p.add_argument("--res", type=int, nargs=2, default=[96, 64], help="width height of the synthetic videos")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--tracemalloc", action="store_true",
                   help="also the peak of numpy allocations (tracemalloc; its bookkeeping inflates the RSS figures)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "llavidal-bench-longvideo"))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child-extract", help=argparse.SUPPRESS)
    p.add_argument("--child-make-video", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    p.add_argument("--clip", help=argparse.SUPPRESS)
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.child_make_video:
        make_video(Path(args.work) / args.child_make_video, args.minutes[0], args.fps, tuple(args.res))
        return
    if args.child_extract:
        print(json.dumps(child_extract(args)))
        return
    if args.part == "tokens":
        result = part_tokens(args)
        print(table(result["rows"], ["representation", "minutes", "video_tokens", "prompt_tokens", "embed_ms",
                                     "prefill_ms", "prefill_vs_default"]))
    else:
        result = part_memory(args)
        print(table(result["rows"], ["minutes", "mode", "decoder", "frames", "wall_s", "peak_rss_above_load_mb",
                                     "maxrss_above_load_mb", "numpy_peak_mb"]))
        print(f"stream: growth of the peaks from {args.minutes[0]:g} to {args.minutes[-1]:g} minutes (MB): "
              f"{result['stream_peak_growth_mb']}")
    result["machine"] = _common.machine_info(args.device)
    if args.json:
        _common.write_json(args.json, result)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Video feature extraction throughput: the whole pipeline vs its slowest stage measured alone.

Issue item "Video pipeline" (benchmark): ``llavidal extract-video`` decodes in worker processes while the model
runs, so the pipeline should take about as long as its slowest stage, not the sum of both. Goal: pipeline time
<= 1.2 x max(decode-only, model-only) on the same videos. On a GPU with the real ViT-L/14 shape (random weights):
clips of 100 sampled frames per second, goal >= 15 on one H100.

Stages, all on the same synthetic videos (``--videos`` clips of ``--frames`` frames at ``--res``, H.264 .mp4,
written once into ``--work``):

``decode``    the pipeline's own DataLoader of decoding workers (``--workers``), iterated with no model:
              the sampled frame indices, decode, nearest resize to 224.
``model``     the same number of uint8 frames (random, already in host memory) through the pipeline's model in
              batches of ``--batch``: host→device copy, normalisation, the CLIP tower up to layer -2, pooling,
              float16 to host. Decoding excluded.
``pipeline``  ``extract_folder`` into an empty folder (writes included).

Presets: ``tiny`` (the tiny CLIP of ``make-tiny-clip``, vision width 1024, 1 layer computed: CPU-sized) and
``vit-l14`` (hidden 1024, 24 layers, 16 heads, MLP 4096, patch 14, 224 px: the real ViT-L/14 vision tower with
random weights; 23 layers computed).

    PYTHONPATH=. python bench/bench_extract.py --preset tiny --videos 12 --frames 120
    PYTHONPATH=. python bench/bench_extract.py --preset vit-l14 --device cuda --dtype float16 --videos 200 --workers 12
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401 - the repository on sys.path

from llavidal.video.clip import TinyClipSpec, make_tiny_clip  # noqa: E402
from llavidal.video.extract import ClipFeatureModel, ExtractConfig, _Decoded, extract_folder  # noqa: E402
from llavidal.video.io import find_videos, write_video  # noqa: E402

PRESETS = {
    "tiny": TinyClipSpec(),
    "vit-l14": TinyClipSpec(vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24,
                            vision_heads=16),
}


def make_videos(folder: Path, n: int, frames: int, res: tuple[int, int], seed: int = 0) -> list[Path]:
    """Moving-gradient H.264 clips (cheap to make, realistic to decode: motion, not constant frames)."""
    folder.mkdir(parents=True, exist_ok=True)
    have = find_videos(folder)
    if len(have) >= n:
        return have[:n]
    w, h = res
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    for i in range(len(have), n):
        phase = rng.uniform(0, 2 * np.pi, 3)
        clip = np.empty((frames, h, w, 3), np.uint8)
        for t in range(frames):
            for c in range(3):
                clip[t, :, :, c] = (127 + 120 * np.sin(xx / (17 + 5 * c) + yy / 23 + t / 5 + phase[c])).astype(np.uint8)
        write_video(folder / f"clip_{i:04d}.mp4", clip, fps=30)
    return find_videos(folder)[:n]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decode(videos, workers: int, max_frames: int) -> tuple[float, int]:
    ds = _Decoded(list(videos), max_frames, 224, "auto")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    t0, frames = time.perf_counter(), 0
    for item in loader:
        assert item["error"] is None, item["error"]
        frames += len(item["frames"])
    return time.perf_counter() - t0, frames


def time_model(model: ClipFeatureModel, frames_per_video: list[int], batch: int) -> float:
    gen = torch.Generator().manual_seed(0)
    pin = model.device.type == "cuda"
    host = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8, generator=gen)
    if pin:
        host = host.pin_memory()
    total = sum(frames_per_video)
    # warm-up (kernels, allocator)
    model.patches(host)
    sync(model.device)
    t0 = time.perf_counter()
    done, outs = 0, []
    while done < total:
        k = min(batch, total - done)
        outs.append(model.patches(host[:k]))
        done += k
    patches = torch.cat(outs)
    start = 0
    for n in frames_per_video:  # pooling + float16 to host per video, as the pipeline does
        model.pool(patches[start:start + n]).to(torch.float16).cpu()
        start += n
    sync(model.device)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--clip", default=None, help="use this CLIP folder instead of a preset")
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--frames", type=int, default=120, help="frames per source clip (100 are sampled)")
    ap.add_argument("--res", default="320x240")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--work", default=None, help="folder for the videos and the CLIP (kept between runs)")
    ap.add_argument("--repeat", type=int, default=1, help="pipeline runs (the best is reported)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_extract_"))
    res = tuple(int(x) for x in args.res.split("x"))
    videos = make_videos(work / f"videos_{args.frames}f_{args.res}", args.videos, args.frames, res)
    clip = args.clip
    if clip is None:
        clip = work / f"clip_{args.preset}"
        if not (clip / "model.safetensors").is_file():
            make_tiny_clip(clip, seed=0, spec=PRESETS[args.preset])
    workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))

    model = ClipFeatureModel(str(clip), args.device, args.dtype)
    batch = args.batch or (256 if model.device.type == "cuda" else 48)
    cfg = ExtractConfig(clip=str(clip), batch=batch, workers=workers, device=args.device, dtype=args.dtype,
                        progress=False)

    # pipeline first on a cold page cache would favour the stages; run decode once to warm the file cache
    time_decode(videos[: min(4, len(videos))], 0, 100)
    t_decode, frames = time_decode(videos, workers, 100)
    per_video = [min(args.frames, 100)] * len(videos)
    assert frames == sum(per_video)
    t_model = time_model(model, per_video, batch)
    t_pipe = float("inf")
    for _ in range(args.repeat):
        out = work / "features"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        s = extract_folder(videos[0].parent, out, cfg, model=model)
        sync(model.device)
        t_pipe = min(t_pipe, time.perf_counter() - t0)
        assert s["written"] == len(videos) and s["failed"] == 0, s
    slowest = max(t_decode, t_model)
    gpu = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None
    result = {
        "preset": args.preset if args.clip is None else str(args.clip), "device": str(model.device), "gpu": gpu,
        "dtype": str(model.dtype).removeprefix("torch."), "videos": len(videos), "source_frames": args.frames,
        "res": args.res, "frames_per_video": per_video[0], "workers": workers, "batch": batch,
        "decode_s": round(t_decode, 3), "model_s": round(t_model, 3), "pipeline_s": round(t_pipe, 3),
        "decode_clips_per_s": round(len(videos) / t_decode, 2), "model_clips_per_s": round(len(videos) / t_model, 2),
        "pipeline_clips_per_s": round(len(videos) / t_pipe, 2),
        "pipeline_over_slowest": round(t_pipe / slowest, 3), "pipeline_over_sum": round(t_pipe / (t_decode + t_model), 3),
        "machine": _common.machine_info(model.device),
    }
    print(json.dumps(result, indent=2))
    print(f"\n| preset | device | videos × frames | workers | batch | decode-only | model-only | pipeline | "
          f"pipeline / slowest | clips/s |\n|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {result['preset']} | {gpu or result['device']} {result['dtype']} | {len(videos)} × {per_video[0]} | "
          f"{workers} | {batch} | {t_decode:.2f} s | {t_model:.2f} s | {t_pipe:.2f} s | "
          f"**{result['pipeline_over_slowest']:.2f}** | {result['pipeline_clips_per_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Throughput of the video curation steps: ``curate crop`` + ``curate stitch`` vs a plain decode + encode.

Issue 6 goal: crop + stitch processes clips at >= 0.7x the rate of a plain decode + encode of the same clips.

The clips are synthetic NTU clips (``tests/ntu_fixture.py``: a stick figure over a gradient, MPEG-4 in AVI like the
real ones) at ``--width`` x ``--height`` (NTU: 1920x1080) with ``--frames`` frames (NTU clips: ~60-300), one
performer doing ``--clips`` different actions, and their ``.skeleton.npy`` files. Timed, in this order, each on a
fresh output folder:

``plain``
    per clip: decode every frame (PyAV, threaded), scale it to ``--size`` x ``--size`` (FFmpeg's scaler, one call
    straight to yuv420p) and encode it (MPEG-4, the same encoder settings as the crops). The least any crop tool
    must do: read the clip once and write a small one.
``crop``
    ``crop_dataset``: load the skeleton, boxes, per frame decode → RGB → pad/crop → scale → encode, keypoints and
    boxes files, manifest (``--workers`` processes).
``stitch``
    ``stitch-map`` over the crops + ``stitch_all``: the crops' packets are copied into the MP4s (default ``auto``
    mode: crops of one run share their stream parameters), and again with ``--mode reencode`` (decode the crops,
    encode H.264). Each clip is used at most once; clips the map leaves over are not stitched, and the stitch time
    is scaled to all clips for the pipeline figure.

Reported: clips/s of ``plain``, of ``crop``, and of the pipeline ``crop + stitch`` (clips cropped / total seconds),
and the ratios to ``plain``. Best of ``--repeat`` runs each (a shared machine only ever slows a run down).
Prints a Markdown snippet for docs/benchmarks.md. No assertions: it measures.

Examples::

    python bench/bench_curation_video.py                       # 960x540, 12 clips x 60 frames
    python bench/bench_curation_video.py --width 1920 --height 1080 --clips 8 --frames 90 --workers 2
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import TESTS, machine_info

sys.path.insert(0, str(TESTS))  # the synthetic NTU fixture

# Actions chosen so that the stitching map uses every clip (groups and random sets of 2-5).
ACTIONS = (1, 2, 3, 4, 8, 9, 14, 15, 11, 12, 23, 35, 5, 6, 7, 41, 44, 45, 26, 27, 97, 98)


def make_clips(root: Path, n: int, frames: int, width: int, height: int) -> list[Path]:
    from ntu_fixture import make_skeleton, render_clip

    from llavidal.curation.ntu import NTUName, write_skeleton_npy
    from llavidal.video.io import write_video

    (root / "rgb").mkdir(parents=True)
    (root / "skeletons").mkdir()
    out = []
    for a in (ACTIONS * (n // len(ACTIONS) + 1))[:n]:
        name = NTUName(1, 1, 1, len(out) // len(ACTIONS) + 1, a)
        d = make_skeleton(name, frames, (width, height), seed=0)
        write_skeleton_npy(d, root / "skeletons" / f"{name.stem}.skeleton.npy")
        out.append(write_video(root / "rgb" / f"{name.stem}_rgb.avi", render_clip(d, (width, height)), fps=30))
    return out


def plain(clips: list[Path], out: Path, size: int) -> int:
    """Decode + scale + encode every clip; returns frames written."""
    from llavidal.curation.crop import VideoWriter, open_video

    total = 0
    for clip in clips:
        container, stream, fps, _, _ = open_video(clip)
        with VideoWriter(out / clip.name, size, size, fps, "mpeg4") as w:
            for frame in container.decode(stream):
                w.write(frame.reformat(width=size, height=size, format="yuv420p", interpolation="BILINEAR"))
                total += 1
        container.close()
    return total


def timed(fn, repeat: int, fresh: Path) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=540)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--slack", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="crop processes")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)

    import av
    import numpy as np

    from llavidal.curation.crop import CropConfig, crop_dataset
    from llavidal.curation.stitch import build_stitch_map, collect_clips, stitch_all
    from llavidal.io_utils import atomic_write_json

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_curation_"))
    try:
        t0 = time.perf_counter()
        clips = make_clips(work / "ntu", args.clips, args.frames, args.width, args.height)
        print(f"made {len(clips)} clips of {args.frames} frames at {args.width}x{args.height} "
              f"in {time.perf_counter() - t0:.1f} s")
        t_plain, frames = timed(lambda: plain(clips, work / "plain", args.size), args.repeat, work / "plain")
        cfg = CropConfig(slack=args.slack, size=args.size, workers=args.workers, progress=False)
        t_crop, m = timed(lambda: crop_dataset(work / "ntu", work / "crops", cfg), args.repeat, work / "crops")
        assert m["this_run"]["cropped"] == len(clips), m["failures_this_run"]

        def stitch():
            smap, _ = build_stitch_map(collect_clips(work / "crops")[0], seed=0)
            atomic_write_json(work / "map.json", smap)
            return stitch_all(work / "crops", work / "map.json", work / "stitched", progress=False), smap

        t_stitch, (sm, smap) = timed(stitch, args.repeat, work / "stitched")
        used = sum(len(v) for v in smap.values())
        assert sm["this_run"]["failed"] == 0, sm["failures_this_run"]
        assert sm["this_run"]["copied"] == len(smap), "crops of one run should be joined by copying packets"

        def reencode():
            return stitch_all(work / "crops", work / "map.json", work / "stitched_re", progress=False,
                              mode="reencode")

        t_re, _ = timed(reencode, args.repeat, work / "stitched_re")
        n = len(clips)
        fig = {
            "clips": n, "frames_per_clip": args.frames, "source": f"{args.width}x{args.height}",
            "size": args.size, "workers": args.workers, "frames_plain": frames,
            "plain_s": round(t_plain, 3), "crop_s": round(t_crop, 3), "stitch_s": round(t_stitch, 3),
            "stitch_reencode_s": round(t_re, 3),
            "stitched_videos": len(smap), "clips_stitched": used,
            "plain_clips_per_s": round(n / t_plain, 2), "crop_clips_per_s": round(n / t_crop, 2),
            "stitch_clips_per_s": round(used / t_stitch, 2),
            "pipeline_clips_per_s": round(n / (t_crop + t_stitch * n / max(used, 1)), 2),
            "pipeline_reencode_clips_per_s": round(n / (t_crop + t_re * n / max(used, 1)), 2),
        }
        fig["ratio_crop"] = round(fig["crop_clips_per_s"] / fig["plain_clips_per_s"], 3)
        fig["ratio_pipeline"] = round(fig["pipeline_clips_per_s"] / fig["plain_clips_per_s"], 3)
        fig["ratio_pipeline_reencode"] = round(fig["pipeline_reencode_clips_per_s"] / fig["plain_clips_per_s"], 3)
        env = machine_info(numpy=np.__version__, av=av.__version__,
                           ffmpeg=".".join(map(str, av.library_versions["libavcodec"])))
        print(json.dumps({**fig, **env}, indent=2))
        cmd = "python bench/bench_curation_video.py " + " ".join(argv if argv is not None else sys.argv[1:])
        print("\n--- Markdown for docs/benchmarks.md ---\n")
        print("## Video curation throughput (issue 6)\n")
        print("**Goal:** `curate crop` + `curate stitch` process clips at >= 0.7x the rate of a plain decode + "
              "encode of the same clips.\n")
        print(f"**Command:** `{cmd.strip()}` — {n} synthetic NTU clips (MPEG-4 AVI, {args.width}x{args.height}, "
              f"{args.frames} frames), output {args.size}x{args.size}, crop workers {args.workers}; best of "
              f"{args.repeat}. Machine: {env['cpu_count']} CPUs ({env['processor']}), load {env['loadavg'][0]:.1f}; "
              f"Python {env['python']}, PyAV {env['av']} (libavcodec {env['ffmpeg']}).\n")
        print("| stage | seconds | clips/s | vs plain |")
        print("|---|---|---|---|")
        print(f"| plain decode + scale + encode | {fig['plain_s']} | {fig['plain_clips_per_s']} | 1.00 |")
        print(f"| crop (skeleton, box, pad, scale, encode, keypoints) | {fig['crop_s']} | "
              f"{fig['crop_clips_per_s']} | {fig['ratio_crop']:.2f} |")
        print(f"| stitch, copy mode (default for crops; {used} clips into {len(smap)} videos) | {fig['stitch_s']} | "
              f"{fig['stitch_clips_per_s']} | - |")
        print(f"| stitch, `--mode reencode` (H.264 crf 18 veryfast) | {fig['stitch_reencode_s']} | "
              f"{round(used / t_re, 2)} | - |")
        print(f"| **crop + stitch** | {round(t_crop + t_stitch * n / max(used, 1), 3)} | "
              f"{fig['pipeline_clips_per_s']} | **{fig['ratio_pipeline']:.2f}** |")
        print(f"| crop + stitch `--mode reencode` | {round(t_crop + t_re * n / max(used, 1), 3)} | "
              f"{fig['pipeline_reencode_clips_per_s']} | {fig['ratio_pipeline_reencode']:.2f} |")
        if args.json:
            atomic_write_json(args.json, {**fig, **env, "command": cmd})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cost of ``llavidal eval report``: seconds to build the page and its size, with and without video frames.

Two real ``eval run`` outputs on an MVBench-format file of ``--items`` items (the tiny model: one by option
log-likelihood, one generating), every item with a feature file and a small raw video beside it; then the report is
built from both, once without frames and once with ``--frames`` frames for ``--frame-items`` items per run.

    python bench/bench_report.py --items 300 --out /tmp/bench_report
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common
import numpy as np


def build(root: Path, items: int) -> tuple[Path, Path, Path]:
    from llavidal.features import save_feature
    from llavidal.model.tiny import make_tiny
    from llavidal.video.io import write_video

    base = make_tiny(root / "base") if not (root / "base" / "config.json").is_file() else root / "base"
    videos = root / "videos"
    rng = np.random.default_rng(0)
    records = []
    for i in range(items):
        name = f"clip_{i:05d}.mp4"
        if not (videos / name).is_file():
            write_video(videos / name, (rng.random((24, 48, 64, 3)) * 255).astype(np.uint8), fps=8)
            save_feature(rng.standard_normal((8, 1024)).astype(np.float16), videos / name.replace(".mp4", ".pkl"))
        options = ["Opened the door.", "Sat on the bed.", "Took the towel.", "Drank water."]
        records.append({"video": name, "question": f"What did the person do first in clip {i}?",
                        "candidates": options, "answer": options[i % 4]})
    qa = root / "action_sequence.json"
    qa.write_text(json.dumps(records))
    return base, qa, videos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--frame-items", type=int, default=100)
    p.add_argument("--out", default="/tmp/bench_report")
    args = p.parse_args()
    from llavidal.cli import main as cli
    from llavidal.eval.report import ReportConfig, find_runs, render

    root = Path(args.out)
    base, qa, videos = build(root, args.items)
    common = ["eval", "run", "--task", "mvbench", "--qa-file", str(qa), "--video-dir", str(videos), "--base", str(base)]
    t0 = time.perf_counter()
    cli(common + ["--output", str(root / "runs" / "loglik"), "--mcq-mode", "loglik"])
    cli(common + ["--output", str(root / "runs" / "generate"), "--max-new-tokens", "8", "--batch-size", "8"])
    eval_s = time.perf_counter() - t0
    figures = {"items": args.items, "runs": 2, "eval_run_s": round(eval_s, 1)}
    for frames in (0, args.frames):
        t0 = time.perf_counter()
        runs = find_runs([root / "runs" / "loglik", root / "runs" / "generate"])
        page = render(runs, ReportConfig(frames=frames, frame_items=args.frame_items))
        seconds = time.perf_counter() - t0
        (root / f"report_frames{frames}.html").write_text(page)
        figures[f"frames={frames}"] = {"seconds": round(seconds, 2), "MiB": round(len(page.encode()) / 2**20, 2),
                                       "frame_images": page.count("<img class='frame'")}
    print(json.dumps({"figures": figures, "machine": _common.machine_info()}, indent=2))


if __name__ == "__main__":
    main()

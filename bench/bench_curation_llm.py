#!/usr/bin/env python
"""Curation LLM throughput: ``curate captions`` and ``curate qa`` requests/s against a loopback OpenAI-compatible
stub with a fixed latency, at several concurrencies.

The stub (``tests/openai_stub.py``) runs in a **separate process**, as a real server would, and answers every
request after ``--latency`` seconds (100 ms by default) with one reply that both steps accept: a JSON list of three
question-answer pairs, one of them about the order of actions (the captions step takes it as a caption). Each row
runs the real step end to end on fresh output folders: for captions, decoding the generated videos, sampling 2
frames per second, JPEG + base64 encoding, the request, the append-only shard file; for QA, prompt rendering, the
request, reply parsing and validation, the results file and the training JSON. The ideal rate is
``concurrency / latency``; ``efficiency`` is the measured share of it. No speed asserts: the figures go to
docs/benchmarks.md.

Examples::

    python bench/bench_curation_llm.py
    python bench/bench_curation_llm.py --latency 0.1 --concurrency 1,4,16 --videos 16 --json /tmp/bench_curation.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_info

REPLY = json.dumps([
    {"Q": "In what order does the person do things?", "A": "The person first drinks water, then sits down."},
    {"Q": "What does the person hold?", "A": "A blue cup."},
    {"Q": "Where does it happen?", "A": "In a living room with a grey sofa."},
])


class StubProcess:
    """``tests/openai_stub.py`` in a child process; ``base_url`` once it listens; ``count()`` asks its counter."""

    def __init__(self, latency: float):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_stub.py"), "--latency",
                                      str(latency), "--default", REPLY],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"stub did not start: {self.base_url!r}")

    def count(self) -> int:
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["count"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_inputs(root: Path, n_videos: int, seconds: float, n_qa_videos: int) -> tuple[Path, Path, Path]:
    """``n_videos`` videos of ``seconds`` s (64x64, 8 fps) for captions; descriptions + actions for QA."""
    import numpy as np

    from llavidal.video.io import write_video

    vids = root / "videos"
    rng = np.random.default_rng(0)
    for i in range(n_videos):
        frames = rng.integers(0, 255, size=(int(seconds * 8), 64, 64, 3), dtype=np.uint8)
        write_video(vids / f"{1 + i // 10:03d}_video_{1 + i % 10:03d}.mp4", frames, fps=8)
    names = [f"{1 + i // 10:03d}_video_{1 + i % 10:03d}" for i in range(n_qa_videos)]
    actions = root / "actions.json"
    actions.write_text(json.dumps({n: {"actions": ["drink water", "sit down"],
                                       "sentence": "The person drinks water, then sits down."} for n in names}))
    desc = root / "descriptions.json"
    text = " ".join(["The person drinks water from a blue cup and then sits down on a grey sofa."] * 12)
    desc.write_text(json.dumps({n: {"description": text, "word_count": len(text.split()), "in_range": True}
                                for n in names}))
    return vids, actions, desc


def run_captions(vids: Path, out: Path, base_url: str, concurrency: int, procs: int) -> dict:
    from llavidal.curation.captions import CaptionConfig, caption_videos
    from llavidal.curation.steps import CurationConfig

    cfg = CaptionConfig(videos=vids, out=out, llm=CurationConfig(base_url=base_url, model="stub", timeout=30),
                        concurrency=concurrency, procs=procs, progress=False)
    return caption_videos(cfg)


def run_qa(desc: Path, actions: Path, out: Path, base_url: str, concurrency: int) -> dict:
    from llavidal.curation.qa import generate_qa
    from llavidal.curation.steps import CurationConfig
    from llavidal.llm import LLMClient

    with LLMClient(CurationConfig(base_url=base_url, model="stub", timeout=30)) as client:
        return generate_qa(desc, actions, out / "adlx_train.json", client, concurrency=concurrency, progress=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.1, help="server seconds per request (default 0.1)")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated (default 1,4,16)")
    ap.add_argument("--videos", type=int, default=16, help="videos for the captions rows (default 16)")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each video (default 4 s: 8 captions)")
    ap.add_argument("--qa-videos", type=int, default=64, help="videos for the QA rows, 2 requests each (default 64)")
    ap.add_argument("--procs", type=int, default=1, help="caption processes (default 1)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    stub = StubProcess(args.latency)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench_curation_") as tmp:
            tmp = Path(tmp)
            vids, actions, desc = make_inputs(tmp, args.videos, args.seconds, args.qa_videos)
            # warm-up (not timed): imports, the decoder, the HTTP connection pool
            warm = tmp / "warm"
            make_inputs(warm, 1, 1.0, 1)
            run_captions(warm / "videos", warm / "caps", stub.base_url, 1, 1)
            run_qa(warm / "descriptions.json", warm / "actions.json", warm, stub.base_url, 1)
            for step in ("captions", "qa"):
                for c in levels:
                    out = tmp / f"{step}_c{c}"
                    before = stub.count()
                    t0 = time.perf_counter()
                    if step == "captions":
                        m = run_captions(vids, out, stub.base_url, c, args.procs)
                        items = m["outputs"]["frames_complete"]
                    else:
                        m = run_qa(desc, actions, out, stub.base_url, c)
                        items = m["outputs"]["records"] // 3
                    wall = time.perf_counter() - t0
                    n = stub.count() - before
                    ideal = c * (args.procs if step == "captions" else 1) / args.latency
                    rows.append({"step": step, "concurrency": c, "procs": args.procs if step == "captions" else 1,
                                 "requests": n, "items_ok": items, "failed": m["failed"]["count"],
                                 "wall_s": round(wall, 3), "req_per_s": round(n / wall, 2),
                                 "ideal_req_per_s": round(ideal, 1), "efficiency": round(n / wall / ideal, 3)})
                    r = rows[-1]
                    print(f"{step:8s} c={c:<3d} {r['requests']:5d} requests in {wall:6.2f} s = {r['req_per_s']:7.1f} "
                          f"req/s (ideal {ideal:.0f}, {100 * r['efficiency']:.0f} %)", flush=True)
    finally:
        stub.close()

    env = machine_info(latency_s=args.latency)
    print()
    hdr = ["step", "concurrency", "requests", "wall s", "req/s", "ideal req/s", "efficiency"]
    lines = [hdr] + [[r["step"], str(r["concurrency"]), str(r["requests"]), f"{r['wall_s']:.2f}",
                      f"{r['req_per_s']:.1f}", f"{r['ideal_req_per_s']:.0f}", f"{100 * r['efficiency']:.0f} %"]
                     for r in rows]
    widths = [max(len(x[i]) for x in lines) for i in range(len(hdr))]
    for k, ln in enumerate(lines):
        print("  ".join(v.ljust(w) for v, w in zip(ln, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print("\nMarkdown for docs/benchmarks.md:\n")
    print("### Curation LLM throughput (`bench/bench_curation_llm.py`)\n")
    print(f"Loopback OpenAI-compatible stub in a separate process, {1000 * args.latency:.0f} ms per request; the "
          f"real steps end to end (captions: decode, 2 fps sampling, JPEG data URL, shard file; QA: prompt, parse, "
          f"results file, training JSON). {env['cpu_count']} CPUs, Python {env['python']}.\n")
    print("| step | concurrency | requests | wall (s) | requests/s | ideal | efficiency |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['concurrency']} | {r['requests']} | {r['wall_s']:.2f} | {r['req_per_s']:.1f} | "
              f"{r['ideal_req_per_s']:.0f} | {100 * r['efficiency']:.0f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

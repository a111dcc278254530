#!/usr/bin/env python
"""Judge throughput: ``Judge.judge_many`` against a loopback OpenAI-compatible stub with a fixed latency.

Issue item "judge throughput": with ``concurrency=16`` and a server that takes 100 ms per request the ideal is
16 / 0.1 s = 160 requests/s; the goal is at least 80 % of that (128 req/s). ``concurrency=1`` is measured for
comparison (ideal 10 req/s).

The stub (``tests/openai_stub.py``) runs in a **separate process** by default, so that the client's threads and
the server's threads do not share one interpreter lock, as with a real judge server; ``--in-process`` puts it in
this process instead. Each request is a real judge call built with the default prompt set (the correctness
prompt, about 1.5 kB of messages), parsed and validated as in an evaluation run. Rows:

``c=N``               N requests in flight at most, no cache
``c=N +cache (cold)`` the same with a fresh SQLite cache: every reply is also written to the cache
``c=N +cache (warm)`` the same requests again: all answered from the cache, the server is not contacted

Each row is timed ``--repeats`` times after a warm-up batch (connection pool filled); the table shows the median
run and the best. No speed asserts: the figures and the goal go to docs/benchmarks.md.

Examples::

    python bench/bench_judge.py
    python bench/bench_judge.py --latency 0.1 --concurrency 1,16,32 --requests 800 --json /tmp/bench_judge.json
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, TESTS, machine_info

sys.path.insert(0, str(TESTS))  # the loopback OpenAI stub

from llavidal.eval.judge import Judge, JudgeConfig  # noqa: E402
from llavidal.eval.prompts import default_prompt_set  # noqa: E402


class StubProcess:
    """``tests/openai_stub.py`` in a child process; ``base_url`` once it listens."""

    def __init__(self, latency: float):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_stub.py"), "--latency",
                                      str(latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"stub did not start: {self.base_url!r}")

    def ask(self, cmd: str) -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


class StubInProcess:
    def __init__(self, latency: float):
        from openai_stub import OpenAIStub

        self.stub = OpenAIStub(latency=latency).start()
        self.base_url = self.stub.base_url

    def ask(self, cmd: str) -> str:
        if cmd == "reset":
            self.stub.reset_counts()
            return "ok"
        return json.dumps({"count": self.stub.count, "max_in_flight": self.stub.max_in_flight})

    def close(self) -> None:
        self.stub.stop()


def make_requests(n: int, tag: str):
    ps = default_prompt_set()
    return [ps.score_request("correctness", f"What does the person do in video {tag}-{i}?",
                             "The person walks into the kitchen, opens the fridge and pours a glass of milk.",
                             f"A person enters a kitchen and takes milk from the fridge ({tag}-{i}).",
                             id=f"{tag}-{i}") for i in range(n)]


def time_batch(judge: Judge, reqs, concurrency: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    results = judge.judge_many(reqs, concurrency=concurrency, progress=False)
    return time.perf_counter() - t0, results


def run_row(server, base_url: str, concurrency: int, n: int, repeats: int, cache: str | None, tag: str) -> dict:
    cfg = JudgeConfig(base_url=base_url, model="stub-judge", timeout=30.0)
    runs = []
    sent = failures = 0
    max_in_flight = 0
    with tempfile.TemporaryDirectory() as tmp:
        with Judge(cfg) as warm_judge:  # fill the connection pool, import everything, outside the timing
            time_batch(warm_judge, make_requests(min(2 * concurrency, n), f"{tag}-warm"), concurrency)
            shared_client = warm_judge.llm.client
            for rep in range(repeats):
                db = None if cache is None else os.path.join(tmp, f"cache{rep}.sqlite")
                reqs = make_requests(n, f"{tag}-{rep}")
                judge = Judge(cfg, cache=db, client=shared_client)
                if cache == "warm":  # fill the cache first; the timed batch is all hits
                    time_batch(judge, reqs, concurrency)
                server.ask("reset")
                elapsed, results = time_batch(judge, reqs, concurrency)
                stats = json.loads(server.ask("count"))
                sent += stats["count"]
                max_in_flight = max(max_in_flight, stats["max_in_flight"])
                failures += sum(not r.ok for r in results)
                lat = sorted(r.latency_s for r in results)
                runs.append({"elapsed_s": elapsed, "req_per_s": n / elapsed,
                             "p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))]})
                if judge.cache is not None:
                    judge.cache.close()
    med = sorted(runs, key=lambda r: r["req_per_s"])[len(runs) // 2]
    return {"concurrency": concurrency, "requests": n, "cache": cache, "repeats": repeats,
            "req_per_s_median": med["req_per_s"], "req_per_s_best": max(r["req_per_s"] for r in runs),
            "p50_ms": med["p50_ms"], "p95_ms": med["p95_ms"], "server_requests": sent,
            "server_max_in_flight": max_in_flight, "failures": failures, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.1, help="server latency per request, seconds")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=800, help="requests per timed batch (concurrency > 1)")
    ap.add_argument("--requests-serial", type=int, default=50, help="requests per timed batch at concurrency 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cache-rows", action="store_true", help="skip the SQLite cache rows")
    ap.add_argument("--in-process", action="store_true", help="run the stub server in this process")
    ap.add_argument("--json", help="write all figures here")
    args = ap.parse_args(argv)

    import openai

    levels = [int(c) for c in args.concurrency.split(",")]
    server = StubInProcess(args.latency) if args.in_process else StubProcess(args.latency)
    rows = []
    try:
        for c in levels:
            n = args.requests_serial if c == 1 else args.requests
            modes = [None] if (c == 1 or args.no_cache_rows) else [None, "cold", "warm"]
            for mode in modes:
                row = run_row(server, server.base_url, c, n, args.repeats, mode, f"c{c}{mode or ''}")
                row["ideal_req_per_s"] = None if mode == "warm" else c / args.latency
                rows.append(row)
                print(f"  done: c={c} cache={mode} {row['req_per_s_median']:.1f} req/s", file=sys.stderr)
    finally:
        server.close()

    env = machine_info(openai=openai.__version__, stub="in-process" if args.in_process else "separate process",
                       latency_s=args.latency)
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + (argv or sys.argv[1:]))
    print(f"\ncommand: {cmd}")
    print(f"environment: {env}\n")
    print("| concurrency | cache | requests | req/s (median) | req/s (best) | % of ideal | p50 ms | p95 ms "
          "| sent to server | max in flight | failures |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ideal = r["ideal_req_per_s"]
        pct = "—" if ideal is None else f"{100 * r['req_per_s_median'] / ideal:.0f} %"
        cache = {None: "none", "cold": "SQLite, cold (writes)", "warm": "SQLite, warm (all hits)"}[r["cache"]]
        print(f"| {r['concurrency']} | {cache} | {r['requests']} | {r['req_per_s_median']:.1f} | "
              f"{r['req_per_s_best']:.1f} | {pct} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['server_requests']} | {r['server_max_in_flight']} | {r['failures']} |")
    goal_rows = [r for r in rows if r["concurrency"] == 16 and r["cache"] is None]
    if goal_rows:
        g = goal_rows[0]["req_per_s_median"]
        print(f"\ngoal: concurrency 16 at {args.latency * 1000:.0f} ms >= 80 % of {16 / args.latency:.0f} req/s "
              f"= {0.8 * 16 / args.latency:.0f} req/s -> measured {g:.1f} req/s "
              f"({'met' if g >= 0.8 * 16 / args.latency else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": cmd, "environment": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

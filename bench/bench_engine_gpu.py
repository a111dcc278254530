#!/usr/bin/env python
"""The generation engine on a GPU, LLaMA-7B shape (random weights, bf16): one command for every figure.

Model: hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32012 (the tiny base's tokenizer and modality ids;
random weights created on the device, so a reply never ends at ``</s>``: reply lengths are set per request and
said so). Figures, each printed as soon as measured and collected in ``--json``:

``decode``       tokens/s at batch 1, 256 new tokens after a 356-row video prompt: today's ``model.generate``,
                 the engine (eager), and the engine with the decode step ``torch.compile``'d (CUDA graphs); the
                 compiled/eager ratio is what ``llavidal.engine.config.COMPILE_BY_DEFAULT["cuda"]`` should follow
``ttft``         submit -> first token for one 356-row video prompt (engine, idle GPU), median of 5
``concurrency``  aggregate tokens/s with 32 requests of 256 tokens on 32 slots (engine, eager and compiled)
``eval``         a 512-item ADL-X-shaped slice (356 video rows per item; 5/6 multiple choice with 8-32-token
                 replies, 1/6 description items of 3 questions with 150-300-token replies, the mix of the six
                 benchmarks) through ``Engine.imap`` at ``--batch`` slots, extrapolated to the whole suite
                 (``SUITE`` below: items per benchmark)
``4bit``         peak GPU memory of ``--load-in-4bit`` (bitsandbytes NF4): load, a 356-row prompt and 256 tokens

    PYTHONPATH=. python bench/bench_engine_gpu.py --json /tmp/bench_engine_gpu.json         # H100/H200, ~6 min
    PYTHONPATH=. python bench/bench_engine_gpu.py --preset tiny --device cpu --skip 4bit     # plumbing check
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llavidal import LlavidalForCausalLM, load_pretrained  # noqa: E402
from llavidal.engine import Engine, EngineConfig  # noqa: E402
from llavidal.inference import GenerationOptions, Query, make_request, prepare_inputs  # noqa: E402
from llavidal.model.tiny import make_tiny  # noqa: E402

SHAPES = {"7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, head_dim=128, vocab_size=32012),
          "tiny": None}
# items per benchmark of the suite; description benchmarks ask 3 questions per item (+ consistency paraphrases)
SUITE = {"charades-ar": 1814, "smarthome-ar": 5405, "lemma-tc": 528, "tsu-tc": 2794}
SUITE_DESC = {"charades-desc": 1800, "tsu-desc": 300}  # TSU-Description: ~300 one-minute clips (estimate)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build(base: Path, preset: str, device: str, dtype: torch.dtype):
    model, tok = load_pretrained(base, device=device if SHAPES[preset] is None else "cpu", dtype=dtype)
    if SHAPES[preset] is None:
        return model, tok
    config = copy.deepcopy(model.config)
    for k, v in SHAPES[preset].items():
        setattr(config, k, v)
    del model
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavidalForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval(), tok


def video(i: int = 0) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((356, 1024)).astype(np.float16)


def req(model, tok, n: int, i: int = 0, question: str = "What is the person doing in this video?"):
    return make_request(model, tok, Query(question, video=video(i % 8)), GenerationOptions(max_new_tokens=n))


def bench_decode(model, tok, args, out: dict) -> None:
    n = args.new_tokens
    q = [Query("What is the person doing in this video?", video=video())]
    opts = GenerationOptions(max_new_tokens=n)
    one = GenerationOptions(max_new_tokens=1)

    def gen(o):
        batch = prepare_inputs(model, tok, q, o)
        with torch.inference_mode():
            model.generate(**batch, **o.generate_kwargs(tok))

    runs = {"generate": (lambda: gen(one), lambda: gen(opts))}
    engines = {"engine": Engine(model, tok, EngineConfig(max_batch_size=1, compile=False))}
    if "compile" not in args.skip:
        engines["engine compiled"] = Engine(model, tok, EngineConfig(max_batch_size=1, compile=True))
    for name, e in engines.items():
        t0 = time.perf_counter()
        e.generate([req(model, tok, n)])  # warm-up / compilation
        out.setdefault("warmup_s", {})[name] = time.perf_counter() - t0
        runs[name] = (lambda e=e: e.generate([req(model, tok, 1)]), lambda e=e: e.generate([req(model, tok, n)]))
    gen(opts)
    times = {k: [] for k in runs}
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            first, full = runs[name]
            sync(args.device)
            t0 = time.perf_counter()
            first()
            sync(args.device)
            t1 = time.perf_counter()
            full()
            sync(args.device)
            times[name].append((time.perf_counter() - t1) - (t1 - t0))
    tps = {k: (n - 1) / statistics.median(v) for k, v in times.items()}
    out["decode_b1_tokens_per_s"] = tps
    if "engine compiled" in tps:
        out["compiled_vs_eager"] = tps["engine compiled"] / tps["engine"]
        out["recommend_compile_on_cuda"] = out["compiled_vs_eager"] >= 1.1
    for e in engines.values():
        e.close()


def bench_ttft(model, tok, args, out: dict) -> None:
    e = Engine(model, tok, EngineConfig(max_batch_size=1))
    e.generate([req(model, tok, 2)])
    ttft = [e.generate([req(model, tok, 2, i)])[0].first_token_s for i in range(5)]
    out["ttft_356_rows_s"] = statistics.median(ttft)
    out["prompt_tokens"] = len(req(model, tok, 1).input_ids)
    e.close()


def bench_concurrency(model, tok, args, out: dict) -> None:
    n = args.new_tokens
    for name, compiled in (("eager", False), ("compiled", True)):
        if compiled and "compile" in args.skip:
            continue
        e = Engine(model, tok, EngineConfig(max_batch_size=32, compile=compiled))
        e.generate([req(model, tok, 8, i) for i in range(32)])  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        res = e.generate([req(model, tok, n, i) for i in range(32)])
        sync(args.device)
        dt = time.perf_counter() - t0
        out[f"concurrency32_{name}_tokens_per_s"] = sum(len(r.token_ids) for r in res) / dt
        e.close()


MCQ_Q = ("What is the person doing? Answer with one of the choices. (A) drinking water (B) reading a book "
         "(C) sitting down (D) standing up")


def slice_requests(model, tok, n: int, kind: str, seed: int = 0):
    """((item, question), request) of ``n`` ADL-X-shaped items: MCQ items ask one question (8-32-token reply),
    description items three (150-300 tokens each: the question and its two consistency paraphrases)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        if kind == "mcq":
            yield (i, 0), req(model, tok, int(rng.integers(8, 33)), i, MCQ_Q)
        else:
            for k in range(3):
                yield (i, k), req(model, tok, int(rng.integers(150, 301)), i, "Describe the video in detail.")


def bench_eval(model, tok, args, out: dict) -> None:
    """The slice in the suite's proportions (MCQ vs description items), each kind timed on its own, then the suite's
    minutes = MCQ items / MCQ items-per-s + description items / description items-per-s."""
    e = Engine(model, tok, EngineConfig(max_batch_size=args.batch, compile="compile" not in args.skip))
    list(e.imap(slice_requests(model, tok, 8, "mcq", seed=1)))  # warm-up (and compilation)
    list(e.imap(slice_requests(model, tok, 4, "desc", seed=1)))
    suite_mcq, suite_desc = sum(SUITE.values()), sum(SUITE_DESC.values())
    n_desc = max(1, round(args.items * suite_desc / (suite_mcq + suite_desc)))
    counts = {"mcq": args.items - n_desc, "desc": n_desc}
    rate = {}
    for kind, n in counts.items():
        sync(args.device)
        t0 = time.perf_counter()
        done = {key[0] for key, _ in e.imap(slice_requests(model, tok, n, kind))}
        sync(args.device)
        assert len(done) == n
        rate[kind] = n / (time.perf_counter() - t0)
    minutes = (suite_mcq / rate["mcq"] + suite_desc / rate["desc"]) / 60
    out["eval_slice"] = {"items": counts, "items_per_s": rate, "slots": args.batch,
                         "suite_items": {"mcq": suite_mcq, "description": suite_desc},
                         "suite_minutes_extrapolated": minutes,
                         "note": "random weights: reply lengths set per request (MCQ 8-32, description 3 x 150-300 "
                                 "tokens); TSU-Description counted as an estimated 300 clips"}
    e.close()


def bench_4bit(base: Path, args, out: dict) -> None:
    from llavidal.model.placement import place_model

    dtype = DTYPES[args.dtype]
    cpu_model, tok = build(base, args.preset, "cpu", dtype)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    q = place_model(cpu_model, quantization="4bit", device=torch.device(args.device), dtype=dtype)
    del cpu_model
    gc.collect()
    loaded = torch.cuda.max_memory_allocated()
    e = Engine(q, tok, EngineConfig(max_batch_size=1, max_cache_len=1024))
    res = e.generate([req(q, tok, args.new_tokens)])
    sync(args.device)
    out["4bit"] = {"peak_gib": torch.cuda.max_memory_allocated() / 2**30, "after_load_gib": loaded / 2**30,
                   "footprint_gib": q.get_memory_footprint() / 2**30, "tokens": len(res[0].token_ids),
                   "kv_cache": "1 slot x 1024 positions"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32, help="slots of the eval slice")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=["decode", "ttft", "concurrency", "eval", "4bit",
                                                              "compile"])
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_engine_gpu_"))
    base = work / "tiny-base"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=0)
    out: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                 "torch": torch.__version__, "preset": args.preset, "dtype": args.dtype}
    import transformers

    out["transformers"] = transformers.__version__
    model, tok = build(base, args.preset, args.device, DTYPES[args.dtype])
    out["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    steps = [("decode", bench_decode), ("ttft", bench_ttft), ("concurrency", bench_concurrency),
             ("eval", bench_eval)]
    for name, fn in steps:
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        fn(model, tok, args, out)
        print(f"[{name} done in {time.perf_counter() - t0:.0f} s] " + json.dumps(out, default=float), flush=True)
    del model
    gc.collect()
    if "4bit" not in args.skip and args.device.startswith("cuda"):
        bench_4bit(base, args, out)
        print("[4bit] " + json.dumps(out["4bit"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

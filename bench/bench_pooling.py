#!/usr/bin/env python
"""Video representations and what they cost: tokens per clip and prefill time, spatio-temporal rows vs pooled grids.

For each representation of one clip — the default spatio-temporal rows ``[356, 1024]`` (100 temporal + 256 spatial),
and per-frame CLIP patch tokens ``[16, 256, 1024]`` (16 kept frames, 16 x 16 patches) pooled adaptively to a grid
(docs/design.md#pooled-video) — the script reports:

``tokens``      video tokens per clip and the whole prompt (a question, the video span, the chat template)
``pool_ms``     pooling one clip's per-frame tokens to the grid (data side, CPU, float32), median
``prefill_ms``  one forward over the prompt (video projector + splice + decoder, logits of the last position only),
                median; ``prefill_ratio`` = prefill time / the 356-row prompt's

Model shapes (``--preset``, random weights): ``small`` (hidden 512, 8 layers: a CPU-sized decoder), ``7b``
(LLaMA-7B: hidden 4096, 32 layers; 2048 positions, so grids above ~1950 tokens do not fit and are reported as
such), ``tiny`` (the test model). Figures are printed as measured and collected in ``--json``.

    PYTHONPATH=. python bench/bench_pooling.py --preset small --threads 1 --json /tmp/bench_pooling.json  # CPU
    PYTHONPATH=. python bench/bench_pooling.py --preset 7b --device cuda --dtype bf16 --json /tmp/p.json  # GPU
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
import torch

from llavidal import LlavidalForCausalLM, load_pretrained
from llavidal.inference import GenerationOptions, Query, prepare_inputs
from llavidal.model.tiny import make_tiny
from llavidal.video.pool import PoolGrid, pool_frames, set_frame_pooling

GRIDS = ("16x16x16", "16x12x12", "16x8x8", "8x8x8", "8x4x4", "4x4x4", "4x2x2")
FRAMES, SIDE, WIDTH = 16, 16, 1024  # kept frames, patches per side (ViT-L/14 at 224 px), CLIP width


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build(base: Path, preset: str, device: str, dtype: torch.dtype):
    model, tok = load_pretrained(base, device="cpu", dtype=torch.float32)
    config = copy.deepcopy(model.config)
    for k, v in _common.MODEL_SHAPES[preset].items():
        setattr(config, k, v)
    config.max_position_embeddings = 2048 if preset == "7b" else 8192
    config.vocab_size = model.config.vocab_size  # the tiny tokenizer's ids
    del model
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavidalForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval(), tok


def median_ms(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(model, tok, features: np.ndarray, grid: PoolGrid | None, device: str, repeats: int) -> dict:
    """Tokens and prefill time of one question about one clip (the model's config set to the representation)."""
    from llavidal.constants import MODALITIES

    set_frame_pooling(MODALITIES["video"], model.config, None if grid is None else _pooling(grid))
    inputs = prepare_inputs(model, tok, [Query("What is the person doing in this video?", video=features)],
                            GenerationOptions(max_new_tokens=1))
    prompt = int(inputs["input_ids"].shape[1])

    @torch.inference_mode()
    def prefill():
        model(**inputs, logits_to_keep=1)

    return {"prompt_tokens": prompt, "prefill_ms": round(median_ms(prefill, device, repeats), 2)}


def _pooling(grid: PoolGrid):
    from llavidal.video.pool import FramePooling

    return FramePooling(grid, FRAMES)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(_common.MODEL_SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(_common.dtypes()))
    p.add_argument("--grids", default=",".join(GRIDS), help="comma-separated T x H x W grids")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch intra-op threads (1 is steadier on a shared CPU)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((FRAMES, SIDE * SIDE, WIDTH)).astype(np.float16)
    rows = rng.standard_normal((356, WIDTH)).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_tiny(Path(tmp) / "base", seed=0)
        model, tok = build(base, args.preset, args.device, _common.dtypes()[args.dtype])
    tok.model_max_length = model.config.max_position_embeddings
    limit = model.config.max_position_embeddings
    results = {"machine": _common.machine_info(args.device), "preset": args.preset, "dtype": args.dtype,
               "max_positions": limit, "runs": []}
    base_ms = None
    for name in ["rows", *args.grids.split(",")]:
        grid = None if name == "rows" else PoolGrid.parse(name)
        entry = {"representation": "spatio-temporal rows" if grid is None else f"pooled {grid}",
                 "video_tokens": 356 if grid is None else grid.tokens}
        if grid is not None:
            entry["pool_ms"] = round(median_ms(lambda g=grid: pool_frames(frames, g), "cpu", args.repeats), 2)
        if entry["video_tokens"] + 64 > limit:
            entry["prefill_ms"] = None
            entry["note"] = f"does not fit the model's {limit} positions"
        else:
            entry.update(measure(model, tok, rows if grid is None else frames, grid, args.device, args.repeats))
            base_ms = base_ms or entry["prefill_ms"]
            entry["prefill_ratio"] = round(entry["prefill_ms"] / base_ms, 3)
        results["runs"].append(entry)
        print(entry, flush=True)
    if args.json:
        _common.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

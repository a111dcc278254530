#!/usr/bin/env python
"""What a demo / chat user waits for: video upload → features, question → first streamed token, then tokens/s.

The model is LLaMA-7B-shaped (hidden 4096, 32 layers, 32 heads, MLP 11008; random weights, created on the device)
with the tiny base's tokenizer (vocabulary 1012 instead of 32012: the ``lm_head`` is ~2 % of the FLOPs), the CLIP
is the ViT-L/14 vision shape (random weights, ``make_tiny_clip``), the video an H.264 clip written here. Timed with
the package's public functions, as the demo calls them:

``featurize``  ``VideoFeaturizer(clip)(video)``: decode 100 frames, CLIP, pooling (the upload step)
``first token`` ``stream_answer(...)`` until its first piece (prompt prefill with the 356 video rows)
``tokens/s``   the remaining ``--new-tokens`` tokens of the same stream (greedy; a random model never stops early)

    PYTHONPATH=. python bench/bench_demo_latency.py --device cuda --dtype bf16
    PYTHONPATH=. python bench/bench_demo_latency.py --preset tiny            # CPU plumbing check, figures meaningless
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401 - the repository on sys.path

from llavidal import LlavidalForCausalLM, load_pretrained  # noqa: E402
from llavidal.inference import GenerationOptions, stream_answer  # noqa: E402
from llavidal.model.tiny import make_tiny  # noqa: E402
from llavidal.video.clip import TinyClipSpec, make_tiny_clip  # noqa: E402
from llavidal.video.extract import VideoFeaturizer  # noqa: E402
from llavidal.video.io import write_video  # noqa: E402

LLM = {"7b": {**{k: v for k, v in _common.MODEL_SHAPES["7b"].items() if k != "vocab_size"}, "num_key_value_heads": 32},
       "tiny": None}  # tiny: the make_tiny folder as it is
CLIP = {"7b": TinyClipSpec(vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24, vision_heads=16),
        "tiny": TinyClipSpec()}
DTYPES = _common.dtypes()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(LLM), default="7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the test video (30 fps, 320x240)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dtype = DTYPES[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_demo_"))
    base = work / "tiny-base"
    if not (base / "config.json").is_file():
        make_tiny(base, seed=0)
    clip = work / f"clip-{args.preset}"
    if not (clip / "model.safetensors").is_file():
        make_tiny_clip(clip, seed=0, spec=CLIP[args.preset])
    video = work / "video.mp4"
    if not video.is_file():
        n = int(args.seconds * 30)
        t = np.arange(n)[:, None, None, None]
        yy, xx = np.mgrid[0:240, 0:320]
        frames = (127 + 120 * np.sin(xx[None, :, :, None] / 19 + yy[None, :, :, None] / 23 + t / 7
                                     + np.arange(3)[None, None, None, :])).astype(np.uint8)
        write_video(video, frames, fps=30)

    model, tok = load_pretrained(base, device=args.device, dtype=dtype)
    if LLM[args.preset] is not None:  # same tokenizer and modality ids, 7B-shaped decoder (random, on the device)
        config = copy.deepcopy(model.config)
        for k, v in LLM[args.preset].items():
            setattr(config, k, v)
        config.head_dim = config.hidden_size // config.num_attention_heads
        del model
        torch.manual_seed(0)
        with torch.device(args.device):
            model = LlavidalForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
        model.eval()
    params = sum(p.numel() for p in model.parameters())

    featurizer = VideoFeaturizer(str(clip), device=args.device)
    featurizer(video)  # warm-up (kernels, decoder)
    feat_s, ttft, tps = [], [], []
    options = GenerationOptions(max_new_tokens=args.new_tokens)
    for _ in range(args.repeat):
        sync(args.device)
        t0 = time.perf_counter()
        feats = featurizer(video)
        sync(args.device)
        feat_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stream = stream_answer(model, tok, "What is the person doing in this video?", video=feats, options=options)
        first = next(stream)
        t1 = time.perf_counter()
        rest = "".join(stream)
        t2 = time.perf_counter()
        n = len(tok((first + rest), add_special_tokens=False)["input_ids"])
        ttft.append(t1 - t0)
        tps.append((n - 1) / (t2 - t1) if n > 1 else float("nan"))
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    result = {"preset": args.preset, "device": args.device, "gpu": gpu, "dtype": str(dtype).removeprefix("torch."),
              "llm_params_M": round(params / 1e6, 1), "video_seconds": args.seconds,
              "featurize_s": round(statistics.median(feat_s), 3), "first_token_s": round(statistics.median(ttft), 3),
              "tokens_per_s": round(statistics.median(tps), 1), "new_tokens": args.new_tokens,
              "repeat": args.repeat, "machine": _common.machine_info(args.device)}
    print(json.dumps(result, indent=2))
    print(f"\n| model | device | video → features | question → first token | tokens/s |\n|---|---|---:|---:|---:|\n"
          f"| {args.preset} ({result['llm_params_M']} M) | {gpu or args.device} {result['dtype']} | "
          f"{result['featurize_s']:.2f} s | {result['first_token_s']:.3f} s | {result['tokens_per_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

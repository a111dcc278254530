"""The original demo entry point, kept working: ``python llavidal/demo/video_demo.py --model-name BASE
--projection_path llavidal_weights.bin`` (same as ``llavidal demo --base BASE --projector ...``).

Every flag of the original parses. Differences, on purpose:

- ``--host`` defaults to 127.0.0.1 (the original bound 0.0.0.0, exposing the demo to the network); pass
  ``--host 0.0.0.0`` to do that;
- ``--conv-mode`` defaults to vicuna_v1_1, the template the weights were trained with (the original's llavidal_v1
  is still accepted);
- ``--projection_path`` has no default (the original pointed at a path on its authors' machine); without it the
  base folder's own projector is used;
- ``--controller-url`` and ``--model-list-mode`` (a multi-worker server the demo never used) are accepted and
  ignored; ``--moderate`` (OpenAI's moderation API) is not supported and says so;
- ``--concurrency-count`` is the number of generation requests served at once (default 1; more on a big GPU).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):  # run as a script: make the package importable
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    _root = str(_here.parents[1])
    if _root not in sys.path:
        sys.path.insert(0, _root)

log = logging.getLogger("llavidal.demo")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LLAVIDAL video chat demo (gradio)")
    # the original's flags
    p.add_argument("--host", type=str, default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; the original used 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one)")
    p.add_argument("--controller-url", type=str, default="http://localhost:8080", help="ignored (kept for old scripts)")
    p.add_argument("--concurrency-count", type=int, default=1, help="generation requests served at once")
    p.add_argument("--model-list-mode", type=str, default="once", choices=["once", "reload"],
                   help="ignored (kept for old scripts)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--moderate", action="store_true", help="not supported (needs OpenAI's moderation API)")
    p.add_argument("--embed", action="store_true", help="no title/intro")
    p.add_argument("--model-name", type=str, required=True, help="base model folder (LLaVA-7B-Lightening-v1-1)")
    p.add_argument("--vision_tower_name", type=str, default="openai/clip-vit-large-patch14",
                   help="CLIP folder or hub id for the video features")
    p.add_argument("--conv-mode", type=str, default=None,
                   help="vicuna_v1_1 (training), llavidal_v1 or chat; default: the model's own (vicuna_v1_1 for the "
                        "published model)")
    p.add_argument("--projection_path", type=str, default=None, help="projector file, e.g. llavidal_weights.bin")
    # what this version adds
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--attn", default="sdpa", help="attention: sdpa (default), eager, flash_attention_2")
    p.add_argument("--layout", choices=["current", "2024", "videochatgpt"], help="force a .bin projector's layout")
    p.add_argument("--max-frames", type=int, default=100, help="frames sampled per video (default 100)")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--max-video-seconds", type=float, default=600.0, help="refuse longer videos (0 = no limit)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="refuse larger uploads (0 = no limit)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="default of the slider")
    p.add_argument("--temperature", type=float, default=0.0, help="default of the slider (0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--system", help="system prompt overriding the template's")
    return p


def to_config(args):
    from llavidal.demo.app import DemoConfig
    from llavidal.prompting import TEMPLATE_NAMES

    if args.conv_mode is not None and args.conv_mode not in TEMPLATE_NAMES:
        raise SystemExit(f"error: --conv-mode {args.conv_mode!r}: choose one of {', '.join(TEMPLATE_NAMES)}")
    if args.moderate:
        raise SystemExit("error: --moderate is not supported by this version (it called OpenAI's moderation API)")
    return DemoConfig(base=args.model_name, projector=args.projection_path, clip=args.vision_tower_name,
                      device=args.device, dtype=args.dtype, attn=args.attn, layout=args.layout, decoder=args.decoder,
                      max_frames=args.max_frames, max_video_seconds=args.max_video_seconds,
                      max_upload_mb=args.max_upload_mb, template=args.conv_mode, system=args.system,
                      temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                      concurrency=args.concurrency_count, title=not args.embed, host=args.host, port=args.port,
                      share=args.share)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = to_config(args)
    from llavidal.demo.app import run_demo
    from llavidal.features import FeatureError
    from llavidal.model import CheckpointError

    try:
        return run_demo(cfg)
    except (FeatureError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

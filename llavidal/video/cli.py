"""Subcommands of the video pipeline: ``extract-video`` and ``make-tiny-clip``."""
from __future__ import annotations


def cmd_make_tiny_clip(args) -> int:
    from .clip import make_tiny_clip

    from .clip import TinyClipSpec

    spec = TinyClipSpec(vision_hidden_size=args.vision_hidden_size)
    out = make_tiny_clip(args.dir, seed=args.seed, spec=spec)
    print(f"wrote a tiny random CLIP (vision + text, tokenizer, image processor) to {out} (seed {args.seed})")
    return 0


def cmd_extract_video(args) -> int:
    from .extract import ExtractConfig, extract_folder

    cfg = ExtractConfig(clip=args.clip, batch=args.batch, workers=args.workers, fmt=args.format,
                        device=args.device, dtype=args.dtype, decoder=args.decoder, max_frames=args.max_frames,
                        select_layer=args.select_layer, progress=not args.no_progress,
                        keep_frames=args.keep_frames, kept_frames=args.keep_frames_count)
    summary = extract_folder(args.input, args.output, cfg)
    return 0 if summary["failed"] == 0 else 1


def add_extract_args(p) -> None:
    from .clip import DEFAULT_VIDEO_CLIP

    p.add_argument("--clip", default=DEFAULT_VIDEO_CLIP,
                   help=f"CLIP folder or hub id (default {DEFAULT_VIDEO_CLIP}; `llavidal make-tiny-clip` for offline)")
    p.add_argument("--batch", type=int, default=None,
                   help="frames per CLIP forward; batches span videos (default 48 on CPU, 256 on GPU)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: min(8, CPUs - 1))")
    p.add_argument("--format", default="pkl", choices=["pkl", "npy", "safetensors"],
                   help="output format (pkl: a pickled float16 array, as the original)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="CLIP compute dtype (default float16 on GPU, float32 on CPU); features are stored as float16")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--max-frames", type=int, default=100, help="frames sampled per video (default 100)")
    p.add_argument("--select-layer", type=int, default=-2, help="CLIP hidden layer (default -2, the penultimate)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--keep-frames", metavar="DIR",
                   help="also keep each video's per-frame patch tokens [K, 256, D] (float16, same names and format) "
                        "in DIR: the input of pooled video features (training --video_pool T,H,W)")
    p.add_argument("--keep-frames-count", type=int, default=16, metavar="K",
                   help="frames kept per video for --keep-frames, picked from the sampled ones (default 16)")


def register(sub) -> None:
    p = sub.add_parser("make-tiny-clip", help="write a tiny random CLIP folder (loadable like the real one)")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vision-hidden-size", type=int, default=1024,
                   help="width of the vision tower = video feature width (1024 fits `llavidal make-tiny` models)")
    p.set_defaults(func=cmd_make_tiny_clip)

    p = sub.add_parser("extract-video", help="raw videos -> [356, 1024] spatio-temporal CLIP features")
    p.add_argument("--input", required=True, help="a video file or a folder (searched recursively)")
    p.add_argument("--output", required=True, help="feature folder ({name}.pkl, failures.jsonl, summary)")
    add_extract_args(p)
    p.set_defaults(func=cmd_extract_video)

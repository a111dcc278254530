"""Subcommands ``llavidal demo`` (gradio web demo) and ``llavidal chat`` (terminal chat)."""
from __future__ import annotations

from ..prompting import TEMPLATE_HELP, TEMPLATE_NAMES

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def add_generation_args(p, max_new_tokens: int = 512) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--template", choices=TEMPLATE_NAMES, help=TEMPLATE_HELP)
    p.add_argument("--system", help="system prompt overriding the template's")


def add_video_args(p) -> None:
    p.add_argument("--clip", default=DEFAULT_CLIP,
                   help=f"CLIP folder or hub id for raw videos (default {DEFAULT_CLIP}; "
                        "`llavidal make-tiny-clip DIR` writes an offline one for tests)")
    p.add_argument("--max-frames", type=int, default=100, help="frames sampled per video (default 100)")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])


def demo_config(args):
    from ..cli import engine_overrides, placement_kwargs
    from .app import DemoConfig

    if args.max_new_tokens < 1:
        raise SystemExit("error: --max-new-tokens must be at least 1")
    return DemoConfig(base=args.base, projector=args.projector, clip=args.clip, device=args.device, dtype=args.dtype,
                      attn=args.attn, layout=args.layout, allow_untrained_modality=args.allow_untrained_modality,
                      use_file_embeddings=args.use_file_embeddings, tokenization=args.tokenization,
                      **placement_kwargs(args), **engine_overrides(args),
                      decoder=args.decoder, max_frames=args.max_frames,
                      max_video_seconds=args.max_video_seconds, max_upload_mb=args.max_upload_mb,
                      template=args.template, system=args.system, temperature=args.temperature, top_p=args.top_p,
                      max_new_tokens=args.max_new_tokens, concurrency=args.concurrency, title=not args.embed,
                      host=args.host, port=args.port, share=args.share)


def add_server_args(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 exposes the demo to the network)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="generation requests served at once; others wait in the queue (default 1)")
    p.add_argument("--max-video-seconds", type=float, default=600.0,
                   help="refuse longer videos (default 600; 0 = no limit)")
    p.add_argument("--max-upload-mb", type=float, default=500.0,
                   help="refuse larger uploads (default 500; 0 = no limit)")
    p.add_argument("--embed", action="store_true", help="no title/intro (for embedding in a page)")


def cmd_demo(args) -> int:
    from .app import run_demo

    return run_demo(demo_config(args))


def cmd_chat(args) -> int:
    from .chat import cmd_chat as run

    return run(args)


def register(sub) -> None:
    from ..cli import _add_model_args

    p = sub.add_parser("demo", help="web demo: upload a video and chat about it (gradio, http://127.0.0.1:7860)")
    _add_model_args(p)
    add_video_args(p)
    add_server_args(p)
    add_generation_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("chat", help="chat about one video in the terminal (/reset, /exit)")
    _add_model_args(p)
    p.add_argument("--video", help="a raw video (features computed with --clip) or a video feature file (.pkl ...)")
    p.add_argument("--object", help="object feature file, [n, 8, 512]")
    p.add_argument("--pose", help="pose feature file, e.g. [256, 216]")
    p.add_argument("--feature-cache", help="folder to keep the features of raw videos ({name}.pkl), reused next time")
    add_video_args(p)
    add_generation_args(p)
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.set_defaults(func=cmd_chat)

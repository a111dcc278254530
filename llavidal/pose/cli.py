"""Subcommands of the pose pipeline: ``llavidal pose train``, ``llavidal pose eval`` and ``llavidal extract-pose``."""
from __future__ import annotations

import json


def cmd_pose_train(args) -> int:
    from .train import PoseTrainConfig, train

    cfg = PoseTrainConfig(
        data=args.data, out=args.out, clip=args.clip, split=args.split, unseen_classes=args.unseen_classes,
        epochs=args.epochs, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, frames=args.frames, augment=not args.no_augment, seed=args.seed,
        workers=args.workers, device=args.device, eval_every=args.eval_every, resume=not args.no_resume,
        progress=not args.no_progress, layers=args.layers, width=args.width, heads=args.heads, stride=args.stride,
        tokens=args.tokens, dropout=args.dropout, phase=args.phase, init=args.init, videos=args.videos,
        alpha=args.alpha, video_frames=args.video_frames, video_lr_scale=args.video_lr_scale, align=args.align)
    summary = train(cfg)
    print(json.dumps({k: summary[k] for k in ("split", "skipped", "skipped_reasons", "last_metrics")}, indent=2))
    return 0


def cmd_pose_eval(args) -> int:
    from .train import evaluate_folder

    result = evaluate_folder(args.model, args.data, args.split, args.unseen_classes, args.seed, args.frames,
                             args.batch, args.device, args.workers)
    print(json.dumps(result, indent=2))
    return 0


def cmd_extract_pose(args) -> int:
    from .extract import PoseExtractConfig, extract_pose, refuse_without_model

    if args.model is None and not args.random_init:
        raise SystemExit(f"error: {refuse_without_model()}")
    cfg = PoseExtractConfig(model=args.model, tokens=args.tokens, fmt=args.format, suffix=args.suffix,
                            batch=args.batch, workers=args.workers, device=args.device, stitch_map=args.stitch_map,
                            random_init=args.random_init, seed=args.seed, progress=not args.no_progress)
    summary = extract_pose(args.skeletons, args.output, cfg)
    return 0 if summary["failed"] == 0 else 1


def _split_args(p) -> None:
    p.add_argument("--unseen-classes", help="zeroshot: a count N (drawn with --seed from the classes in the data) "
                   "or a list of action ids, e.g. 3,7,12")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=300,
                   help="every clip is resampled to this many frames (default 300: NTU's length, 75 tokens)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="data loading processes (default min(4, CPUs - 1))")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")


def register(sub) -> None:
    p = sub.add_parser("pose", help="the skeleton encoder behind the pose features: `pose train` (SkeletonCLIP on "
                                    "NTU skeletons), `pose eval`")
    cmds = p.add_subparsers(dest="pose_command", required=True, metavar="COMMAND")

    t = cmds.add_parser("train", help="SkeletonCLIP training against frozen CLIP text embeddings of the class "
                                      "prompts (--phase 2: with a CLIP video branch); resumes from the newest "
                                      "checkpoint in --out")
    t.add_argument("--data", required=True, help="NTU skeleton folder (*.skeleton.npy and/or *.skeleton, recursive)")
    t.add_argument("--out", required=True, help="output folder (model, checkpoints, metrics.jsonl, skipped.jsonl)")
    t.add_argument("--clip", required=True, help="CLIP folder or hub id whose text tower embeds the class prompts "
                                                 "(e.g. openai/clip-vit-base-patch32; `llavidal make-tiny-clip`)")
    t.add_argument("--split", default="xsub", choices=["xsub", "xset", "zeroshot"],
                   help="NTU120 cross-subject, cross-setup (even setups train), or zero-shot (held-out classes)")
    _split_args(t)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    t.add_argument("--no-augment", action="store_true", help="no random crop/rotation/scale")
    t.add_argument("--no-resume", action="store_true", help="start over even when --out holds checkpoints")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--layers", type=int, default=6)
    t.add_argument("--width", type=int, default=216, help="token width (the published features: 216)")
    t.add_argument("--heads", type=int, default=9)
    t.add_argument("--stride", type=int, default=4, help="input frames per token")
    t.add_argument("--tokens", type=int, default=256, help="default tokens per extracted file (stored in the config)")
    t.add_argument("--dropout", type=float, default=0.1)
    g = t.add_argument_group("SKI-LVLM phase 2 (--phase 2): the pose encoder next to a CLIP video branch, loss = "
                             "CE(video-text) + CE(pose-text) + alpha * MSE(video-text cosines, pose-text cosines)")
    g.add_argument("--phase", type=int, default=1, choices=[1, 2],
                   help="1: SkeletonCLIP (default); 2: start from --init and train with the clips' RGB videos")
    g.add_argument("--init", help="phase 2: a phase-1 `pose train` output folder (its encoder sizes are used)")
    g.add_argument("--videos", help="phase 2: folder of the clips' RGB videos ({stem}_rgb.avi as NTU's, recursive)")
    g.add_argument("--alpha", type=float, default=10.0,
                   help="phase 2: weight of the MSE between the two cosine matrices (default 10)")
    g.add_argument("--video-frames", type=int, default=8, help="phase 2: frames per video through CLIP (default 8)")
    g.add_argument("--video-lr-scale", type=float, default=10.0,
                   help="phase 2: learning rate of the video branch (a linear adapter on frozen CLIP embeddings) as "
                        "a multiple of --lr (default 10; 0 keeps it frozen, so the alignment target is the "
                        "pre-trained CLIP's own cosines)")
    g.add_argument("--align", choices=["both", "pose", "video"], default="both",
                   help="phase 2: the branch(es) the alignment term trains (default both; pose: the video branch's "
                        "cosines are a fixed target for the pose encoder; video: the other way round)")
    t.set_defaults(func=cmd_pose_train)

    e = cmds.add_parser("eval", help="top-1/top-5 of a trained model on a split's test side (or --split all)")
    e.add_argument("--model", required=True, help="a `pose train` output folder or checkpoint")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="xsub", choices=["xsub", "xset", "zeroshot", "all"])
    _split_args(e)
    e.set_defaults(func=cmd_pose_eval)

    x = sub.add_parser("extract-pose", help="skeleton files -> [tokens, 216] pose features (one file per video)")
    x.add_argument("--skeletons", required=True, help="a skeleton file or a folder (*.skeleton.npy / *.skeleton)")
    x.add_argument("--model", help="trained pose encoder folder (`llavidal pose train --out`); required")
    x.add_argument("--output", required=True, help="feature folder ({stem}_pose.pkl, failures.jsonl, summary)")
    x.add_argument("--tokens", type=int, default=256, help="rows per file (256 published; 75 SKI-LVLM)")
    x.add_argument("--format", default="pkl", choices=["pkl", "npy"])
    x.add_argument("--suffix", default="_pose", help="output name = {stem}{suffix}.{format} (default _pose)")
    x.add_argument("--stitch-map", help="JSON {video_name: [clip, ...]}: one output per stitched video, its clips' "
                                        "skeletons joined in order")
    x.add_argument("--batch", type=int, default=16)
    x.add_argument("--workers", type=int, default=None)
    x.add_argument("--device", default=None)
    x.add_argument("--random-init", action="store_true",
                   help="use an UNTRAINED seeded encoder (plumbing tests only; recorded in the summary)")
    x.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    x.add_argument("--no-progress", action="store_true")
    x.set_defaults(func=cmd_extract_pose)

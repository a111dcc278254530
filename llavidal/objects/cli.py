"""``llavidal extract-objects``: videos + detections (JSON or a detector) → ``[n, 8, 512]`` object features."""
from __future__ import annotations

import json


def cmd_extract_objects(args) -> int:
    from .extract import SUMMARY_FILE, ObjectExtractConfig, extract_objects
    from .track import TrackConfig

    track = TrackConfig(iou_threshold=args.iou, max_gap=args.max_gap, match_labels=not args.any_label,
                        min_length=args.min_track_length, max_objects=args.max_objects, min_score=args.min_score,
                        ignore_labels=tuple(args.ignore_labels), matcher=args.matcher)
    cfg = ObjectExtractConfig(clip=args.clip, fmt=args.format, out_dtype=args.out_dtype, device=args.device,
                              dtype=args.dtype, batch=args.batch, workers=args.workers, decoder=args.decoder,
                              context=args.context, detect_frames=args.detect_frames,
                              progress=not args.no_progress, track=track)
    s = extract_objects(args.videos, args.output, cfg, detections=args.detections, detector=args.detector)
    print(f"object features: {s['done']} written, {s['skipped_existing']} already there, {s['no_objects']} with no "
          f"objects, {s['failed']} failed ({s['objects']} objects; tracks linked by {s['matcher']})")
    for key, what in (("no_object_videos", "no objects"), ("failed_videos", "failed")):
        if s[key]:
            more = f" (+{len(s[key]) - 10} more)" if len(s[key]) > 10 else ""
            print(f"  {what}: {', '.join(s[key][:10])}{more}  -> see {args.output}/failures.jsonl")
    if s.get("unused_detection_entries"):
        u = s["unused_detection_entries"]
        print(f"  {u['count']} detection entries matched no video: {json.dumps(u['first'][:5])}")
    print(f"summary: {args.output}/{SUMMARY_FILE}")
    return 0 if s["failed"] == 0 else 1


def register(sub) -> None:
    from ..video.clip import DEFAULT_OBJECT_CLIP

    p = sub.add_parser("extract-objects", help="videos + object detections -> [n, 8, 512] CLIP object features "
                       "(docs/design.md#pose-and-object-features), one <video id>_object.pkl per video")
    p.add_argument("--videos", required=True, help="a video file or a folder (searched recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--detections", help="a folder of <video id>.json, or one JSON mapping video -> detections "
                     "(schema: llavidal/objects/detections.py)")
    src.add_argument("--detector", help="NAME[:ARG] of a registered detector (ultralytics:yolov8n.pt needs the "
                     "ultralytics package, which downloads named weights) or package.module:factory")
    p.add_argument("--output", required=True, help="feature folder (<video id>_object.<fmt>, failures.jsonl, "
                   "object_manifest.jsonl, object_summary.json)")
    p.add_argument("--clip", default=DEFAULT_OBJECT_CLIP,
                   help=f"CLIP folder or hub id for the image embeddings (default {DEFAULT_OBJECT_CLIP}, 512-d)")
    p.add_argument("--format", default="pkl", choices=["pkl", "npy", "safetensors"],
                   help="output format (pkl: a pickled array, as the ADL-X downloads)")
    p.add_argument("--out-dtype", default="float16", choices=["float16", "float32"], help="stored dtype")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="CLIP compute dtype (default float16 on GPU, float32 on CPU)")
    p.add_argument("--batch", type=int, default=64, help="crops per CLIP forward (batches span videos)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding/tracking/cropping ahead (0: none)")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--max-objects", type=int, default=8, help="objects kept per video, best first (default 8)")
    p.add_argument("--min-track-length", type=int, default=3, help="shorter tracks are dropped (default 3)")
    p.add_argument("--iou", type=float, default=0.3, help="least IoU to link a detection to a track (default 0.3)")
    p.add_argument("--max-gap", type=int, default=2, help="looked-at frames a track may miss (default 2)")
    p.add_argument("--matcher", default="auto", choices=["auto", "hungarian", "greedy"],
                   help="assignment (auto: Hungarian when scipy is installed, else greedy)")
    p.add_argument("--any-label", action="store_true", help="link detections whatever their labels")
    p.add_argument("--min-score", type=float, default=0.0, help="ignore detections below this score")
    p.add_argument("--ignore-labels", nargs="*", default=[], metavar="LABEL", help="labels to ignore, e.g. person")
    p.add_argument("--context", type=float, default=0.1, help="crop margin, a fraction of the box's longer side")
    p.add_argument("--detect-frames", type=int, default=32, help="frames a --detector looks at per video")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_extract_objects)

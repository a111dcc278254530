#!/usr/bin/env python3
"""The original feature script's entry point, on top of ``llavidal extract-video``.

    python scripts/save_spatio_temporal_clip_features.py --video_dir_path VIDEOS --clip_feat_path OUT [--infer_batch 48]

The original flags keep their meaning (``--infer_batch``: frames per CLIP forward); everything else of
``llavidal extract-video`` is accepted too (``--clip``, ``--workers``, ``--format``, ``--device``, ``--dtype``, ...).
Unlike the original it runs on CPU as well, reads every common video container (not only ``.mp4``), keeps going
when a video is broken (``failures.jsonl``) and writes each file atomically.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llavidal.video.cli import add_extract_args  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video_dir_path", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--clip_feat_path", required=True, help="output folder of {name}.pkl features")
    parser.add_argument("--infer_batch", type=int, default=48, help="frames per CLIP forward (default 48)")
    add_extract_args(parser)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = args.infer_batch
    from llavidal.video.cli import cmd_extract_video

    args.input, args.output = args.video_dir_path, args.clip_feat_path
    return cmd_extract_video(args)


if __name__ == "__main__":
    sys.exit(main())

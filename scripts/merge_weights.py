"""Merge projector files by name (the original script's flags): each modality's projector and start/end token
rows come from the file that trained it, instead of a plain dict union in which the later file wins.

    python scripts/merge_weights.py --weights stage1-video/mm_projector.bin stage1-pose/ --output merged.safetensors
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llavidal.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))

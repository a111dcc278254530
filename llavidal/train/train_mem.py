"""The published entry point: ``torchrun --nproc_per_node=8 llavidal/train/train_mem.py <flags>``.

FlashAttention is chosen with ``--attn_implementation flash_attention_2`` (no monkey patch needed any more).
"""
import os
import sys

if __package__ in (None, ""):  # run as a script from a checkout: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llavidal.train import end_distributed  # noqa: E402
from llavidal.train.train import train  # noqa: E402

if __name__ == "__main__":
    train()
    end_distributed()

"""From tracks to ``[n, 8, 512]``: which frames of a track, which pixels of a frame, and the CLIP image embedding.

- Frames: 8 of the track's detections, the one nearest the centre of each of 8 equal parts of the track (in
  detection order); a track with fewer than 8 detections repeats them evenly (3 → 0 0 0 1 1 2 2 2), so every object
  has exactly 8 rows. (The video features' rule, :func:`llavidal.video.io.frame_indices`, splits ``T - 1`` instead
  of ``T`` and so repeats a frame and never reaches the last one when T is 8 — fine for 100 of hundreds of frames,
  not for 8 of a short track.)
- Pixels: a square around the box, ``context`` of its longer side added on each side (CLIP's processor centre-crops
  a square, which would cut the ends off a long box), moved to stay inside the frame, and clipped only where it is
  larger than the frame.
- Embedding: the CLIP folder's image processor (resize the shorter side, centre crop, CLIP mean/std) and
  ``CLIPVisionModelWithProjection``'s ``image_embeds`` (512-d for ViT-B/32, not L2-normalised).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..constants import OBJECT_FRAMES
from ..video.clip import DEFAULT_OBJECT_CLIP

logger = logging.getLogger(__name__)

OBJECT_WIDTH = 512  # LLAVIDAL's object projector input (docs/design.md#artifacts)


def sample_positions(n: int, k: int = OBJECT_FRAMES) -> np.ndarray:
    """``k`` positions into a track of ``n`` detections: ``floor((i + 1/2) * n / k)``, the centre of each of ``k``
    equal parts — distinct when ``n >= k``, each detection repeated evenly when ``n < k``."""
    if n < 1 or k < 1:
        raise ValueError(f"a track needs at least one detection and one sample, got n={n}, k={k}")
    return ((2 * np.arange(k, dtype=np.int64) + 1) * n) // (2 * k)


def crop_box(box, width: int, height: int, context: float = 0.1, square: bool = True) -> tuple[int, int, int, int]:
    """Integer pixel crop ``(x1, y1, x2, y2)`` (end exclusive) around ``box`` inside a ``width`` × ``height`` frame.

    The box grows by ``context`` × its longer side on every side (a square of that size when ``square``), is shifted
    back into the frame where it sticks out, and is clipped only where it is larger than the frame. Raises
    ``ValueError`` when the box does not overlap the frame.
    """
    x1, y1, x2, y2 = map(float, box)
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise ValueError(f"box {[round(v, 1) for v in box]} lies outside the {width}x{height} frame")
    w, h = x2 - x1, y2 - y1
    pad = context * max(w, h)
    sw, sh = (max(w, h) + 2 * pad,) * 2 if square else (w + 2 * pad, h + 2 * pad)
    sw, sh = min(sw, width), min(sh, height)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    nx1 = min(max(cx - sw / 2, 0.0), width - sw)
    ny1 = min(max(cy - sh / 2, 0.0), height - sh)
    ix1, iy1 = max(math.floor(nx1 + 1e-6), 0), max(math.floor(ny1 + 1e-6), 0)
    ix2 = min(math.ceil(nx1 + sw - 1e-6), width)
    iy2 = min(math.ceil(ny1 + sh - 1e-6), height)
    return ix1, iy1, max(ix2, ix1 + 1), max(iy2, iy1 + 1)


@dataclass
class EmbedConfig:
    clip: str = DEFAULT_OBJECT_CLIP
    device: str | None = None  # default: cuda when available
    dtype: str | None = None  # compute dtype; default float16 on GPU, float32 on CPU
    batch: int = 64  # crops per forward


class ObjectEmbedder:
    """CLIP image processor + ``CLIPVisionModelWithProjection``: RGB crops → ``[N, projection_dim]`` float32."""

    def __init__(self, cfg: EmbedConfig | None = None):
        import torch
        from transformers import CLIPVisionModelWithProjection

        from ..model.checkpoint import default_device, resolve_dtype
        from ..video.clip import ClipLoadError, _resolve, quiet_from_pretrained

        self.cfg = cfg = cfg or EmbedConfig()
        self.device = torch.device(cfg.device) if cfg.device else default_device()
        self.dtype = resolve_dtype(cfg.dtype or ("float16" if self.device.type == "cuda" else "float32"), self.device)
        src = _resolve(cfg.clip)
        self.processor = load_image_processor(src)
        self.model = quiet_from_pretrained(CLIPVisionModelWithProjection, src, dtype=self.dtype)
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self.model.config.projection_dim)
        if self.dim != OBJECT_WIDTH:
            logger.warning("%s: image embeddings are %d-d; LLAVIDAL's object projector expects %d (ViT-B CLIP)",
                           cfg.clip, self.dim, OBJECT_WIDTH)
        if not hasattr(self.model, "visual_projection"):
            raise ClipLoadError(f"--clip {cfg.clip}: not a CLIP model with an image projection")

    def preprocess(self, crops: list[np.ndarray]):
        """RGB uint8 crops of any sizes → pixel values ``[N, 3, S, S]`` float32 (safe to call from worker
        threads)."""
        return self.processor(images=list(crops), return_tensors="pt")["pixel_values"]

    def embed(self, pixel_values) -> np.ndarray:
        """``[N, 3, S, S]`` → ``[N, projection_dim]`` float32, in batches of ``cfg.batch``."""
        import torch

        outs = []
        with torch.inference_mode():
            for s in range(0, len(pixel_values), self.cfg.batch):
                x = pixel_values[s:s + self.cfg.batch].to(self.device, self.dtype)
                outs.append(self.model(pixel_values=x).image_embeds.float().cpu())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(outs).numpy()


def load_image_processor(src: str):
    """The folder's (or hub id's) image processor; CLIP's defaults when a local folder has none."""
    from pathlib import Path

    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "torchvision not installed, using the PIL backend" is expected on CPU boxes
    try:
        if Path(src).is_dir() and not (Path(src) / "preprocessor_config.json").is_file():
            from transformers import CLIPImageProcessor

            logger.warning("%s: no preprocessor_config.json; using CLIP's default image preprocessing", src)
            return CLIPImageProcessor()
        return AutoImageProcessor.from_pretrained(src)
    finally:
        hf_logging.set_verbosity(level)

"""PLLaVA-style video features: per-frame CLIP patch tokens pooled adaptively to a grid (docs/design.md#pooled-video).

A video's per-frame patch tokens ``[T, P, D]`` (``P = S × S`` patches per frame, 16 × 16 for CLIP ViT-L/14 at 224
px) are average-pooled adaptively in time and space to a grid ``t × h × w`` — bin ``i`` of an axis of length ``n``
averages the inputs ``floor(i·n/k) .. ceil((i+1)·n/k) - 1`` — and flattened in (time, row, column) order to
``[t·h·w, D]`` rows, one patch token per row. Pooling happens before the projector: with a linear projector that is
the same as pooling its outputs, for ``D / hidden`` of the work.

A model reads one kind of video features, recorded in its config: the spatio-temporal ``[356, D]`` rows (the
default) or pooled per-frame tokens (``video_pool`` = the grid, ``video_pool_frames`` = the frames a video keeps).
:func:`frame_pooling` reads that record; :func:`llavidal.features.validate_feature` applies it and refuses the other
kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_KEPT_FRAMES = 16  # frames a video keeps for pooled features (PLLaVA's input length)


@dataclass(frozen=True)
class PoolGrid:
    """The output grid ``t × h × w`` of adaptive pooling."""

    t: int
    h: int
    w: int

    def __post_init__(self):
        if min(self.t, self.h, self.w) < 1:
            raise ValueError(f"pooling grid {self.t}x{self.h}x{self.w}: every size must be >= 1")

    @classmethod
    def parse(cls, spec, what: str = "--video_pool") -> PoolGrid:
        """``"16,12,12"``, ``"16x12x12"`` or a sequence of three ints."""
        if isinstance(spec, PoolGrid):
            return spec
        parts = spec.replace("x", ",").replace("X", ",").split(",") if isinstance(spec, str) else list(spec)
        try:
            sizes = [int(str(p).strip()) for p in parts]
        except ValueError:
            sizes = []
        if len(sizes) != 3 or min(sizes) < 1:
            raise ValueError(f"{what} {spec!r}: expected three positive sizes T,H,W (frames, rows, columns), e.g. 16,8,8")
        return cls(*sizes)

    @property
    def tokens(self) -> int:
        return self.t * self.h * self.w

    def as_list(self) -> list[int]:
        return [self.t, self.h, self.w]

    def __str__(self) -> str:
        return f"{self.t}x{self.h}x{self.w}"


@dataclass(frozen=True)
class FramePooling:
    """A model's pooled video features: the grid, and how many frames a video keeps before pooling."""

    grid: PoolGrid
    frames: int = DEFAULT_KEPT_FRAMES

    def describe(self) -> str:
        return f"per-frame patch tokens ({self.frames} frames) pooled to {self.grid} = {self.grid.tokens} rows"


def frame_pooling(modality, config) -> FramePooling | None:
    """The pooling a model config records for a modality (a :class:`~llavidal.constants.Modality`), or None when the
    modality reads plain ``[N, D]`` rows (the published spatio-temporal video features)."""
    attr = getattr(modality, "pool_attr", None)
    grid = getattr(config, attr, None) if attr else None
    if not grid:
        return None
    frames = getattr(config, f"{attr}_frames", None) or DEFAULT_KEPT_FRAMES
    return FramePooling(PoolGrid.parse(grid, attr), int(frames))


def set_frame_pooling(modality, config, pooling: FramePooling | None) -> None:
    """Record ``pooling`` (None: plain rows) for a modality in a model config."""
    attr = modality.pool_attr
    setattr(config, attr, pooling.grid.as_list() if pooling is not None else None)
    setattr(config, f"{attr}_frames", pooling.frames if pooling is not None else DEFAULT_KEPT_FRAMES)


def square_side(patches: int) -> int | None:
    """``S`` when ``patches == S * S``, else None."""
    side = math.isqrt(patches)
    return side if side * side == patches else None


def pooling_matrix(n: int, k: int):
    """``[k, n]`` float32: row i averages the inputs of adaptive bin i (``floor(i·n/k) .. ceil((i+1)·n/k) - 1``)."""
    import torch

    m = torch.zeros(k, n)
    for i in range(k):
        lo, hi = i * n // k, -(-(i + 1) * n // k)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def pool_frames(frames, grid: PoolGrid):
    """Adaptive average pooling of per-frame patch tokens: ``[T, P, D]`` (square ``P``) or ``[T, H, W, D]`` →
    ``[t·h·w, D]`` float32, rows in (time, row, column) order. Numpy in, numpy out; a torch tensor stays one.

    The same numbers as ``torch.nn.functional.adaptive_avg_pool3d`` over (T, H, W), computed as one small matrix
    product per axis (an axis that keeps its size is left alone), which is several times faster on CPUs. A grid
    larger than the input along an axis repeats inputs (each bin covers at least one), so every video gives exactly
    ``grid.tokens`` rows.
    """
    import torch

    is_numpy = not isinstance(frames, torch.Tensor)
    x = torch.from_numpy(np.array(frames, dtype=np.float32)) if is_numpy else frames.float()  # a copy: never a view
    if x.ndim == 3:
        side = square_side(x.shape[1])
        if side is None:
            raise ValueError(f"{x.shape[1]} patches per frame do not form a square grid; pass [T, H, W, D]")
        x = x.reshape(x.shape[0], side, side, x.shape[2])
    if x.ndim != 4:
        raise ValueError(f"per-frame patch tokens must be [T, P, D] or [T, H, W, D], got {list(x.shape)}")
    T, H, W, D = x.shape
    if grid.t != T:  # [t, T] @ [T, H*W*D]
        x = (pooling_matrix(T, grid.t).to(x.device) @ x.reshape(T, -1)).reshape(grid.t, H, W, D)
    if grid.h != H:  # [h, H] @ [t, H, W*D] (batched over t)
        x = torch.matmul(pooling_matrix(H, grid.h).to(x.device), x.reshape(grid.t, H, W * D))
    if grid.w != W:  # [w, W] @ [t*h, W, D]
        x = torch.matmul(pooling_matrix(W, grid.w).to(x.device), x.reshape(grid.t * grid.h, W, D))
    out = x.reshape(grid.tokens, D)
    return out.numpy() if is_numpy else out


__all__ = ["DEFAULT_KEPT_FRAMES", "FramePooling", "PoolGrid", "frame_pooling", "pool_frames", "pooling_matrix",
           "set_frame_pooling", "square_side"]

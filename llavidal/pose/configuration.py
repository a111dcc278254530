"""Configuration of the skeleton encoder (docs/design.md#pose-and-object-features): one dataclass, saved as
``config.json`` next to the weights so that a checkpoint folder is self-describing."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MODEL_TYPE = "llavidal_pose_encoder"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class PoseEncoderConfig:
    """Sizes and behaviour of :class:`~llavidal.pose.modeling.PoseEncoder` and its SkeletonCLIP head.

    The published pose features are ``[256, 216]``: ``width`` 216 = 24 × 9 ``heads``, one token per ``stride`` = 4
    input frames, ``tokens`` = 256 (75 for SKI-LVLM-shaped files). ``tokens`` is the default of extraction only:
    the encoder takes any number of frames divisible by ``stride``.
    """

    in_channels: int = 3  # x, y, z (metres, camera space)
    num_joints: int = 25
    max_bodies: int = 2  # M: bodies per clip the encoder reads
    width: int = 216  # = 24 x 9 heads, the published pose feature width
    heads: int = 9
    layers: int = 6
    stride: int = 4  # input frames per output token (temporal patch embedding)
    tokens: int = 256  # tokens per extracted feature file (resampled to tokens * stride frames)
    temporal_kernel: int = 5  # depthwise temporal convolution in every block (dilation 1, 2, 1, 2, ...)
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    max_hop: int = 12  # hop distances are clipped to this (the NTU skeleton's diameter is 11)
    use_motion: bool = True  # add frame-to-frame joint displacement as 3 more input channels
    motion_scale: float = 30.0  # displacement x 30 = m/s at NTU's 30 fps: on the scale of the centred positions
    projection_dim: int = 512  # SkeletonCLIP head: the CLIP text projection dim (set from --clip when training)
    model_type: str = MODEL_TYPE

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"pose encoder width {self.width} is not divisible by heads {self.heads}")
        for name in ("stride", "tokens", "layers", "heads", "num_joints", "max_bodies", "temporal_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"pose encoder config: {name} must be >= 1, got {getattr(self, name)}")
        if self.temporal_kernel % 2 == 0:
            raise ValueError(f"pose encoder config: temporal_kernel must be odd, got {self.temporal_kernel}")

    @property
    def frames(self) -> int:
        """Input frames of one extracted file: ``tokens * stride`` (1024 for 256 tokens, 300 for 75)."""
        return self.tokens * self.stride

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> PoseEncoderConfig:
        if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"{source}: model_type is {d.get('model_type')!r}, expected {MODEL_TYPE!r} (a pose "
                             "encoder folder written by `llavidal pose train`)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown pose encoder config fields {unknown}")
        return cls(**d)

    def save(self, folder: str | os.PathLike) -> Path:
        from ..io_utils import atomic_write_json

        return atomic_write_json(Path(folder) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PoseEncoderConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pose encoder config not found (expected a folder written by "
                                    "`llavidal pose train`: config.json + model.safetensors)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        return cls.from_dict(d, str(path))

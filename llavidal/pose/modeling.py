"""The skeleton encoder behind the pose features, and its SkeletonCLIP head (docs/design.md#pose-and-object-features).

``PoseEncoder``: skeletons ``[N, C=3, T, V=25, M=2]`` → per-timestep tokens ``[N, T / stride, width]``
(``[N, T/4, 216]`` by default).

    per body (bodies are encoded independently, absent bodies are not computed at all)
    centre on the clip's mean spine-middle position, add frame-to-frame motion      [B, 6, T, V]
      (x motion_scale = 30: metres per second at 30 fps, the scale of the positions; without it the motion
      channels are 50-100x smaller than the positions and training sits on a long plateau)
    temporal patch embedding: Conv (stride x 1), stride (stride, 1)                  [B, T/4, V, 216]
      + a learned embedding per joint
    `layers` blocks, each (pre-norm, residual):
      joint attention   over the 25 joints of one body at one timestep, 9 heads, with a learned bias per
                        (head, hop distance) and per (head, body part of query, body part of key), and the mean
                        feature of a joint's body part added to its key
      temporal conv     depthwise over time (kernel 5, dilation 1 or 2) + pointwise
      MLP
    mean over joints                                                                  [B, T/4, 216]
    mean over the bodies present in the clip                                          [N, T/4, 216]

What is and is not Hyperformer (Zhou et al., 2022): the width (216 = 24 × 9 heads), the temporal stride (4), the
hop-distance attention bias and the idea of letting body-part ("hyperedge") features enter the joint attention are
in its spirit. Hyperformer's multi-scale temporal convolution, its per-layer widths and strides (as far as we know the
stride comes from two stride-2 stages, not a patch embedding), its learned hypergraph and its exact attention formula are
not reproduced, and no Hyperformer weights can be loaded into this module. The published LLAVIDAL pose features came
from an encoder that was never released; features from this one are a stand-in of the same shape, not the same
numbers.

Bodies: a body that is all zero over the whole clip (NTU's convention for "no second person") is absent; it is not
encoded and does not enter the mean, so a single-person clip gives exactly the same tokens with ``M = 1`` or with an
all-zero second body. Frames where a present body is untracked stay zero after centring and have zero motion.

``SkeletonCLIP``: the clip embedding is the mean of the tokens, layer-normed and projected to the CLIP text
projection dim; logits are ``exp(logit_scale) * cos(pose, text)`` (the scale is learned, capped at 100), trained
with cross-entropy against frozen CLIP text embeddings of class prompts.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io_utils import atomic_path
from .configuration import CONFIG_NAME, WEIGHTS_NAME, PoseEncoderConfig
from .graph import CENTER_JOINT, hop_distance, part_mean_matrix, part_of_joint


class PoseModelError(ValueError):
    """A pose encoder folder or input that cannot be used; the message names the file or tensor and the problem."""


# ---------------------------------------------------------------------------------------------------- input handling
def presence(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [N, C, T, V, M]`` → (frame presence ``[N, T, M]``, body presence ``[N, M]``): a body is tracked in a
    frame when any coordinate of any joint is non-zero; present in the clip when tracked in any frame."""
    frame = (x != 0).any(dim=1).any(dim=2)  # [N, T, M]
    return frame, frame.any(dim=1)


def centre(x: torch.Tensor, frame: torch.Tensor, joint: int = CENTER_JOINT) -> torch.Tensor:
    """Subtract the clip's mean position of ``joint`` (over tracked frames of all present bodies); untracked frames
    stay exactly zero. Translation of the whole scene does not change the features; motion within the clip does."""
    m = frame[:, None, :, :].to(x.dtype)  # [N, 1, T, M]
    ref = x[:, :, :, joint, :]  # [N, C, T, M]
    c = (ref * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1)  # [N, C]
    return (x - c[:, :, None, None, None]) * frame[:, None, :, None, :].to(x.dtype)


def resample_frames(x: np.ndarray, frames: int) -> np.ndarray:
    """Resample a skeleton sequence ``[C, T, V, M]`` to ``frames`` frames, aligned at both ends.

    Output frame j reads source position ``j * (T - 1) / (frames - 1)`` by linear interpolation between the two
    neighbouring frames, weighting only frames where the body is tracked (a body never blends with the zeros of an
    untracked frame); a body is tracked at j when at least half of the interpolation weight falls on tracked
    frames, otherwise it stays zero. ``frames == T`` returns the input unchanged (300 NTU frames → 75 tokens of 4
    frames); longer outputs interpolate, shorter ones subsample.
    """
    t = x.shape[1]
    if t == 0:
        raise PoseModelError("cannot resample a skeleton sequence of 0 frames")
    if t == frames:
        return x.astype(np.float32, copy=True)
    tracked = np.any(x != 0, axis=(0, 2)).astype(np.float64)  # [T, M]
    pos = np.linspace(0.0, t - 1, frames) if frames > 1 else np.zeros(1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, t - 1)
    w1 = pos - i0
    w0 = 1.0 - w1
    a0 = w0[:, None] * tracked[i0]  # [F, M] weight on the earlier frame, where that frame is tracked
    a1 = w1[:, None] * tracked[i1]
    den = a0 + a1
    keep = den >= 0.5
    scale = np.where(keep, 1.0 / np.where(keep, den, 1.0), 0.0)
    out = x[:, i0] * (a0 * scale)[None, :, None, :] + x[:, i1] * (a1 * scale)[None, :, None, :]
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- modules
class JointAttention(nn.Module):
    """Self-attention over the joints of one body at one timestep, with skeleton-aware biases.

    Bias per head: ``hop_bias[h, hop(i, j)] + part_bias[h, part(i), part(j)]``. Keys also carry the mean feature of
    their joint's body part (projected), so a query can attend to a joint for what its limb as a whole is doing.
    """

    def __init__(self, cfg: PoseEncoderConfig):
        super().__init__()
        d, self.heads = cfg.width, cfg.heads
        self.qkv = nn.Linear(d, 3 * d)
        self.part_key = nn.Linear(d, d, bias=False)
        self.proj = nn.Linear(d, d)
        self.dropout = cfg.dropout
        hop = np.minimum(hop_distance(cfg.num_joints), cfg.max_hop)
        part = part_of_joint(cfg.num_joints)
        n_parts = int(part.max()) + 1
        self.register_buffer("hop", torch.from_numpy(hop), persistent=False)  # [V, V]
        self.register_buffer("part", torch.from_numpy(part), persistent=False)  # [V]
        self.register_buffer("part_mean", torch.from_numpy(part_mean_matrix(cfg.num_joints)), persistent=False)
        self.hop_bias = nn.Parameter(torch.zeros(cfg.heads, cfg.max_hop + 1))
        self.part_bias = nn.Parameter(torch.zeros(cfg.heads, n_parts, n_parts))

    def bias(self) -> torch.Tensor:
        """``[heads, V, V]`` additive attention bias."""
        return self.hop_bias[:, self.hop] + self.part_bias[:, self.part[:, None], self.part[None, :]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, v, d = x.shape  # [B*T', V, D]
        q, k, val = self.qkv(x).split(d, dim=-1)
        k = k + self.part_key(torch.matmul(self.part_mean.to(x.dtype), x))  # each key + its part's mean feature
        shape = (b, v, self.heads, d // self.heads)
        q, k, val = (t.view(shape).transpose(1, 2) for t in (q, k, val))  # [B*T', H, V, dh]
        y = F.scaled_dot_product_attention(q, k, val, attn_mask=self.bias().to(q.dtype),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, v, d))


class TemporalConv(nn.Module):
    """Depthwise convolution over time (per joint, per channel), then a pointwise mix: ``[B, T', V, D]`` → same."""

    def __init__(self, cfg: PoseEncoderConfig, dilation: int):
        super().__init__()
        k = cfg.temporal_kernel
        self.dw = nn.Conv2d(cfg.width, cfg.width, (k, 1), padding=(dilation * (k - 1) // 2, 0),
                            dilation=(dilation, 1), groups=cfg.width)
        self.pw = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pw(F.gelu(y))


class Block(nn.Module):
    def __init__(self, cfg: PoseEncoderConfig, index: int):
        super().__init__()
        d = cfg.width
        self.ln_attn = nn.LayerNorm(d)
        self.attn = JointAttention(cfg)
        self.ln_time = nn.LayerNorm(d)
        self.time = TemporalConv(cfg, dilation=1 + index % 2)
        self.ln_mlp = nn.LayerNorm(d)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, v, d = x.shape  # [B, T', V, D]
        x = x + self.drop(self.attn(self.ln_attn(x).reshape(b * t, v, d)).view(b, t, v, d))
        x = x + self.drop(self.time(self.ln_time(x)))
        return x + self.drop(self.mlp(self.ln_mlp(x)))


class PoseEncoder(nn.Module):
    """Skeletons ``[N, C, T, V, M]`` → tokens ``[N, T / stride, width]`` (see the module docstring)."""

    def __init__(self, cfg: PoseEncoderConfig):
        super().__init__()
        self.config = cfg
        c_in = cfg.in_channels * (2 if cfg.use_motion else 1)
        self.embed = nn.Conv2d(c_in, cfg.width, (cfg.stride, 1), stride=(cfg.stride, 1))
        self.joint_embed = nn.Parameter(torch.zeros(cfg.num_joints, cfg.width))
        nn.init.normal_(self.joint_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels or x.shape[3] != cfg.num_joints:
            raise PoseModelError(f"pose encoder input has shape {list(x.shape)}, expected [N, {cfg.in_channels}, T, "
                                 f"{cfg.num_joints}, M] (batch, xyz, frames, joints, bodies)")
        if x.shape[2] == 0 or x.shape[2] % cfg.stride:
            raise PoseModelError(f"pose encoder input has {x.shape[2]} frames, expected a positive multiple of the "
                                 f"stride {cfg.stride} (resample with resample_frames)")

    def encode_bodies(self, x: torch.Tensor) -> torch.Tensor:
        """One body per row: ``[B, C, T, V]`` (already centred) → ``[B, T', V, D]``."""
        if self.config.use_motion:
            tracked = (x != 0).any(dim=1, keepdim=True).any(dim=3, keepdim=True).to(x.dtype)  # [B, 1, T, 1]
            motion = torch.zeros_like(x)
            motion[:, :, 1:] = (x[:, :, 1:] - x[:, :, :-1]) * tracked[:, :, 1:] * tracked[:, :, :-1]
            motion = motion * self.config.motion_scale
            x = torch.cat([x, motion], dim=1)  # [B, 2C, T, V]
        h = self.embed(x).permute(0, 2, 3, 1) + self.joint_embed  # [B, T', V, D]
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, t = x.shape[0], x.shape[2]
        frame, body = presence(x)  # [N, T, M], [N, M]
        empty = (~body.any(dim=1)).nonzero().flatten()
        if len(empty):
            raise PoseModelError(f"pose encoder input: sample(s) {empty.tolist()} have no tracked body (all zeros)")
        x = centre(x, frame)
        owner, which = body.nonzero(as_tuple=True)  # present (sample, body) pairs
        bodies = x.permute(0, 4, 1, 2, 3)[owner, which]  # [B, C, T, V], B = present bodies
        per_body = self.encode_bodies(bodies).mean(dim=2)  # [B, T', D] mean over joints
        tokens = per_body.new_zeros(n, t // self.config.stride, self.config.width)
        tokens.index_add_(0, owner, per_body)
        return tokens / body.sum(dim=1).to(tokens.dtype)[:, None, None]  # mean over present bodies


class SkeletonCLIP(nn.Module):
    """:class:`PoseEncoder` + projection of the mean token to the CLIP text space + learned logit scale."""

    def __init__(self, cfg: PoseEncoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = PoseEncoder(cfg)
        self.head = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.projection_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, T, V, M]`` → unit-norm clip embeddings ``[N, projection_dim]``."""
        return F.normalize(self.head(self.encoder(x).mean(dim=1)), dim=-1)

    def scale(self) -> torch.Tensor:
        """The learned logit scale (CLIP's temperature), capped at 100."""
        return self.logit_scale.exp().clamp(max=100.0)

    def cosines(self, emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[N, K]`` between pose embeddings and (any-norm) text embeddings ``[K, P]``."""
        return emb @ F.normalize(text, dim=-1).T

    def logits(self, emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine logits ``[N, K]``: :meth:`cosines` times :meth:`scale`."""
        return self.scale() * self.cosines(emb, text)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.logits(self.embed(x), text)


# ---------------------------------------------------------------------------------------------------- save / load
def save_pose_model(model: SkeletonCLIP, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (the whole SkeletonCLIP: encoder, head, logit scale)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}})
    return folder


def load_pose_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SkeletonCLIP:
    """Read a folder written by :func:`save_pose_model` (a training output or one of its checkpoints)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: pose model folder not found")
    cfg = PoseEncoderConfig.load(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: pose model weights not found (the folder has {CONFIG_NAME} but no "
                                f"{WEIGHTS_NAME}; was training interrupted before the first epoch ended?)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise PoseModelError(f"{weights}: not a readable safetensors file: {e}") from None
    model = SkeletonCLIP(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PoseModelError(f"{weights}: weights do not fit {folder / CONFIG_NAME}: missing {sorted(missing)[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}"
                             f"{'...' if len(unexpected) > 5 else ''}")
    return model.to(device).eval()

"""SKI-LVLM phase 2: the pose encoder trained next to a CLIP video branch (``llavidal pose train --phase 2``).

Background: docs/design.md#pose-and-object-features. Phase 1 (:mod:`.train`) aligns skeleton embeddings with frozen
CLIP text embeddings of the class prompts. Phase 2 starts from a phase-1 model and adds the RGB video of each clip,
seen by CLIP's image tower: with ``P`` the pose-text logits and ``V`` the video-text logits of a batch (``[B, K]``,
both against the same class prompts),

    loss = CE(V, y) + CE(P, y) + alpha * mean((cos V - cos P)^2)     (alpha = 10 by default, as the release)

where ``cos V`` and ``cos P`` are the cosine similarities before each branch's learned logit scale: the release's
logits are plain cosines, so its alignment term compares cosines and its alpha is a weight on values in [0, 4].
Comparing the scaled logits instead (our branches carry CLIP's temperature, ~14 at the start and up to 100) makes
the same alpha hundreds of times stronger; on the synthetic world it then flattens both branches' logits (every clip
gets one answer) rather than aligning them (docs/peers.md#ski-phase2-xsub).

and at test time the video-text logits ``V`` are the prediction (the pose-text ones are reported too: the features
LLAVIDAL reads come from the pose encoder).

The video branch: each clip's ``--video-frames`` frames (the frame-sampling rule of the video features) go through
the frozen CLIP vision tower with its projection, once (cached in the output folder); their mean is the clip's image
embedding. What trains on that side is a residual linear adapter on the embedding (zero-initialised, so training
starts from CLIP's zero-shot logits) and the branch's own logit scale; with ``--video-lr-scale 0`` neither does, the
branch stays the pre-trained CLIP, and ``--align pose`` distils its cosines into the pose encoder (what phase 2 adds
on classes the pose encoder never saw: docs/peers.md#ski-phase2-zeroshot). The original fine-tuned a video CLIP instead;
a frozen tower keeps phase 2 affordable and deterministic, and the loss is the same.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io_utils import atomic_path

log = logging.getLogger("llavidal.pose")

VIDEO_BRANCH_NAME = "video_branch.safetensors"
VIDEO_EMBEDDINGS_NAME = "video_embeddings.safetensors"
DEFAULT_ALPHA = 10.0
DEFAULT_VIDEO_FRAMES = 8
ALIGN_CHOICES = ("both", "pose", "video")  # which branch the alignment term trains
DEFAULT_VIDEO_LR_SCALE = 10.0  # the video branch (a linear probe on frozen embeddings) learns at 10x lr


class VideoTextHead(nn.Module):
    """The trainable part of the video branch: CLIP image embedding ``[N, P]`` → unit embedding (``x + adapter(x)``,
    normalised) and cosine logits against text embeddings with a learned scale (capped at 100)."""

    def __init__(self, dim: int):
        super().__init__()
        self.adapter = nn.Linear(dim, dim)
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(image + self.adapter(image), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)

    def cosines(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # [N, P], [K, P] -> [N, K]
        return self.embed(image) @ F.normalize(text, dim=-1).T

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # [N, P], [K, P] -> [N, K]
        return self.scale() * self.cosines(image, text)


def phase2_losses(pose_cos: torch.Tensor, video_cos: torch.Tensor, target: torch.Tensor,
                  alpha: float = DEFAULT_ALPHA, pose_scale: torch.Tensor | float = 1.0,
                  video_scale: torch.Tensor | float = 1.0, align: str = "both") -> dict[str, torch.Tensor]:
    """The three terms and their sum from the two branches' cosine matrices ``[B, K]`` and logit scales:
    ``ce_video`` (image-text) and ``ce_pose`` (pose-text) on the scaled logits, ``mse`` between the cosine matrices
    (mean over elements, weighted by ``alpha`` in ``loss``). ``align``: which branch the alignment term trains —
    ``both`` (default), ``pose`` (the video cosines are its fixed target) or ``video`` (the pose cosines are)."""
    if align not in ALIGN_CHOICES:
        raise ValueError(f"align {align!r}: expected one of {', '.join(ALIGN_CHOICES)}")
    target_v = video_cos.detach() if align == "pose" else video_cos
    target_p = pose_cos.detach() if align == "video" else pose_cos
    terms = {"ce_video": F.cross_entropy(video_scale * video_cos, target),
             "ce_pose": F.cross_entropy(pose_scale * pose_cos, target),
             "mse": F.mse_loss(target_v, target_p)}
    terms["loss"] = terms["ce_video"] + terms["ce_pose"] + alpha * terms["mse"]
    return terms


# ---------------------------------------------------------------------------------------------------- videos
def match_videos(items, videos: str | os.PathLike) -> tuple[dict[str, Path], list[dict]]:
    """``{skeleton stem: RGB video}`` for the items whose clip has a video under ``videos`` (NTU's
    ``{stem}_rgb.avi``, or any video named ``{stem}.*``), and ``{"file", "reason"}`` records of the others."""
    from ..video.io import find_videos, video_id

    by_name: dict[str, Path] = {}
    for p in find_videos(videos):
        by_name.setdefault(video_id(p), p)
    found, missing = {}, []
    for it in items:
        path = by_name.get(f"{it.stem}_rgb") or by_name.get(it.stem)
        if path is None:
            missing.append({"file": str(it.path), "reason": f"no RGB video {it.stem}_rgb.* under {videos} "
                                                            "(phase 2 needs the clip's video)"})
        else:
            found[it.stem] = path
    return found, missing


@torch.inference_mode()
def clip_image_embeddings(clip: str, videos: dict[str, Path], frames: int, device, batch: int = 64,
                          progress: bool = False) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``{stem: [P]}``: the mean CLIP image embedding (vision tower + projection) of each video's ``frames`` sampled
    frames; unreadable videos come back as ``{"file", "reason"}`` records."""
    from tqdm import tqdm
    from transformers import CLIPVisionModelWithProjection

    from ..video.clip import _resolve, image_stats, normalise_frames, quiet_from_pretrained
    from ..video.io import VideoReadError, sample_video

    stats = image_stats(clip)
    model = quiet_from_pretrained(CLIPVisionModelWithProjection, _resolve(clip)).to(device).eval()
    out, failed = {}, []
    for stem, path in tqdm(sorted(videos.items()), desc="CLIP video branch", disable=not progress, unit="video"):
        try:
            x = torch.from_numpy(sample_video(path, frames, stats.size))
        except VideoReadError as e:
            failed.append({"file": str(path), "reason": str(e)})
            continue
        embeds = [model(pixel_values=normalise_frames(x[i:i + batch].to(device), stats)).image_embeds
                  for i in range(0, len(x), batch)]
        out[stem] = torch.cat(embeds).float().mean(dim=0).cpu()
    return out, failed


def cached_image_embeddings(folder: Path, clip: str, videos: dict[str, Path], frames: int, device,
                            progress: bool = False) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """:func:`clip_image_embeddings`, kept in ``folder/video_embeddings.safetensors``: a resumed run (same CLIP and
    frame count) computes only the videos it has not seen."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = folder / VIDEO_EMBEDDINGS_NAME
    have: dict[str, torch.Tensor] = {}
    if path.is_file():
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("clip") == str(clip) and meta.get("frames") == str(frames):
            have = load_file(str(path))
    todo = {s: p for s, p in videos.items() if s not in have}
    new, failed = clip_image_embeddings(clip, todo, frames, device, progress=progress) if todo else ({}, [])
    if new:
        have.update(new)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in have.items()}, str(tmp),
                      metadata={"clip": str(clip), "frames": str(frames)})
    return {s: have[s] for s in videos if s in have}, failed


class Phase2:
    """What phase 2 adds to a training run: the video branch, its data and its share of the loss and the metrics.

    ``images`` holds the CLIP image embedding of every clip (``[N, P]``, rows in the order of ``items``), so a batch
    reads its rows by dataset index."""

    def __init__(self, alpha: float, dim: int, device, align: str = "both"):
        self.alpha = float(alpha)
        self.align = align
        self.head = VideoTextHead(dim).to(device)
        self.images: dict[str, torch.Tensor] = {}  # split name -> [N, P]

    def set_images(self, split: str, items, embeddings: dict[str, torch.Tensor], device) -> None:
        self.images[split] = torch.stack([embeddings[it.stem] for it in items]).to(device)

    def losses(self, pose_cos: torch.Tensor, pose_scale: torch.Tensor, index: list[int], text: torch.Tensor,
               target: torch.Tensor) -> dict:
        """:func:`phase2_losses` of a batch (``pose_cos``: the pose-text cosines of the rows ``index`` of the
        training split), plus ``video_logits`` (the test-time prediction)."""
        video_cos = self.head.cosines(self.images["train"][torch.as_tensor(index, device=pose_cos.device)], text)
        video_scale = self.head.scale()
        return {**phase2_losses(pose_cos, video_cos, target, self.alpha, pose_scale, video_scale, self.align),
                "video_logits": video_scale * video_cos}

    def video_logits(self, split: str, index: list[int], text: torch.Tensor) -> torch.Tensor:
        rows = self.images[split][torch.as_tensor(index, device=self.images[split].device)]
        return self.head(rows, text)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        with atomic_path(folder / VIDEO_BRANCH_NAME) as tmp:
            save_file(state, str(tmp), metadata={"alpha": str(self.alpha)})

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        path = folder / VIDEO_BRANCH_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the video branch of a phase-2 checkpoint is missing")
        self.head.load_state_dict({k: v.to(self.head.adapter.weight.device) for k, v in load_file(str(path)).items()})


__all__ = ["ALIGN_CHOICES", "DEFAULT_ALPHA", "DEFAULT_VIDEO_FRAMES", "DEFAULT_VIDEO_LR_SCALE", "Phase2",
           "VideoTextHead", "cached_image_embeddings", "clip_image_embeddings", "match_videos", "phase2_losses"]

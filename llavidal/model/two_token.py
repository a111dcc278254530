"""The two-token video representation in the model: a content and a context token per frame (LLaMA-VID style;
docs/design.md#two-token-video, the feature layout in :mod:`llavidal.representation`).

For a video of T frames, each ``[P, D]`` (P pooled patch features), the span holds 2T ``<vid_patch>`` positions:

* position 2t, the **content** token: the frame's mean feature through the video projector (``model.mm_projector``,
  the published key, which starts from the base folder's image projector as in the default representation);
* position 2t+1, the **context** token: the question attends over the frame's P patch features and the attended
  feature goes through its own projector. The question is the prompt's own text: the mean of the input embeddings
  of the question's tokens (the positions :mod:`llavidal.prompting` marks in ``query_mask``), mapped by a linear
  layer into the feature space (``query``); each frame's P patches are weighted by softmax(q · x / sqrt(D)), and
  the weighted sum is projected to the LLM's width (``proj``).

The two linear layers are :class:`VideoContextAttention` at ``model.mm_video_context``: in the projector family, so
they train with the video projector in projector mode, are saved in and loaded from adapters under that prefix,
and travel with the video modality in MMPro merges. A model without the two-token representation has no such
module (its state dict, parameter count and random-number draws are unchanged).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..representation import (
    METADATA_KEY,
    TOKENS_PER_FRAME,
    TwoTokenSpec,
    describe,
    from_metadata,
    set_representation,
    to_metadata,
    two_token_spec,
)

CONTEXT_MODULE = "mm_video_context"  # attribute on the decoder; state-dict prefix model.mm_video_context.


class VideoContextAttention(nn.Module):
    """The context token's trainable part: ``query`` (LLM width → feature width) and ``proj`` (feature width → LLM
    width), both linear with bias."""

    def __init__(self, hidden_size: int, feature_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, feature_size, bias=True)
        self.proj = nn.Linear(feature_size, hidden_size, bias=True)

    def attend(self, frames: torch.Tensor, questions: torch.Tensor, frame_sample: torch.Tensor) -> torch.Tensor:
        """``frames`` [F, P, D] patch features, ``questions`` [B, H] pooled question embeddings, ``frame_sample``
        [F] the sample of each frame → attended features [F, D]."""
        q = self.query(questions.to(self.query.weight.dtype))  # [B, D]
        x = frames.to(q.dtype)
        scores = torch.einsum("fpd,fd->fp", x, q[frame_sample]).float() / math.sqrt(x.shape[-1])  # [F, P]
        weights = torch.softmax(scores, dim=-1).to(x.dtype)
        return torch.einsum("fp,fpd->fd", weights, x)  # [F, D]

    def forward(self, frames: torch.Tensor, questions: torch.Tensor, frame_sample: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(frames, questions, frame_sample))  # [F, H]


def context_module(model) -> VideoContextAttention | None:
    """The model's context module (on its decoder), or None."""
    return getattr(model.model, CONTEXT_MODULE, None)


def add_context_module(decoder: nn.Module, config) -> None:
    """Called while a model is built: a two-token config gets its context module (default configs get nothing)."""
    spec = two_token_spec(config)
    if spec is not None:
        setattr(decoder, CONTEXT_MODULE, VideoContextAttention(config.hidden_size, int(config.mm_hidden_size)))


def enable_two_token(model, spec: TwoTokenSpec, seed: int = 0) -> bool:
    """Give a built model the two-token representation: record ``spec`` in its config and, when it has no context
    module yet, add one: ``query`` from normal(0, 0.02) weights and zero bias (seeded; the attention then starts
    uniform, so the context token starts as the frame mean), ``proj`` a copy of the video projector. Returns whether
    the module was made."""
    set_representation(model.config, spec)
    if context_module(model) is not None:
        return False
    video = model.projector("video")
    module = VideoContextAttention(model.config.hidden_size, video.in_features).to(video.weight.device)
    g = torch.Generator().manual_seed(int(seed) + 7919)
    with torch.no_grad():
        module.query.weight.copy_(torch.randn(module.query.weight.shape, generator=g) * 0.02)
        module.query.bias.zero_()
        module.proj.weight.copy_(video.weight.detach().float())
        module.proj.bias.copy_(video.bias.detach().float())
    setattr(model.model, CONTEXT_MODULE, module.to(video.weight.dtype))
    return True


def state_keys(prefix: str = "model.") -> list[str]:
    """The state-dict keys of the context module."""
    return [f"{prefix}{CONTEXT_MODULE}.{part}.{w}" for part in ("query", "proj") for w in ("weight", "bias")]


# ---------------------------------------------------------------- adapters
def representation_metadata(config) -> dict[str, str]:
    """The adapter metadata that records a model's video representation."""
    return {METADATA_KEY: to_metadata(two_token_spec(config))}


def context_state(model, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The context module's tensors under their state-dict keys (from ``state``, a plain full state dict, when
    given); empty for a model without the two-token representation."""
    module = context_module(model)
    if module is None:
        return {}
    if state is not None:
        return {k: state[k] for k in state_keys()}
    return {f"model.{CONTEXT_MODULE}.{k}": v.detach() for k, v in module.state_dict().items()}


def _trained_video(meta: dict[str, str], state: dict) -> bool:
    if meta.get("modalities") is not None:
        return "video" in meta["modalities"].split(",")
    return "model.mm_projector.weight" in state


def apply_file_representation(model, meta: dict[str, str], state: dict, path) -> None:
    """Before a projector file's tensors are copied in: the model takes the video representation of a file that
    trained video (the release's files and adapters without the record: spatio-temporal rows), growing a context
    module when it becomes two-token. A model whose video projector was already trained on the other representation
    refuses the file: one model reads one video representation."""
    from .validate import CheckpointError

    has_context = any(k.startswith(f"model.{CONTEXT_MODULE}.") for k in state)
    if not _trained_video(meta, state):  # the file's video parts are untrained copies: its representation is moot
        return
    try:
        theirs = from_metadata(meta, str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if theirs is None and has_context:
        raise CheckpointError(f"{path}: holds a {CONTEXT_MODULE} context module but its metadata does not record the "
                              "two-token video representation")
    ours = two_token_spec(model.config)
    if "video" in (model.config.trained_modalities or []) and theirs != ours:
        width = model.config.mm_hidden_size
        raise CheckpointError(f"{path}: its video projector was trained on {describe(theirs, width)}, but the model's "
                              f"was trained on {describe(ours, width)}; one model reads one video representation, so "
                              "these cannot be combined")
    if theirs is not None:
        enable_two_token(model, theirs)
    elif ours is not None:  # back to spatio-temporal rows: the context module goes
        set_representation(model.config, None)
        if context_module(model) is not None:
            delattr(model.model, CONTEXT_MODULE)


def load_context_state(model, state: dict, meta: dict[str, str], path) -> dict[str, torch.Tensor]:
    """The context module's tensors of a file, checked against the model's module (empty when the model has none,
    or the file has none and did not train video: like a projector, it is taken whenever the file holds it)."""
    from .validate import CheckpointError

    module = context_module(model)
    if module is None:
        return {}
    own = {f"model.{CONTEXT_MODULE}.{k}": v for k, v in module.state_dict().items()}
    missing = [k for k in own if k not in state]
    if missing and not _trained_video(meta, state):
        return {}
    if missing:
        raise CheckpointError(f"{path}: records the two-token video representation but lacks {', '.join(missing)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    return {k: state[k] for k in own}


def question_embeddings(embeds: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, H] token embeddings, [B, L] question positions → [B, H] mean embedding of each sample's question
    (zeros for a sample without question text: its query is then the projection's bias)."""
    mask = query_mask.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(-1)  # [B, L, 1]
    total = (embeds * mask).sum(dim=1)  # [B, H]
    return total / mask.sum(dim=1).clamp(min=1)


def question_mask(queries: Sequence[list[int] | None], lengths: Sequence[int], width: int,
               left: bool) -> torch.Tensor | None:
    """[B, width] bool mask of the question positions of each sequence, padded like its ids (left or right); None
    when no sequence has them (every model but a two-token one)."""
    if all(q is None for q in queries):
        return None
    mask = torch.zeros((len(queries), width), dtype=torch.bool)
    for i, (q, n) in enumerate(zip(queries, lengths)):
        if q:
            mask[i, torch.tensor(q) + (width - n if left else 0)] = True
    return mask


def splice_rows(model, input_ids: torch.Tensor, embeds: torch.Tensor, rows: torch.Tensor,
                query_mask: torch.Tensor | None, patch_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions [2F], projected rows [2F, H]) of the video spans of a batch in the two-token representation.

    ``rows`` are the packed per-frame features [F * P, D] of the batch (frames in the row-major order of the spans);
    their sample is read from the span positions, so nothing waits on the device."""
    spec = two_token_spec(model.config)
    if query_mask is None:
        raise ValueError("the two-token video representation needs the question's positions (query_mask): build "
                         "inputs with llavidal.inference (prepare_inputs / make_request) or the training dataset")
    L = embeds.shape[1]
    n_frames = rows.shape[0] // spec.patches
    proj = model.projector("video")
    frames = rows.reshape(n_frames, spec.patches, rows.shape[-1]).to(device=proj.weight.device, dtype=proj.weight.dtype)
    positions = torch.nonzero_static((input_ids == patch_id).reshape(-1), size=TOKENS_PER_FRAME * n_frames).squeeze(-1)
    frame_sample = positions[0::TOKENS_PER_FRAME] // L  # [F]
    content = proj(frames.mean(dim=1))  # [F, H]
    context = context_module(model)(frames, question_embeddings(embeds, query_mask), frame_sample.to(frames.device))
    projected = torch.stack([content, context], dim=1).reshape(TOKENS_PER_FRAME * n_frames, -1)  # content, context, ...
    return positions, projected


__all__ = ["CONTEXT_MODULE", "VideoContextAttention", "add_context_module", "apply_file_representation",
           "context_module", "context_state", "enable_two_token", "load_context_state", "question_embeddings",
           "question_mask", "representation_metadata", "splice_rows", "state_keys"]

"""What trains in each training mode — the one place that decides it (docs/design.md#recipe).

``projector`` (the published ``--tune_mm_mlp_adapter`` recipe): the LLM and lm_head frozen; trainable are the
projectors of the active modalities and, when spans have start/end tokens, those tokens' input-embedding rows
(through :class:`~llavidal.model.modeling_llavidal.EmbeddingWithTrainableRows`, so gradients, optimizer state and
weight decay touch only those rows). ``lora``: the same plus peft LoRA adapters on the LLM. ``full``: everything.
Trainable parameters are kept in fp32 (optimizer state and updates); frozen ones stay in the compute dtype.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..constants import MODALITIES

logger = logging.getLogger(__name__)

__all__ = ["MODES", "LoraSettings", "lora_targets", "set_trainable", "start_end_ids"]

MODES = ("projector", "lora", "full")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def start_end_ids(model, modalities: Sequence[str]) -> list[int]:
    """Ids of the start and end tokens of ``modalities``' spans."""
    return [model.config.token_id(t) for m in modalities for t in (MODALITIES[m].start_token, MODALITIES[m].end_token)]


def lora_targets(model, wanted: Sequence[str]) -> list[str]:
    """The names of ``wanted`` that the backbone's decoder layers have (LLaMA, Qwen2, Mistral and Gemma share the
    default names; others name their projections differently). An error names the layers found when none fits."""
    layers = {name.rsplit(".", 1)[-1] for name, mod in model.model.layers.named_modules()
              if isinstance(mod, torch.nn.Linear)}
    found = [t for t in wanted if t in layers]
    if not found:
        raise ValueError(f"--lora_target_modules {','.join(wanted)}: none of these linear layers exists in this "
                         f"backbone's decoder layers; it has {','.join(sorted(layers))}")
    absent = [t for t in wanted if t not in layers]
    if absent:
        logger.warning("LoRA: this backbone has no %s layers; adapting %s", ",".join(absent), ",".join(found))
    return found


def set_trainable(model, mode: str, modalities: Sequence[str], *, start_end: bool = True,
                  lora: LoraSettings | None = None):
    """Make exactly what ``mode`` trains trainable (see the module docstring); returns the model to train (wrapped
    by peft in ``lora`` mode)."""
    if mode not in MODES:
        raise ValueError(f"training mode {mode!r}; expected one of {', '.join(MODES)}")
    rows = start_end_ids(model, modalities) if start_end else []
    if mode == "full":
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
        if rows:
            model.enable_trainable_token_rows(rows)
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            lora = lora or LoraSettings()
            model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=lora_targets(model, lora.target_modules),
                                                     task_type="CAUSAL_LM"))
        inner = model.get_base_model() if mode == "lora" else model
        for m in modalities:
            for module in inner.projector_modules(m):  # the projector (+ the two-token context module for video)
                module.requires_grad_(True)
        if rows:
            inner.get_input_embeddings().rows.requires_grad_(True)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model

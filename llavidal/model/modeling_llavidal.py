"""LLAVIDAL causal LM: LLaMA + one linear projector per modality, spliced into the token embeddings.

The splice (docs/design.md#model): a prompt holds, per modality, a span ``<x_start> <x_patch>*N <x_end>``. The N patch
positions receive the projected feature rows of that sample, in order; every other position keeps its token
embedding, and the sequence length does not change. Spans are found by token id, so any subset of modalities,
in any order, works per sample, and a batch needs no padding of features: the rows of all samples are packed
into one ``[R, D]`` tensor whose order is the row-major order of the patch tokens in ``input_ids``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import GenerationMixin, LlamaModel, LlamaPreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers < 5.2x: the int / 1-D positions forms that LLaMA's forward used then

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, keep, :]

from ..constants import MODALITIES, Modality
from ..representation import tokens_for_rows, two_token_spec
from . import two_token
from .configuration_llavidal import LlavidalConfig

FeatureInput = torch.Tensor | Sequence[torch.Tensor | None] | None


def features_by_modality(video=None, object=None, pose=None, kwargs: dict | None = None) -> dict[str, FeatureInput]:
    """``{modality: features}`` from the named arguments and, for registered modalities beyond the published
    three, the ``{name}_features`` keys popped from ``kwargs``."""
    given = {"video": video, "object": object, "pose": pose}
    for name in MODALITIES:
        if name not in given:
            given[name] = kwargs.pop(f"{name}_features", None) if kwargs is not None else None
    return given


def pack_features(features: FeatureInput, dim: int, name: str) -> torch.Tensor | None:
    """Bring one modality's features of a batch to packed rows ``[R, dim]``.

    Accepts packed rows ``[R, dim]``, a dense batch ``[B, N, dim]`` (or objects ``[B, n, 8, dim]``), or a list
    with one entry per sample: ``[N, dim]``, objects ``[n, 8, dim]``, or ``None`` for a sample without it.
    """
    if features is None:
        return None
    if isinstance(features, torch.Tensor):
        if features.shape[-1] != dim:
            raise ValueError(f"{name} features have width {features.shape[-1]}, expected {dim} "
                             f"(shape {tuple(features.shape)})")
        return features.reshape(-1, dim)
    rows = [f.reshape(-1, f.shape[-1]) for f in features if f is not None]
    if not rows:
        return None
    bad = [tuple(r.shape) for r in rows if r.shape[-1] != dim]
    if bad:
        raise ValueError(f"{name} features have widths {bad}, expected last dimension {dim}")
    return torch.cat(rows, dim=0)


class EmbeddingWithTrainableRows(nn.Module):
    """A frozen embedding whose rows ``ids`` are replaced by a small trainable matrix.

    Projector-only training (docs/design.md#recipe) trains exactly the start/end rows: this keeps the gradient, the
    optimizer state and any weight decay on those k rows instead of the whole ``[V, H]`` matrix. ``weight`` returns the
    merged matrix, so checkpoint code reads it like a plain ``nn.Embedding``; :meth:`merged` gives one back.
    """

    def __init__(self, base: nn.Embedding, ids: Sequence[int]):
        super().__init__()
        self.base = base.requires_grad_(False)
        ids_t = torch.as_tensor(list(ids), dtype=torch.long, device=base.weight.device)
        self.register_buffer("ids", ids_t, persistent=False)
        lut = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=base.weight.device)
        lut[ids_t] = torch.arange(len(ids_t), device=base.weight.device)
        self.register_buffer("lut", lut, persistent=False)
        self.rows = nn.Parameter(base.weight.detach()[ids_t].clone())  # [k, H]

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight.detach().index_copy(0, self.ids, self.rows.detach().to(self.base.weight.dtype))

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, H]
        out = self.base(input_ids)
        slot = self.lut[input_ids]  # [B, L], -1 where the token is not a trainable row
        # an embedding lookup, not advanced indexing: the backward of ``rows[idx]`` (index_put with accumulation)
        # adds the gradients of repeated rows in a thread-dependent order on CPU, so two runs with the same seed
        # would differ in the last bits; the embedding backward sums them in a fixed order
        own = nn.functional.embedding(slot.clamp(min=0), self.rows.to(out.dtype))
        return torch.where((slot >= 0).unsqueeze(-1), own, out)

    def merged(self) -> nn.Embedding:
        with torch.no_grad():
            self.base.weight[self.ids] = self.rows.to(self.base.weight.dtype)
        return self.base


class LlavidalModel(LlamaModel):
    """LLaMA decoder plus one projector per registered modality, the published three named as in the original
    state dicts (``model.mm_projector``, ``model.mm_projector_forobject``, ``model.mm_projector_forpose``)."""

    config_class = LlavidalConfig

    def __init__(self, config: LlavidalConfig):
        super().__init__(config)
        add_projectors(self, config)
        self.post_init()

    def projector(self, modality: str) -> nn.Linear:
        return getattr(self, MODALITIES[modality].projector)


class MultimodalMixin:
    """The splice and what goes with it, shared by every LLAVIDAL causal LM: :class:`LlavidalForCausalLM` (LLaMA, the
    published model) and the classes of other backbones (:mod:`llavidal.model.backbones`).

    The host class is a transformers causal LM whose decoder is ``self.model`` and whose ``config`` carries the
    multimodal fields (``modality_token_ids``, feature widths); the projectors live on ``self.model`` under the
    registry's attribute names, so state-dict keys are ``model.mm_projector*`` whatever the backbone.
    """

    def get_model(self):  # name used by the original code
        return self.model

    def projector(self, modality: str) -> nn.Linear:
        return getattr(self.model, MODALITIES[modality].projector)

    def projector_modules(self, modality: str) -> list[nn.Module]:
        """What trains, saves and merges with a modality's projector: the projector, and for the video of a two-token
        model its context module (docs/design.md#two-token-video)."""
        extra = two_token.context_module(self) if modality == "video" else None
        return [self.projector(modality)] + ([extra] if extra is not None else [])

    # ---------------------------------------------------------------- the splice
    def patch_token_id(self, modality: str) -> int:
        return self.config.token_id(MODALITIES[modality].patch_token)

    def embed_multimodal(
        self,
        input_ids: torch.LongTensor,  # [B, L]
        video_features: FeatureInput = None,
        object_features: FeatureInput = None,
        pose_features: FeatureInput = None,
        query_mask: torch.Tensor | None = None,  # [B, L] the question's positions (two-token video only)
        **more_features: FeatureInput,  # {name}_features of registered modalities
    ) -> torch.Tensor:  # [B, L, H]
        """Token embeddings with every patch position replaced by its projected feature row.

        One ``index_copy`` into the flattened embeddings for all modalities; positions come from
        ``nonzero_static`` with the known row count, so nothing waits on the device. The video of a two-token model
        (docs/design.md#two-token-video) fills two positions per frame, its context token computed from the
        embeddings of the question's tokens (``query_mask``).
        """
        embeds = self.get_input_embeddings()(input_ids)  # [B, L, H]
        B, L, H = embeds.shape
        given = features_by_modality(video_features, object_features, pose_features, more_features)
        if more_features:
            raise TypeError(f"unknown feature arguments {sorted(more_features)}; registered modalities: "
                            f"{', '.join(MODALITIES)}")
        positions, projected = [], []
        for name, m in MODALITIES.items():
            rows = pack_features(given[name], m.dim(self.config), name)  # [R, D] or None
            mask = input_ids == self.patch_token_id(name)  # [B, L]
            n_rows = 0 if rows is None else rows.shape[0]
            self._check_rows(m, mask, n_rows, tokens_for_rows(self.config, name, n_rows))
            if n_rows == 0:
                continue
            if name == "video" and two_token_spec(self.config) is not None:
                pos, rows_h = two_token.splice_rows(self, input_ids, embeds, rows, query_mask, self.patch_token_id(name))
                positions.append(pos)
                projected.append(rows_h)
                continue
            proj = self.projector(name)
            projected.append(proj(rows.to(device=proj.weight.device, dtype=proj.weight.dtype)))  # [R, H]
            positions.append(torch.nonzero_static(mask.reshape(-1), size=n_rows).squeeze(-1))  # [R]
        if not projected:
            return embeds
        flat = embeds.reshape(B * L, H).index_copy(0, torch.cat(positions), torch.cat(projected).to(embeds.dtype))
        return flat.view(B, L, H)

    @staticmethod
    def _check_rows(m: Modality, mask: torch.Tensor, n_rows: int, expected: int | None = None) -> None:
        """Patch tokens and feature rows must agree: one token per row (``expected`` tokens when the representation
        says otherwise: two per frame for two-token video).

        On CPU the count is free, so a mismatch raises a readable error; on an accelerator the check is an
        asynchronous device assert, which costs no host sync on the hot path.
        """
        expected = n_rows if expected is None else expected
        if mask.device.type == "cpu":
            n_tokens = int(mask.sum())
            if n_tokens != expected:
                per = (f"each {m.patch_token} needs exactly one {m.name} feature row" if expected == n_rows else
                       f"the {n_rows} rows need {expected} {m.patch_token} tokens (two per frame)")
                raise ValueError(
                    f"{m.name}: the batch holds {n_tokens} {m.patch_token} tokens but {n_rows} feature rows were "
                    f"given; {per} (build prompts with llavidal.prompting so spans follow the feature arrays)"
                )
        else:
            torch._assert_async(mask.sum() == expected, f"{m.name}: patch tokens and feature rows differ in number")

    def splice_inputs(self, input_ids, inputs_embeds, given: dict[str, FeatureInput], query_mask=None):
        """``(input_ids, inputs_embeds)`` for the decoder: at prefill / in training the features are spliced into
        the embeddings (which also verifies that no patch token is left without a row); single-token decoding steps
        (KV cache) hold no span and keep their ids."""
        has_features = any(f is not None for f in given.values())
        if inputs_embeds is None and input_ids is not None and (has_features or input_ids.shape[1] > 1):
            inputs_embeds = self.embed_multimodal(input_ids, query_mask=query_mask,
                                                  **{f"{k}_features": v for k, v in given.items()})
            input_ids = None
        return input_ids, inputs_embeds

    # ---------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        video_features: FeatureInput = None,
        object_features: FeatureInput = None,
        pose_features: FeatureInput = None,
        video_spatio_temporal_features: FeatureInput = None,
        **kwargs,
    ):
        """``GenerationMixin.generate`` on the spliced embeddings.

        Features enter once, at prefill, as ``inputs_embeds``; decoding then runs on the KV cache. As with any
        ``inputs_embeds`` generation, the returned ids are the new tokens only. Modality tokens are never
        generated (they are suppressed), so a decoding step can never meet a patch token without a row.
        """
        if video_features is None:
            video_features = video_spatio_temporal_features
        given = features_by_modality(video_features, object_features, pose_features, kwargs)
        query_mask = kwargs.pop("query_mask", None)
        if input_ids is not None and "inputs_embeds" not in kwargs:
            kwargs["inputs_embeds"] = self.embed_multimodal(input_ids, query_mask=query_mask,
                                                            **{f"{k}_features": v for k, v in given.items()})
            if kwargs.get("attention_mask") is None:
                kwargs["attention_mask"] = torch.ones_like(input_ids)
        elif input_ids is not None:
            kwargs["input_ids"] = input_ids
        suppress = list(kwargs.pop("suppress_tokens", None) or []) + self.never_generated_token_ids()
        return super().generate(suppress_tokens=suppress, **kwargs)

    def never_generated_token_ids(self) -> list[int]:
        """Ids a reply must never contain: every modality token."""
        return sorted({int(v) for v in (self.config.modality_token_ids or {}).values()})

    # ---------------------------------------------------------------- training helpers
    def enable_trainable_token_rows(self, ids: Sequence[int]) -> None:
        emb = self.get_input_embeddings()
        if isinstance(emb, EmbeddingWithTrainableRows):
            emb = emb.merged()
        self.set_input_embeddings(EmbeddingWithTrainableRows(emb, ids))

    def merge_trainable_token_rows(self) -> None:
        """Fold the trainable rows back into a plain ``nn.Embedding`` (before saving a full model folder)."""
        emb = self.get_input_embeddings()
        if isinstance(emb, EmbeddingWithTrainableRows):
            self.set_input_embeddings(emb.merged())


def add_projectors(decoder: nn.Module, config) -> None:
    """One ``Linear(feature width -> hidden)`` per registered modality on ``decoder``, under the registry's names."""
    for m in MODALITIES.values():
        setattr(decoder, m.projector, nn.Linear(m.dim(config), config.hidden_size, bias=True))
    two_token.add_context_module(decoder, config)


class LlavidalForCausalLM(MultimodalMixin, LlamaPreTrainedModel, GenerationMixin):
    """A LLaMA causal LM that reads video, object and pose features.

    The KV cache argument is ``cache`` (transformers' name since 5.2x; ``past_key_values`` is deprecated there and
    removed in 5.40). ``forward`` and ``generate`` take ``video_features``, ``object_features`` and ``pose_features`` (see
    :func:`pack_features` for the accepted layouts), and ``{name}_features`` for a registered modality; the original
    keyword ``video_spatio_temporal_features`` is accepted for video.
    """

    config_class = LlavidalConfig
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlavidalConfig):
        super().__init__(config)
        self.model = LlavidalModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # ---------------------------------------------------------------- transformers plumbing
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        video_features: FeatureInput = None,
        object_features: FeatureInput = None,
        pose_features: FeatureInput = None,
        video_spatio_temporal_features: FeatureInput = None,
        query_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if video_features is None:
            video_features = video_spatio_temporal_features
        given = features_by_modality(video_features, object_features, pose_features, kwargs)
        input_ids, inputs_embeds = self.splice_inputs(input_ids, inputs_embeds, given, query_mask)

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)  # [B, L', V]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["EmbeddingWithTrainableRows", "LlavidalForCausalLM", "LlavidalModel", "MultimodalMixin", "add_projectors",
           "features_by_modality", "pack_features"]

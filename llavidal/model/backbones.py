"""Other backbones: LLAVIDAL's projectors and splice on a decoder-only causal LM of another family
(docs/design.md#backbones).

The published model is LLaMA-1 (LLaVA-7B-Lightening, Vicuna v1.1 template): :class:`LlavidalForCausalLM`,
``model_type`` ``llavidal``, built by :func:`llavidal.model.base.load_base`. Any other decoder-only model that
transformers loads with ``AutoModelForCausalLM`` and whose causal LM keeps its decoder at ``.model`` (LLaMA-3,
Qwen2/2.5/3, Mistral, Gemma, Phi-3 ...) gets a class made from its own causal LM class:

* ``Llavidal<Backbone>Config`` = the backbone's config class + the multimodal fields of
  :class:`~llavidal.model.configuration_llavidal.LlavidalConfig` + ``template``; ``model_type``
  ``llavidal_<backbone>`` (``llavidal_qwen2``), which is how a saved folder says which backbone it holds;
* ``Llavidal<Backbone>ForCausalLM`` = :class:`MultimodalCausalLM` mixed in front of the backbone's own
  ``<Backbone>ForCausalLM``: the projectors are added to its decoder (``model.mm_projector*``, the published key
  names) and ``forward`` splices the features into ``inputs_embeds`` through the one implementation of the splice
  (:class:`~llavidal.model.modeling_llavidal.MultimodalMixin`) before the backbone's own forward runs. Weight keys
  are the backbone's own, so its checkpoint loads as is.

The classes are made once per backbone and registered with ``AutoConfig`` / ``AutoModelForCausalLM``.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from ..constants import MODALITIES, added_tokens
from .configuration_llavidal import ModalityTokens, multimodal_fields
from .modeling_llavidal import FeatureInput, LlavidalForCausalLM, MultimodalMixin, add_projectors, features_by_modality
from .validate import CheckpointError, check_finite

logger = logging.getLogger(__name__)

LIGHTENING = "llavidal"  # model_type of the published LLaMA-1 model (LlavidalForCausalLM)
PREFIX = "llavidal_"  # model_type of another backbone: llavidal_<backbone model_type>

__all__ = ["LIGHTENING", "MultimodalCausalLM", "backbone_classes", "backbone_of", "is_lightening_base",
           "is_llavidal_model_type", "load_backbone_base", "model_class"]


class MultimodalCausalLM(MultimodalMixin):
    """Mixed in front of a backbone's ``<Backbone>ForCausalLM``: projectors on its decoder, the splice before its
    forward. ``forward`` / ``generate`` take the same feature arguments as :class:`LlavidalForCausalLM`."""

    def __init__(self, config):
        super().__init__(config)  # the backbone builds self.model and self.lm_head
        add_projectors(self.model, config)
        self.post_init()

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
    ):
        if video_features is None:
            video_features = video_spatio_temporal_features
        given = features_by_modality(video_features, object_features, pose_features, kwargs)
        input_ids, inputs_embeds = self.splice_inputs(input_ids, inputs_embeds, given, query_mask)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)


def is_llavidal_model_type(model_type) -> bool:
    return isinstance(model_type, str) and (model_type == LIGHTENING or model_type.startswith(PREFIX))


def backbone_of(config) -> str:
    """The backbone family of a LLAVIDAL config: ``llama-lightening`` for the published model, else the backbone's
    transformers model_type (``qwen2``, ``llama`` for LLaMA-3 ...)."""
    model_type = config.model_type
    return "llama-lightening" if model_type == LIGHTENING else model_type.removeprefix(PREFIX)


def model_class(model_type: str) -> type:
    """The class of a saved LLAVIDAL folder's ``model_type``."""
    if model_type == LIGHTENING:
        return LlavidalForCausalLM
    return backbone_classes(model_type.removeprefix(PREFIX))[1]


@functools.cache
def backbone_classes(backbone: str) -> tuple[type, type]:
    """``(config class, causal LM class)`` of LLAVIDAL on ``backbone`` (a transformers model_type), made once and
    registered with AutoConfig / AutoModelForCausalLM under ``llavidal_<backbone>``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if backbone not in CONFIG_MAPPING:
        raise CheckpointError(f"model_type {backbone!r} is not a model this transformers knows; expected a decoder-only "
                              "causal LM such as llama, mistral, qwen2, qwen3, gemma, phi3")
    base_config = CONFIG_MAPPING[backbone]
    if base_config not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise CheckpointError(f"model_type {backbone!r} has no causal LM class in transformers "
                              "(AutoModelForCausalLM); llavidal needs a decoder-only language model")
    base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base_config]
    if getattr(base_model, "base_model_prefix", None) != "model":
        raise CheckpointError(f"{base_model.__name__} keeps its decoder at .{base_model.base_model_prefix}, not at "
                              ".model; llavidal supports causal LMs laid out like LLaMA, Mistral, Qwen2 and Gemma")
    fields = multimodal_fields()
    fields["template"] = ("str", "chat")  # the conversation template the model was built for (prompting)
    namespace = {"__module__": __name__, "model_type": PREFIX + backbone,
                 "__annotations__": {k: a for k, (a, _) in fields.items()}, **{k: d for k, (_, d) in fields.items()}}
    config_cls = strict(type(f"Llavidal{base_config.__name__}", (ModalityTokens, base_config), namespace))
    projectors = "|".join(re.escape(m.projector) for m in MODALITIES.values())
    model_cls = type(f"Llavidal{base_model.__name__}", (MultimodalCausalLM, base_model), {
        "__module__": __name__, "config_class": config_cls,
        # projectors are never in a backbone's own checkpoint: built from the base, they are initialised by us
        "_keys_to_ignore_on_load_missing": [rf"^model\.({projectors})\."]})
    globals()[config_cls.__name__] = config_cls  # importable by name (pickling, torch.compile guards)
    globals()[model_cls.__name__] = model_cls
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _share_weight_conversions(backbone, config_cls.model_type)
    return config_cls, model_cls


def _share_weight_conversions(backbone: str, model_type: str) -> None:
    """Checkpoint key conversions transformers applies to ``backbone`` apply to ours too (looked up by model_type)."""
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    mapping = get_checkpoint_conversion_mapping(backbone)
    if mapping:
        register_checkpoint_conversion_mapping(model_type, mapping, overwrite=True)


# ==================================================================== which loader a base folder needs
def is_lightening_base(cfg: dict, folder: str | os.PathLike) -> bool:
    """Does a base folder belong to the published model's path (:func:`llavidal.model.base.load_base`)?

    Yes for a LLaVA ``model_type`` (the Lightening folder), for an unknown one (read as LLaMA, with the errors of that
    path), and for ``llama`` with a sentencepiece LLaMA tokenizer (LLaMA-1/2, Vicuna v1.1/v1.5). No for ``llama``
    with a BPE ``tokenizer.json`` (LLaMA-3) and for every other transformers causal LM (Qwen2, Mistral ...)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type.startswith("llava") or model_type not in CONFIG_MAPPING:
        return True
    if model_type != "llama":
        return False
    folder = Path(folder)
    tok_cfg = folder / "tokenizer_config.json"
    try:
        tok_class = (json.loads(tok_cfg.read_text()).get("tokenizer_class") or "") if tok_cfg.is_file() else ""
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{tok_cfg}: invalid JSON: {e}") from None
    if tok_class.startswith("LlamaTokenizer"):
        return True
    return (folder / "tokenizer.model").is_file() or not (folder / "tokenizer.json").is_file()


# ==================================================================== building from a base folder
def load_backbone_base(
    folder: str | os.PathLike,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
    template: str | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A LLAVIDAL model on the backbone of ``folder`` (a transformers causal LM folder) and its tokenizer.

    The backbone's weights load under its own key names; every modality token is added to the tokenizer as a special
    token (embedding rows grown when the vocabulary has no padding rows left), their input and output rows start at
    the mean of the base rows; projectors start from normal(0, 0.02) weights and zero bias (seeded by ``seed``), the
    video projector from the folder's ``model.mm_projector`` when it has one. ``template``: the conversation template
    (default: ``chat``, the tokenizer's own, when it has one; else vicuna_v1_1)."""
    from ..prompting import CHAT, DEFAULT_TEMPLATE, check_template
    from .base import _sync_special_ids, init_projectors, load_tokenizer, use_end_of_turn_as_eos
    from .files import read_config_dict

    folder = Path(folder)
    backbone = read_config_dict(folder).get("model_type")
    config_cls, model_cls = backbone_classes(backbone)
    tokenizer = load_tokenizer(folder)
    template = template or (CHAT if getattr(tokenizer, "chat_template", None) else DEFAULT_TEMPLATE)
    check_template(template)
    if template == CHAT:
        use_end_of_turn_as_eos(tokenizer, folder)
    try:
        own = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json: not a valid {backbone} config: {e}") from None
    fields = {k: v for k, v in own.to_dict().items()
              if k not in ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map",
                           "dtype", "torch_dtype")}
    config = config_cls(**fields, template=template, tokenization="clean")
    attn = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    try:
        model, info = model_cls.from_pretrained(str(folder), config=config, dtype=dtype or torch.float32,
                                                output_loading_info=True, **attn)
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load the {backbone} weights: {str(e).splitlines()[0]}") from None
    missing = sorted(set(info.get("missing_keys", ())))
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(f"{folder}: weights miss or mismatch {len(missing) + len(info.get('mismatched_keys', []))}"
                              f" tensors of a {backbone} model, e.g. {(missing or info['mismatched_keys'])[:3]}")
    check_finite({n: p.detach() for n, p in model.named_parameters()}, folder)
    _add_token_rows(model, tokenizer, folder)
    loaded = _folder_keys(folder)
    if "model.mm_projector.weight" not in loaded:
        logger.debug("%s has no model.mm_projector: the video projector starts from random weights", folder)
    with torch.no_grad():
        init_projectors(dict(model.state_dict(keep_vars=True)), loaded, seed)
    _sync_special_ids(model, tokenizer)
    model.config.architectures = [model_cls.__name__]
    return model, tokenizer


def _folder_keys(folder: Path) -> set[str]:
    """Tensor names in a folder's weight files (from the shard index, or the safetensors headers)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return set(json.loads((folder / index).read_text()).get("weight_map", {}))
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as fh:
            return set(fh.keys())
    return set()


def _add_token_rows(model, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Rows for the modality tokens: the matrix grows when the tokenizer outgrows it (a vocabulary padded by the
    family, as Qwen's, has room); input and output rows of the added tokens start at the mean of the base rows."""
    from .validate import MAX_PADDING_ROWS

    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in added_tokens()]
    n_base = min(ids)  # modality tokens come after the base vocabulary
    rows = model.get_input_embeddings().weight.shape[0]
    if n_base > rows or rows - n_base > max(MAX_PADDING_ROWS, rows // 64):
        raise CheckpointError(f"{folder}: the tokenizer has {n_base} tokens before the modality tokens but the "
                              f"embedding has {rows} rows; tokenizer and weights do not belong together")
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    idx = torch.tensor(ids)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[idx] = emb[:n_base].float().mean(dim=0, keepdim=True).to(emb.dtype)
        head = model.get_output_embeddings().weight
        if head.data_ptr() != emb.data_ptr():
            head[idx] = head[:n_base].float().mean(dim=0, keepdim=True).to(head.dtype)

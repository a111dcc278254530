"""A base folder in the LLaVA-7B-Lightening layout -> a :class:`LlavidalForCausalLM` and its tokenizer.

The folder has a config.json with LLaVA fields and a LLaVA ``model_type`` (read as a plain LLaMA config), ``.bin`` or
safetensors weights holding ``model.mm_projector.*`` (the video projector's starting point), and a sentencepiece
tokenizer with the three LLaVA tokens. Its config carries wrong special ids (bos 0 / eos 1); ours always come from
the tokenizer. The modality tokens are added here, their start/end rows initialised to the mean of the base rows
(docs/design.md#model).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaTokenizer, PreTrainedTokenizerBase

from ..constants import MODALITIES, added_tokens
from ..io_utils import atomic_write_bytes
from .configuration_llavidal import LlavidalConfig
from .files import normalise_keys, read_config_dict, read_folder_state_dict
from .modeling_llavidal import LlavidalForCausalLM
from .validate import (
    CheckpointError,
    check_base_config,
    check_finite,
    check_tokenizer,
    check_tokenizer_files,
    check_tokenizer_vs_embedding,
)

logger = logging.getLogger(__name__)

__all__ = ["config_from_base", "init_projectors", "load_base", "load_tokenizer", "modality_token_ids",
           "save_tokenizer", "use_end_of_turn_as_eos"]


_LLAMA_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias", "head_dim",
)


_LLAVA_FIELDS = ("mm_hidden_size", "mm_vision_tower", "mm_vision_select_layer", "use_mm_proj")


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The folder's tokenizer with every LLAVIDAL modality token (added as special tokens), pad = ``<unk>`` when the
    folder has none (LLaMA), else eos."""
    cls = _tokenizer_class(Path(folder))
    check_tokenizer_files(Path(folder), sentencepiece=cls is LlamaTokenizer)
    try:
        tok = cls.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load a tokenizer from it: {e}") from None
    check_tokenizer(tok, folder)
    missing = [t for t in added_tokens() if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    required = ("bos_token_id", "eos_token_id", "pad_token_id") if cls is LlamaTokenizer else ("eos_token_id",
                                                                                                 "pad_token_id")
    for name in required:
        if getattr(tok, name) is None:
            raise CheckpointError(f"{folder}: the tokenizer defines no {name[:-3]}")
    return tok


def use_end_of_turn_as_eos(tok: PreTrainedTokenizerBase, folder: str | os.PathLike) -> None:
    """eos := the token that closes an assistant turn in the tokenizer's chat template (``<|eot_id|>``,
    ``<|im_end|>``), so that generation stops where a reply ends (other backbones; docs/design.md#backbones)."""
    from ..prompting import chat_end_of_turn

    end, _ = chat_end_of_turn(tok)
    if end != tok.eos_token:
        logger.info("%s: eos is %s, the end of an assistant turn in the chat template (was %s)", folder, end,
                    tok.eos_token)
        tok.eos_token = end


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: str | os.PathLike) -> None:
    """The tokenizer's files in ``out``, with its sentencepiece model (``tokenizer.model``) when it has one:
    transformers writes only ``tokenizer.json``, and the original release's ids (``--tokenization original``) are cut
    by the sentencepiece model itself."""
    tokenizer.save_pretrained(str(out))
    model_file = getattr(tokenizer, "vocab_file", None)
    target = Path(out) / "tokenizer.model"
    if model_file and Path(model_file).is_file() and Path(model_file).resolve() != target.resolve():
        atomic_write_bytes(target, Path(model_file).read_bytes())


def _tokenizer_class(folder: Path):
    """LLaMA tokenizers load through ``LlamaTokenizer`` itself: AutoTokenizer would follow the folder's LLaVA
    ``model_type`` to a generic backend that tokenizes differently from the sentencepiece model."""
    cfg_path = folder / "tokenizer_config.json"
    try:
        cls = json.loads(cfg_path.read_text()).get("tokenizer_class") or "" if cfg_path.is_file() else ""
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON: {e}") from None
    return LlamaTokenizer if cls.startswith("LlamaTokenizer") else AutoTokenizer


def modality_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {t: int(tokenizer.convert_tokens_to_ids(t)) for t in added_tokens()}


def _sync_special_ids(model: LlavidalForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
    """Special ids always come from the tokenizer (the Lightening folder's config says bos 0 / eos 1)."""
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    for k, v in ids.items():
        setattr(model.config, k, v)
    gen = model.generation_config if model.generation_config is not None else GenerationConfig()
    for k, v in ids.items():
        setattr(gen, k, v)
    gen.do_sample = False
    for k in ("temperature", "top_p", "top_k"):
        setattr(gen, k, None)
    model.generation_config = gen
    model.config.modality_token_ids = modality_token_ids(tokenizer)


def config_from_base(cfg: dict, vocab_size: int, **overrides) -> LlavidalConfig:
    kwargs = {k: cfg[k] for k in _LLAMA_FIELDS + _LLAVA_FIELDS if cfg.get(k) is not None}
    if "rope_theta" in kwargs and "rope_parameters" not in kwargs:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta")}
    kwargs.pop("rope_theta", None)
    if kwargs.get("rope_scaling") is None:
        kwargs.pop("rope_scaling", None)
    kwargs.update(overrides)
    return LlavidalConfig(vocab_size=vocab_size, **kwargs)


def _mean_init_rows(weight: torch.Tensor, n_old: int) -> None:
    """Rows past ``n_old`` := mean of the first ``n_old`` rows (how start/end rows start: docs/design.md#model)."""
    if weight.shape[0] > n_old:
        weight[n_old:] = weight[:n_old].float().mean(dim=0, keepdim=True).to(weight.dtype)


def init_projectors(sd: dict[str, torch.Tensor], loaded: set[str], seed: int = 0) -> None:
    """Projectors of a model built from a base folder: normal(0, 0.02) weights and zero bias, drawn from a generator
    seeded with ``seed`` (never the global RNG: the same seed gives the same model in every process), except the
    video projector when the base weights held one (``loaded``: the keys read from the folder)."""
    gen = torch.Generator().manual_seed(seed)
    for m in MODALITIES.values():
        if m.init_from_base and f"model.{m.projector}.weight" in loaded:
            continue
        w = sd[f"model.{m.projector}.weight"]
        w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
        sd[f"model.{m.projector}.bias"].zero_()


def load_base(
    folder: str | os.PathLike,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> tuple[LlavidalForCausalLM, PreTrainedTokenizerBase]:
    """Build a LLAVIDAL model from a LLaVA-Lightening (or plain LLaMA / Vicuna) base folder; a folder of another
    backbone (LLaMA-3, Qwen2.5 ...) goes to :func:`llavidal.model.backbones.load_backbone_base`.

    The base ``mm_projector`` initialises the video projector; the projectors the folder lacks (object, pose) start
    from normal(0, 0.02) weights and zero bias, drawn from a generator seeded with ``seed`` (never from the global
    RNG, so that a load gives the same model whatever ran before it); the added modality rows of the input and
    output embeddings start at the mean of the existing rows.
    """
    folder = Path(folder)
    cfg = read_config_dict(folder)
    from .backbones import is_lightening_base, load_backbone_base

    if not is_lightening_base(cfg, folder):
        return load_backbone_base(folder, dtype=dtype, attn_implementation=attn_implementation, seed=seed)
    check_base_config(cfg, folder / "config.json")
    tokenizer = load_tokenizer(folder)
    state = normalise_keys(read_folder_state_dict(folder))
    check_finite(state, folder)
    if "model.embed_tokens.weight" not in state:
        raise CheckpointError(f"{folder}: weights hold no model.embed_tokens.weight; not a LLaMA checkpoint")
    n_base_rows = state["model.embed_tokens.weight"].shape[0]
    n_tok_base = len(tokenizer) - sum(1 for t in added_tokens() if t in tokenizer.get_vocab())
    check_tokenizer_vs_embedding(n_tok_base, n_base_rows, folder)
    vocab = max(n_base_rows, len(tokenizer))
    config = config_from_base(cfg, vocab_size=vocab)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    target_dtype = dtype or torch.float32

    with torch.device("meta"):
        model = LlavidalForCausalLM(config)
    model.to_empty(device="cpu")
    model.to(target_dtype)

    with torch.no_grad():
        sd = model.state_dict()
        unexpected = []
        for k, v in state.items():
            if k in ("model.embed_tokens.weight", "lm_head.weight"):
                continue
            if k not in sd:
                unexpected.append(k)
                continue
            if sd[k].shape != v.shape:
                raise CheckpointError(f"{folder}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(sd[k].shape)}")
            sd[k].copy_(v)
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key not in state:
                if key == "lm_head.weight" and config.tie_word_embeddings:
                    continue
                raise CheckpointError(f"{folder}: weights hold no {key}")
            sd[key][:n_base_rows].copy_(state[key])
            _mean_init_rows(sd[key], n_base_rows)
        proj_from_base = "model.mm_projector.weight" in state
        init_projectors(sd, set(state), seed)
    projectors = tuple(f"model.{m.projector}." for m in MODALITIES.values())
    missing = [k for k in sd if k not in state and not k.startswith(projectors)]
    if missing:
        raise CheckpointError(f"{folder}: weights miss {len(missing)} tensors of a LLaMA model, e.g. {missing[:3]}")
    if unexpected:
        logger.info("%s: ignored %d tensors that are not part of the model, e.g. %s", folder, len(unexpected),
                    unexpected[:3])
    if not proj_from_base:
        logger.warning("%s has no model.mm_projector: the video projector starts from random weights", folder)
    _reinit_rotary(model)
    _sync_special_ids(model, tokenizer)
    model.config.architectures = ["LlavidalForCausalLM"]
    return model, tokenizer


def _reinit_rotary(model: LlavidalForCausalLM) -> None:
    """Buffers created on the meta device (rotary ``inv_freq``) are recomputed for real."""
    rotary = model.model.rotary_emb
    fresh = type(rotary)(config=model.config)
    for name, buf in fresh.named_buffers():
        setattr(rotary, name, buf.to(next(model.parameters()).device))
    for attr in ("original_inv_freq", "attention_scaling"):
        if hasattr(fresh, attr):
            setattr(rotary, attr, getattr(fresh, attr))

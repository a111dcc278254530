"""Our model folders, and the one entry point that loads any checkpoint: :func:`load_pretrained`.

What meets here (docs/design.md#artifacts):

* a **base folder** in the LLaVA-7B-Lightening layout (:mod:`.base`);
* a **projector file** or our **adapter** on top of it (:mod:`.adapters`);
* **our folder** (``model_type: llavidal``): written by :func:`save_pretrained`, loadable bit for bit; a
  projector-only training output holds only the adapter and points at its base folder;
* the device, dtype and attention policy of loading (:func:`default_device`, :func:`resolve_dtype`).

Reading raw files is :mod:`.files`; validation with clear errors is :mod:`.validate`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from ..console import library_quiet
from ..constants import MODALITIES
from ..io_utils import atomic_write_text
from .adapters import load_projector, save_adapter
from .backbones import is_llavidal_model_type, model_class
from .base import _sync_special_ids, load_base, load_tokenizer, modality_token_ids, save_tokenizer
from .configuration_llavidal import LlavidalConfig
from .files import normalise_keys, read_config_dict
from .hub import hub_id, resolve_model_path
from .modeling_llavidal import LlavidalForCausalLM
from .validate import CheckpointError, check_model_finite, check_model_vocab

logger = logging.getLogger(__name__)

AutoConfig.register("llavidal", LlavidalConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavidalConfig, LlavidalForCausalLM, exist_ok=True)

__all__ = ["ADAPTER_FOLDER_FILE", "default_device", "is_llavidal_folder", "load_pretrained", "plain_state_dict",
           "resolve_attn_implementation", "resolve_dtype", "save_adapter_folder", "save_pretrained"]


def plain_state_dict(model: LlavidalForCausalLM, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict gathered from a wrapped/sharded model (FSDP, DeepSpeed ZeRO-3, peft, DDP) in the key layout
    of a plain :class:`LlavidalForCausalLM`: wrapper prefixes stripped, trainable token rows folded into
    ``model.embed_tokens.weight``. The savers read weights from such a dict instead of the module's parameters,
    which hold only a shard of each tensor under ``full_shard``/ZeRO-3."""
    sd = normalise_keys(state)
    rows = sd.pop("model.embed_tokens.rows", None)
    if "model.embed_tokens.base.weight" in sd:
        base = sd.pop("model.embed_tokens.base.weight")
        if rows is not None:
            ids = model.get_input_embeddings().ids.to(base.device)  # a buffer: whole on every rank
            base = base.index_copy(0, ids, rows.to(device=base.device, dtype=base.dtype))
        sd["model.embed_tokens.weight"] = base
    if "lm_head.weight" not in sd and model.config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def save_pretrained(model: LlavidalForCausalLM, tokenizer: PreTrainedTokenizerBase, out: str | os.PathLike,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Our folder: config.json, safetensors weights, tokenizer, generation config with the right special ids.
    ``state``: the weights as a plain full state dict (:func:`plain_state_dict`) instead of the module's own."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _sync_special_ids(model, tokenizer)
    model.save_pretrained(out, safe_serialization=True, state_dict=state)
    save_tokenizer(tokenizer, out)
    return out


def is_llavidal_folder(folder: str | os.PathLike) -> bool:
    try:
        return is_llavidal_model_type(read_config_dict(folder).get("model_type"))
    except CheckpointError:
        return False


def load_pretrained(
    base: str | os.PathLike,
    projector: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = "sdpa",
    layout: str | None = None,
    allow_untrained_modality: bool = False,
    use_file_embeddings: bool = False,
    quantization: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    init_seed: int = 0,
) -> tuple[LlavidalForCausalLM, PreTrainedTokenizerBase]:
    """Load a LLAVIDAL model and its tokenizer.

    ``base`` is our own folder (from :func:`save_pretrained` or training), a LLaVA-Lightening base folder, the
    folder of another backbone that ``AutoModelForCausalLM`` loads (LLaMA-3, Qwen2.5 ...: docs/design.md#backbones),
    or a Hugging Face Hub id of one (``org/name[@revision]``: downloaded once into the cache; :mod:`.hub`).
    ``projector`` is an optional projector/adapter file in any supported layout. ``dtype`` defaults to float32 on
    CPU and bfloat16 on CUDA (float16 where bf16 is unsupported); ``device`` defaults to CUDA when available.
    ``allow_untrained_modality``: let questions feed a modality whose projector the loaded weights never trained
    (refused otherwise, see :func:`llavidal.inference.check_trained_modalities`). ``use_file_embeddings``: take a
    ``.bin`` projector file's base embedding rows too, as the original code did.
    ``quantization`` ("8bit"/"4bit", bitsandbytes) and ``device_map`` ("auto": GPUs first, the rest offloaded to CPU
    RAM within ``max_memory``) place the loaded model for small GPUs (:mod:`llavidal.model.placement`).
    ``init_seed`` seeds the projectors that a base folder does not hold (object/pose start random): the same seed
    gives the same model in every process.
    """
    base = resolve_model_path(base)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: model folder not found")
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    attn = resolve_attn_implementation(attn_implementation)
    if quantization or device_map is not None:
        from .placement import check_bitsandbytes, place_model

        if quantization:  # before minutes of loading
            check_bitsandbytes(quantization, device)
        model, tokenizer = load_pretrained(base, projector=projector, device="cpu", dtype=dtype,
                                           attn_implementation=attn, layout=layout,
                                           allow_untrained_modality=allow_untrained_modality,
                                           use_file_embeddings=use_file_embeddings, init_seed=init_seed)
        return place_model(model, quantization=quantization, device_map=device_map, max_memory=max_memory,
                           device=device, dtype=dtype), tokenizer
    if (base / ADAPTER_FOLDER_FILE).is_file() and not _has_weights(base):
        # a projector-only training output: our config + tokenizer + adapter, on top of its base folder
        cfg = read_config_dict(base)
        origin = cfg.get("llavidal_base_model")
        origin = resolve_model_path(origin) if origin else None
        if not origin or not Path(origin).is_dir():
            raise CheckpointError(f"{base}: adapter-only folder whose base model {origin!r} is not available; "
                                  "pass the base folder and this folder's adapter.safetensors as --projector")
        model, tokenizer = load_pretrained(origin, projector=base / ADAPTER_FOLDER_FILE, device=device, dtype=dtype,
                                           attn_implementation=attn, allow_untrained_modality=allow_untrained_modality,
                                           init_seed=init_seed)
        for key in ("mm_use_vid_start_end", "use_modality_string_prefix", "tokenization", "trained_modalities",
                    "template"):
            if key in cfg:
                setattr(model.config, key, cfg[key])
        if projector is not None:
            load_projector(model, tokenizer, projector, layout=layout, use_file_embeddings=use_file_embeddings)
        return model, tokenizer
    if is_llavidal_folder(base):
        tokenizer = load_tokenizer(base)
        cls = model_class(read_config_dict(base)["model_type"])
        with library_quiet():
            model = cls.from_pretrained(str(base), dtype=dtype, attn_implementation=attn)
        check_model_vocab(len(tokenizer), model.config.vocab_size, base)
        check_model_finite(model, base)
        if model.config.modality_token_ids != modality_token_ids(tokenizer):
            raise CheckpointError(f"{base}: config.modality_token_ids disagree with the tokenizer's ids")
    else:
        model, tokenizer = load_base(base, dtype=dtype, attn_implementation=attn, seed=init_seed)
    if projector is not None:
        load_projector(model, tokenizer, projector, layout=layout, use_file_embeddings=use_file_embeddings)
    model.allow_untrained_modality = bool(allow_untrained_modality)
    model.to(device)
    model.eval()
    return model, tokenizer


ADAPTER_FOLDER_FILE = "adapter.safetensors"


def _has_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json",
                                                "pytorch_model.bin", "pytorch_model.bin.index.json"))


def save_adapter_folder(model: LlavidalForCausalLM, tokenizer: PreTrainedTokenizerBase, out: str | os.PathLike,
                        base: str | os.PathLike, modalities: list[str] | None = None,
                        state: dict[str, torch.Tensor] | None = None) -> Path:
    """A loadable folder without the LLM weights: config (pointing at ``base``), tokenizer, adapter file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _sync_special_ids(model, tokenizer)
    cfg = model.config.to_dict()
    cfg["llavidal_base_model"] = str(base) if hub_id(base) else str(Path(base).resolve())  # a hub id stays one
    cfg["llavidal_trained_modalities"] = modalities if modalities is not None else list(MODALITIES)
    cfg["trained_modalities"] = model.config.trained_modalities
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, sort_keys=True))
    save_tokenizer(tokenizer, out)
    save_adapter(model, tokenizer, out / ADAPTER_FOLDER_FILE, modalities, state)
    return out


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(table)}")
    return table[dtype]


def resolve_attn_implementation(name: str | None) -> str:
    """sdpa by default; flash_attention_2 only when the package is installed (else a clear error)."""
    name = name or "sdpa"
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ValueError("attn_implementation='flash_attention_2' needs the flash-attn package and a CUDA GPU")
    elif name not in ("sdpa", "eager", "flex_attention"):
        raise ValueError(f"unknown attn_implementation {name!r}; use sdpa, eager, flex_attention or flash_attention_2")
    return name

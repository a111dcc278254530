"""Loading and saving LLAVIDAL checkpoints (SPEC section 1).

Three kinds of folders/files meet here:

* a **base folder** in the LLaVA-7B-Lightening layout: config.json with LLaVA fields and a LLaVA ``model_type``,
  ``.bin`` or safetensors weights (sharded or not) holding ``model.mm_projector.*``, a sentencepiece/fast tokenizer
  with the three LLaVA tokens. Its config carries wrong special ids; ours always come from the tokenizer.
* a **projector file** (``llavidal_weights.bin``, a run's ``mm_projector.bin``, Video-ChatGPT's file, or our
  safetensors adapter): projectors plus added-token embedding rows, mapped by token NAME through
  :data:`llavidal.constants.TOKEN_LAYOUTS`.
* **our folder** (``model_type: llavidal``): written by :func:`save_pretrained`, loadable bit for bit.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaTokenizer, PreTrainedTokenizerBase,
)

from ..constants import ADDED_TOKENS, MODALITIES, START_END_TOKENS, TOKEN_LAYOUTS
from .configuration_llavidal import LlavidalConfig
from .modeling_llavidal import LlavidalForCausalLM
from .validate import (
    CheckpointError, check_base_config, check_config_dict, check_finite, check_model_finite, check_model_vocab,
    check_tokenizer, check_tokenizer_files, check_tokenizer_vs_embedding, check_torch_file,
)

logger = logging.getLogger(__name__)

AutoConfig.register("llavidal", LlavidalConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavidalConfig, LlavidalForCausalLM, exist_ok=True)

ADAPTER_FORMAT = "llavidal-adapter"
ADAPTER_VERSION = "1"
ADAPTER_EMBED_PREFIX = "added_tokens.embed_tokens."
ADAPTER_LM_HEAD_PREFIX = "added_tokens.lm_head."

# LLaMA fields that are copied from a base config.json; special ids are deliberately absent (SPEC 1).
_LLAMA_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias", "head_dim",
)
_LLAVA_FIELDS = ("mm_hidden_size", "mm_vision_tower", "mm_vision_select_layer", "use_mm_proj")


# ==================================================================== reading raw state dicts
def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` restricted to tensors (``weights_only=True``), with errors that name the file."""
    check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors, which could execute "
            f"code when unpickled (torch.load weights_only=True). Detail: {str(e).splitlines()[0]}"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def read_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.bin/.pt/.pth`` (tensors only) or ``.safetensors`` file into a name -> tensor dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    return _torch_load(path)


def read_folder_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All weights of a model folder: ``model.safetensors``, ``pytorch_model.bin`` or their sharded indexes."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid shard index (needs a 'weight_map'): {e}") from None
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{index}: lists shard {shard}, which is missing from {folder}")
                state.update(read_tensor_file(folder / shard))
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise CheckpointError(f"{index}: {len(missing)} tensors listed but absent from shards, e.g. {missing[:3]}")
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensor_file(folder / name)
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, pytorch_model.bin or a sharded index)"
    )


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP/``base_model`` prefixes and give bare projector keys their ``model.`` prefix."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "base_model.model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith(("mm_projector", "embed_tokens")):
            k = "model." + k
        out[k] = v
    return out


# ==================================================================== tokenizer
def read_config_dict(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a model folder (config.json missing)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None
    return check_config_dict(cfg, path)


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The folder's tokenizer with every LLAVIDAL modality token, pad = ``<unk>`` when the folder has none."""
    cls = _tokenizer_class(Path(folder))
    check_tokenizer_files(Path(folder), sentencepiece=cls is LlamaTokenizer)
    try:
        tok = cls.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load a tokenizer from it: {e}") from None
    check_tokenizer(tok, folder)
    missing = [t for t in ADDED_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, name) is None:
            raise CheckpointError(f"{folder}: the tokenizer defines no {name[:-3]}")
    return tok


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
    return {t: int(tokenizer.convert_tokens_to_ids(t)) for t in ADDED_TOKENS}


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


# ==================================================================== base folder -> model
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
    """Rows past ``n_old`` := mean of the first ``n_old`` rows (SPEC 2: start/end rows start at the mean)."""
    if weight.shape[0] > n_old:
        weight[n_old:] = weight[:n_old].float().mean(dim=0, keepdim=True).to(weight.dtype)


def load_base(
    folder: str | os.PathLike,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> tuple[LlavidalForCausalLM, PreTrainedTokenizerBase]:
    """Build a LLAVIDAL model from a LLaVA-Lightening (or plain LLaMA) base folder.

    The base ``mm_projector`` initialises the video projector; the object and pose projectors start from
    normal(0, 0.02) weights and zero bias, drawn from a generator seeded with ``seed`` (never from the global RNG, so
    that a load gives the same model whatever ran before it); the added modality rows of the input
    and output embeddings start at the mean of the existing rows.
    """
    folder = Path(folder)
    cfg = read_config_dict(folder)
    check_base_config(cfg, folder / "config.json")
    tokenizer = load_tokenizer(folder)
    state = _normalise_keys(read_folder_state_dict(folder))
    check_finite(state, folder)
    if "model.embed_tokens.weight" not in state:
        raise CheckpointError(f"{folder}: weights hold no model.embed_tokens.weight; not a LLaMA checkpoint")
    n_base_rows = state["model.embed_tokens.weight"].shape[0]
    n_tok_base = len(tokenizer) - sum(1 for t in ADDED_TOKENS if t in tokenizer.get_vocab())
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
        gen = torch.Generator().manual_seed(seed)
        for m in MODALITIES.values():
            if m.name == "video" and proj_from_base:
                continue
            w = sd[f"model.{m.projector}.weight"]
            w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
            sd[f"model.{m.projector}.bias"].zero_()
    missing = [k for k in sd if k not in state and not k.startswith("model.mm_projector")]
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


# ==================================================================== projector files
@dataclass
class ProjectorLoadReport:
    """What a projector file contributed (printed by the CLI, logged by the loaders)."""

    path: str
    layout: str
    projectors: list[str] = field(default_factory=list)  # modalities whose projector was loaded
    token_rows: list[str] = field(default_factory=list)  # token names whose embedding rows were loaded
    start_end: bool = True  # was the file trained with start/end tokens

    def summary(self) -> str:
        return (f"{self.path}: layout {self.layout}; projectors {', '.join(self.projectors) or 'none'}; "
                f"token rows {len(self.token_rows)}")


# Layouts without start/end tokens: their rows never matter (patch rows are always replaced), but a model
# trained without start/end must be prompted without them.
_PATCH_ONLY_LAYOUTS = {
    "current-patch-only": ("<vid_patch>", "<object_patch>", "<pose_patch>"),
    "2024-patch-only": ("<vid_patch>", "<object_patch>"),
    "videochatgpt-patch-only": ("<vid_patch>",),
}


def detect_layout(n_rows: int, n_base: int, keys: set[str], path: str = "projector file") -> str:
    """Name of the vocabulary layout of an ``embed_tokens`` matrix with ``n_rows`` rows.

    ``n_base`` is the size of the base vocabulary (LLaMA + the three LLaVA tokens: 32003 for the real model).
    """
    has_pose = any("forpose" in k for k in keys)
    has_object = any("forobject" in k for k in keys)
    candidates = [name for name, names in {**TOKEN_LAYOUTS, **_PATCH_ONLY_LAYOUTS}.items()
                  if n_base + len(names) == n_rows]
    if len(candidates) > 1:  # base+3: Video-ChatGPT with start/end, or LLAVIDAL patch-only
        candidates = [c for c in candidates if (c == "current-patch-only") == (has_pose or has_object)]
    if len(candidates) != 1:
        expected = ", ".join(f"{n_base + len(v)} ({k})" for k, v in TOKEN_LAYOUTS.items())
        raise CheckpointError(
            f"{path}: model.embed_tokens.weight has {n_rows} rows, which matches no known token layout for a base "
            f"vocabulary of {n_base}; expected one of {expected}"
        )
    return candidates[0]


def load_projector(
    model: LlavidalForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike,
    layout: str | None = None,
) -> ProjectorLoadReport:
    """Load projectors and added-token rows from a projector/adapter file into ``model``, by token name."""
    path = Path(path)
    state = _normalise_keys(read_tensor_file(path))
    check_finite(state, path)
    H = model.config.hidden_size
    report = ProjectorLoadReport(path=str(path), layout="adapter")
    params = dict(model.named_parameters())

    with torch.no_grad():
        for m in MODALITIES.values():
            wkey, bkey = f"model.{m.projector}.weight", f"model.{m.projector}.bias"
            if wkey not in state:
                continue
            for key in (wkey, bkey):
                if key not in state:
                    raise CheckpointError(f"{path}: has {wkey} but no {bkey}")
                want = params[key].shape
                if state[key].shape != want:
                    raise CheckpointError(
                        f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(want)} "
                        f"({m.name} projector {getattr(model.config, m.dim_attr)} -> {H})"
                    )
                params[key].copy_(state[key])
            report.projectors.append(m.name)

        emb = _OverlayRows(model)
        head = model.get_output_embeddings().weight
        adapter_rows = {k: v for k, v in state.items() if k.startswith((ADAPTER_EMBED_PREFIX, ADAPTER_LM_HEAD_PREFIX))}
        if adapter_rows:
            for k, v in adapter_rows.items():
                target, prefix = (emb, ADAPTER_EMBED_PREFIX) if k.startswith(ADAPTER_EMBED_PREFIX) else (head, ADAPTER_LM_HEAD_PREFIX)
                name = k[len(prefix):]
                tid = tokenizer.convert_tokens_to_ids(name)
                if name not in tokenizer.get_vocab():
                    raise CheckpointError(f"{path}: row for unknown token {name!r}")
                if v.shape != (H,):
                    raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, expected ({H},)")
                target[tid] = v.to(target.dtype)
                if target is emb:
                    report.token_rows.append(name)
            report.start_end = any(t in report.token_rows for t in START_END_TOKENS)
        elif "model.embed_tokens.weight" in state:
            rows = state["model.embed_tokens.weight"]
            if rows.ndim != 2 or rows.shape[1] != H:
                raise CheckpointError(
                    f"{path}: model.embed_tokens.weight has shape {tuple(rows.shape)}, expected [vocab, {H}]"
                )
            n_base = model.config.vocab_size - len(ADDED_TOKENS)
            report.layout = layout or detect_layout(rows.shape[0], n_base, set(state), str(path))
            names = {**TOKEN_LAYOUTS, **_PATCH_ONLY_LAYOUTS}[report.layout]
            if n_base + len(names) != rows.shape[0]:
                raise CheckpointError(
                    f"{path}: layout {report.layout} needs {n_base + len(names)} rows, the file has {rows.shape[0]}"
                )
            for i, name in enumerate(names):
                emb[tokenizer.convert_tokens_to_ids(name)] = rows[n_base + i].to(emb.dtype)
                report.token_rows.append(name)
            report.start_end = report.layout in TOKEN_LAYOUTS
        else:
            report.layout = "projector-only"
            report.start_end = model.config.mm_use_vid_start_end
    if not report.projectors:
        raise CheckpointError(
            f"{path}: holds no projector weights (expected keys such as model.mm_projector.weight); "
            f"found {sorted(state)[:5]}"
        )
    if not report.start_end and model.config.mm_use_vid_start_end:
        logger.warning("%s was trained without start/end tokens: prompts will not use them", path)
        model.config.mm_use_vid_start_end = False
    logger.info(report.summary())
    return report


class _OverlayRows:
    """Row assignment into the input embedding, wherever the row lives (plain matrix or trainable overlay)."""

    def __init__(self, model: LlavidalForCausalLM):
        from .modeling_llavidal import EmbeddingWithTrainableRows

        emb = model.get_input_embeddings()
        self.overlay = emb if isinstance(emb, EmbeddingWithTrainableRows) else None
        self.base = emb.base.weight if self.overlay is not None else emb.weight
        self.dtype = self.base.dtype

    def __setitem__(self, tid: int, value: torch.Tensor) -> None:
        self.base[tid] = value.to(self.dtype)
        if self.overlay is not None:
            slot = int(self.overlay.lut[tid])
            if slot >= 0:
                self.overlay.rows.data[slot] = value.to(self.overlay.rows.dtype)


# ==================================================================== saving
def plain_state_dict(model: LlavidalForCausalLM, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict gathered from a wrapped/sharded model (FSDP, DeepSpeed ZeRO-3, peft, DDP) in the key layout
    of a plain :class:`LlavidalForCausalLM`: wrapper prefixes stripped, trainable token rows folded into
    ``model.embed_tokens.weight``. The savers below read weights from such a dict instead of the module's parameters,
    which hold only a shard of each tensor under ``full_shard``/ZeRO-3."""
    sd = _normalise_keys(state)
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
    tokenizer.save_pretrained(out)
    return out


def _projector_state(model: LlavidalForCausalLM, modalities: list[str] | None = None,
                     state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``model.{projector}.{weight,bias}`` of ``modalities`` (default: all three), the original key names; read from
    ``state`` (a plain full state dict) when given."""
    sd = {}
    for m in MODALITIES.values():
        if modalities is None or m.name in modalities:
            for w in ("weight", "bias"):
                key = f"model.{m.projector}.{w}"
                sd[key] = state[key] if state is not None else getattr(model.model.projector(m.name), w).detach()
    return sd


def adapter_state_dict(model: LlavidalForCausalLM, tokenizer: PreTrainedTokenizerBase,
                       state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Projectors + every added token's input and output embedding row, keyed by token name (from ``state``, a
    plain full state dict, when given)."""
    sd = _projector_state(model, state=state)
    if state is not None:
        emb, head = state["model.embed_tokens.weight"], state["lm_head.weight"]
    else:
        emb = model.get_input_embeddings().weight.detach()
        head = model.get_output_embeddings().weight.detach()
    for name in ADDED_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(name)
        sd[ADAPTER_EMBED_PREFIX + name] = emb[tid]
        sd[ADAPTER_LM_HEAD_PREFIX + name] = head[tid]
    return {k: v.contiguous().cpu().clone() for k, v in sd.items()}


def save_adapter(model: LlavidalForCausalLM, tokenizer: PreTrainedTokenizerBase, path: str | os.PathLike,
                 modalities: list[str] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """The adapter-only file (safetensors): what projector-only training changes, keyed by name.

    ``modalities`` records which modalities were trained (MMPro merges take each modality's projector and
    start/end rows from the file that trained it); default: all three.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "hidden_size": str(model.config.hidden_size),
            "mm_use_vid_start_end": str(bool(model.config.mm_use_vid_start_end)),
            "use_modality_string_prefix": str(bool(model.config.use_modality_string_prefix)),
            "modalities": ",".join(modalities if modalities is not None else list(MODALITIES))}
    tmp = path.with_name(path.name + ".tmp")
    save_safetensors(adapter_state_dict(model, tokenizer, state), str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def export_legacy_projector(model: LlavidalForCausalLM, path: str | os.PathLike,
                            modalities: list[str] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """The original ``mm_projector.bin`` key layout (current 9-token vocabulary) for users of the old code.

    As the original wrote it, the file holds the projectors of the trained ``modalities`` only (default: all),
    so merges of such files can tell which modalities a run trained.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = _projector_state(model, modalities, state)
    sd["model.embed_tokens.weight"] = (state["model.embed_tokens.weight"] if state is not None
                                       else model.get_input_embeddings().weight.detach())
    sd = {k: v.cpu().clone() for k, v in sd.items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path


# ==================================================================== the one entry point
def is_llavidal_folder(folder: str | os.PathLike) -> bool:
    try:
        return read_config_dict(folder).get("model_type") == "llavidal"
    except CheckpointError:
        return False


def load_pretrained(
    base: str | os.PathLike,
    projector: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = "sdpa",
    layout: str | None = None,
    init_seed: int = 0,
) -> tuple[LlavidalForCausalLM, PreTrainedTokenizerBase]:
    """Load a LLAVIDAL model and its tokenizer.

    ``base`` is our own folder (from :func:`save_pretrained` or training) or a LLaVA-Lightening base folder.
    ``projector`` is an optional projector/adapter file in any supported layout. ``dtype`` defaults to float32 on
    CPU and bfloat16 on CUDA (float16 where bf16 is unsupported); ``device`` defaults to CUDA when available.
    ``init_seed`` seeds the projectors that a base folder does not hold (object/pose start random): the same seed
    gives the same model in every process.
    """
    base = Path(base)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: model folder not found")
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    attn = resolve_attn_implementation(attn_implementation)
    if (base / ADAPTER_FOLDER_FILE).is_file() and not _has_weights(base):
        # a projector-only training output: our config + tokenizer + adapter, on top of its base folder
        cfg = read_config_dict(base)
        origin = cfg.get("llavidal_base_model")
        if not origin or not Path(origin).is_dir():
            raise CheckpointError(f"{base}: adapter-only folder whose base model {origin!r} is not available; "
                                  "pass the base folder and this folder's adapter.safetensors as --projector")
        model, tokenizer = load_pretrained(origin, projector=base / ADAPTER_FOLDER_FILE, device=device, dtype=dtype,
                                           attn_implementation=attn, init_seed=init_seed)
        for key in ("mm_use_vid_start_end", "use_modality_string_prefix"):
            if key in cfg:
                setattr(model.config, key, cfg[key])
        if projector is not None:
            load_projector(model, tokenizer, projector, layout=layout)
        return model, tokenizer
    if is_llavidal_folder(base):
        tokenizer = load_tokenizer(base)
        model = LlavidalForCausalLM.from_pretrained(str(base), dtype=dtype, attn_implementation=attn)
        check_model_vocab(len(tokenizer), model.config.vocab_size, base)
        check_model_finite(model, base)
        if model.config.modality_token_ids != modality_token_ids(tokenizer):
            raise CheckpointError(f"{base}: config.modality_token_ids disagree with the tokenizer's ids")
    else:
        model, tokenizer = load_base(base, dtype=dtype, attn_implementation=attn, seed=init_seed)
    if projector is not None:
        load_projector(model, tokenizer, projector, layout=layout)
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
    cfg["llavidal_base_model"] = str(Path(base).resolve())
    cfg["llavidal_trained_modalities"] = modalities if modalities is not None else list(MODALITIES)
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    os.replace(tmp, out / "config.json")
    tokenizer.save_pretrained(out)
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


__all__ = [
    "CheckpointError", "ProjectorLoadReport", "adapter_state_dict", "detect_layout", "export_legacy_projector",
    "load_base", "load_pretrained", "load_projector", "load_tokenizer", "read_tensor_file", "save_adapter",
    "save_pretrained",
]

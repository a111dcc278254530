"""Projector files and adapters: what a training run trains, loaded into and written out of a model, by token NAME.

A projector file (``llavidal_weights.bin``, a run's ``mm_projector.bin``, Video-ChatGPT's file) holds projectors and
the whole input embedding matrix, whose added rows follow the base vocabulary in one of the token layouts of
:data:`llavidal.constants.TOKEN_LAYOUTS` (found from the row count). Our adapter (safetensors) keys the rows by token
name outright and records which modalities were trained. The legacy export writes the original's key layout and
order, so that the original trainer's ``--pretrain_mm_mlp_adapter`` can read it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file as save_safetensors
from transformers import PreTrainedTokenizerBase

from ..constants import MODALITIES, TOKEN_LAYOUTS, added_tokens, start_end_tokens
from ..io_utils import atomic_path
from ..prompting import model_template
from .files import normalise_keys, read_tensor_file
from .modeling_llavidal import LlavidalForCausalLM
from .two_token import apply_file_representation, context_state, load_context_state, representation_metadata
from .validate import CheckpointError, check_finite

logger = logging.getLogger(__name__)

__all__ = ["ProjectorLoadReport", "adapter_state_dict", "detect_layout", "export_legacy_projector", "load_projector",
           "save_adapter"]


ADAPTER_FORMAT = "llavidal-adapter"


ADAPTER_VERSION = "1"


ADAPTER_EMBED_PREFIX = "added_tokens.embed_tokens."


ADAPTER_LM_HEAD_PREFIX = "added_tokens.lm_head."


def adapter_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of our adapter file (``format``, trained ``modalities``, ``tokenization`` ...); ``{}`` for any
    other file (a torch ``.bin`` has none)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    return dict(meta) if meta.get("format") == ADAPTER_FORMAT else {}


@dataclass
class ProjectorLoadReport:
    """What a projector file contributed (printed by the CLI, logged by the loaders)."""

    path: str
    layout: str
    projectors: list[str] = field(default_factory=list)  # modalities whose projector was loaded
    token_rows: list[str] = field(default_factory=list)  # token names whose embedding rows were loaded
    start_end: bool = True  # was the file trained with start/end tokens
    trained: list[str] = field(default_factory=list)  # modalities the file's weights were trained for
    base_rows_differ: int = 0  # base-vocabulary embedding rows of the file that differ from the model's

    def summary(self) -> str:
        return (f"{self.path}: layout {self.layout}; projectors {', '.join(self.projectors) or 'none'}; "
                f"token rows {len(self.token_rows)}")


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
    use_file_embeddings: bool = False,
) -> ProjectorLoadReport:
    """Load projectors and added-token rows from a projector/adapter file into ``model``, by token name.

    Recorded on ``model.config``: ``trained_modalities`` (the file's, plus what was already trained) and
    ``tokenization`` (``original`` for the release's ``.bin`` layouts, whose weights were trained on the original
    ids; an adapter's own record otherwise). A ``.bin`` file holds the whole input embedding matrix: when its base
    rows differ from the base folder's, the number is reported (the original code used the file's matrix whole);
    ``use_file_embeddings`` takes the file's base rows too."""
    path = Path(path)
    state = normalise_keys(read_tensor_file(path))
    check_finite(state, path)
    meta = adapter_metadata(path)
    check_backbone(model, meta, path)
    H = model.config.hidden_size
    report = ProjectorLoadReport(path=str(path), layout="adapter")
    apply_file_representation(model, meta, state, path)  # the video representation (a context module) comes first
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
        for key, value in load_context_state(model, state, meta, path).items():  # two-token video: the context module
            params[key].copy_(value)

        emb = _OverlayRows(model)
        head = model.get_output_embeddings().weight
        tied = head.data_ptr() == emb.base.data_ptr()  # one matrix for input and output (Qwen2.5 small, LLaMA-3.2)
        prefixes = (ADAPTER_EMBED_PREFIX,) if tied else (ADAPTER_EMBED_PREFIX, ADAPTER_LM_HEAD_PREFIX)
        adapter_rows = {k: v for k, v in state.items() if k.startswith(prefixes)}
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
            report.start_end = any(t in report.token_rows for t in start_end_tokens())
        elif "model.embed_tokens.weight" in state:
            rows = state["model.embed_tokens.weight"]
            if rows.ndim != 2 or rows.shape[1] != H:
                raise CheckpointError(
                    f"{path}: model.embed_tokens.weight has shape {tuple(rows.shape)}, expected [vocab, {H}]"
                )
            n_base = model.config.vocab_size - len(added_tokens())
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
            report.base_rows_differ = _base_rows(emb, rows[:n_base], path, use_file_embeddings)
        else:
            report.layout = "projector-only"
            report.start_end = model.config.mm_use_vid_start_end
    if not report.projectors:
        raise CheckpointError(
            f"{path}: holds no projector weights (expected keys such as model.mm_projector.weight); "
            f"found {sorted(state)[:5]}"
        )
    report.trained = ([m for m in meta.get("modalities", "").split(",") if m] if meta.get("modalities") is not None
                      else list(report.projectors))
    _apply_feature_kinds(model.config, meta, report.trained, path)
    model.config.trained_modalities = [m for m in MODALITIES
                                       if m in report.trained or m in (model.config.trained_modalities or [])]
    if meta.get("tokenization"):
        model.config.tokenization = meta["tokenization"]
    elif report.layout != "adapter":  # the release's files: trained on the original ids
        model.config.tokenization = "original"
    if not report.start_end and model.config.mm_use_vid_start_end:
        logger.warning("%s was trained without start/end tokens: prompts will not use them", path)
        model.config.mm_use_vid_start_end = False
    logger.info(report.summary())
    return report


def pooling_metadata(config, modalities) -> dict[str, str]:
    """Adapter metadata of the feature kind of each trained modality that can be pooled: ``{name}_pool`` = ``none``
    (rows, e.g. the spatio-temporal video features) or ``T,H,W``, and ``{name}_pool_frames``."""
    from ..video.pool import frame_pooling

    meta = {}
    for name in modalities:
        m = MODALITIES[name]
        if m.pool_attr:
            pooling = frame_pooling(m, config)
            meta[m.pool_attr] = ",".join(map(str, pooling.grid.as_list())) if pooling else "none"
            if pooling:
                meta[f"{m.pool_attr}_frames"] = str(pooling.frames)
    return meta


def file_pooling(meta: dict[str, str], modality: str):
    """The pooling a file's metadata records for a modality it trained (None: rows; files without metadata, such as
    the release's ``.bin`` files, were trained on rows)."""
    from ..video.pool import FramePooling, PoolGrid

    m = MODALITIES[modality]
    value = meta.get(m.pool_attr, "none") if m.pool_attr else "none"
    if value in ("", "none"):
        return None
    return FramePooling(PoolGrid.parse(value, m.pool_attr), int(meta.get(f"{m.pool_attr}_frames", 16)))


def _describe(pooling, modality: str) -> str:
    return pooling.describe() if pooling is not None else f"{modality} rows [N, D] (spatio-temporal features)"


def _apply_feature_kinds(config, meta: dict[str, str], trained: list[str], path) -> None:
    """The model takes the feature kind of every poolable modality the file trained; a model whose projector of that
    modality was already trained on another kind refuses the file (one model, one kind of features)."""
    from ..video.pool import frame_pooling, set_frame_pooling

    for name in trained:
        m = MODALITIES.get(name)
        if m is None or not m.pool_attr:
            continue
        theirs, ours = file_pooling(meta, name), frame_pooling(m, config)
        if name in (config.trained_modalities or []) and theirs != ours:
            raise CheckpointError(
                f"{path}: its {name} projector was trained on {_describe(theirs, name)}, but the model's was trained "
                f"on {_describe(ours, name)}; one model reads one kind of {name} features, so these cannot be "
                "combined")
        set_frame_pooling(m, config, theirs)


def check_backbone(model, meta: dict[str, str], path: str | os.PathLike) -> None:
    """An adapter trained on one backbone does not fit another (files written before backbones were recorded are
    LLaMA-Lightening's)."""
    from .backbones import LIGHTENING

    trained_on = meta.get("backbone", LIGHTENING) if meta else LIGHTENING
    if trained_on != model.config.model_type:
        raise CheckpointError(f"{path}: was trained on the {trained_on} backbone; this model is {model.config.model_type}"
                              " (load it onto the base folder it was trained from)")


def _base_rows(emb: _OverlayRows, file_rows: torch.Tensor, path: Path, use_file_rows: bool) -> int:
    """How many base-vocabulary rows of the file's matrix differ from the model's; copied over when asked."""
    base = emb.base[: file_rows.shape[0]]
    differ = int((base.float() != file_rows.to(base.device).float()).any(dim=1).sum())
    if differ and use_file_rows:
        with torch.no_grad():
            base.copy_(file_rows.to(base.device, base.dtype))
        logger.warning("%s: took the file's %d differing base embedding rows (--use-file-embeddings)", path, differ)
    elif differ:
        logger.warning("%s: %d of the file's %d base embedding rows differ from the base folder's; the original code "
                       "used the file's whole matrix: pass --use-file-embeddings to do the same", path, differ,
                       file_rows.shape[0])
    return differ


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


def _projector_state(model: LlavidalForCausalLM, modalities: list[str] | None = None,
                     state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``model.{projector}.{weight,bias}`` of ``modalities`` (default: all), the original key names; read from
    ``state`` (a plain full state dict, see :func:`~llavidal.model.checkpoint.plain_state_dict`) when given."""
    sd = {}
    for m in MODALITIES.values():
        if modalities is None or m.name in modalities:
            for w in ("weight", "bias"):
                key = f"model.{m.projector}.{w}"
                sd[key] = state[key] if state is not None else getattr(model.projector(m.name), w).detach()
            if m.name == "video":  # two-token video: the context module goes with the video projector
                sd.update(context_state(model, state))
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
    for name in added_tokens():
        tid = tokenizer.convert_tokens_to_ids(name)
        sd[ADAPTER_EMBED_PREFIX + name] = emb[tid]
        sd[ADAPTER_LM_HEAD_PREFIX + name] = head[tid]
    return {k: v.contiguous().cpu().clone() for k, v in sd.items()}


def save_adapter(model: LlavidalForCausalLM, tokenizer: PreTrainedTokenizerBase, path: str | os.PathLike,
                 modalities: list[str] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """The adapter-only file (safetensors): what projector-only training changes, keyed by name.

    ``modalities`` records which modalities were trained (MMPro merges take each modality's projector and
    start/end rows from the file that trained it); default: all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "hidden_size": str(model.config.hidden_size),
            "backbone": model.config.model_type, "template": model_template(model.config),
            "tokenization": str(model.config.tokenization),
            "mm_use_vid_start_end": str(bool(model.config.mm_use_vid_start_end)),
            "use_modality_string_prefix": str(bool(model.config.use_modality_string_prefix)),
            "modalities": ",".join(modalities if modalities is not None else list(MODALITIES)),
            **representation_metadata(model.config)}
    meta.update(pooling_metadata(model.config, modalities if modalities is not None else list(MODALITIES)))
    with atomic_path(path) as tmp:
        save_safetensors(adapter_state_dict(model, tokenizer, state), str(tmp), metadata=meta)
    return path


def export_legacy_projector(model: LlavidalForCausalLM, path: str | os.PathLike,
                            modalities: list[str] | None = None,
                            state: dict[str, torch.Tensor] | None = None) -> Path:
    """The original ``mm_projector.bin`` key layout (current 9-token vocabulary) for users of the old code.

    As the original wrote it, the file holds the projectors of the trained ``modalities`` only (default: all),
    so merges of such files can tell which modalities a run trained, and its embedding matrix comes first.
    """
    from .backbones import LIGHTENING

    if model.config.model_type != LIGHTENING:
        raise CheckpointError(f"the original mm_projector.bin layout holds a LLaMA-Lightening vocabulary; this model's "
                              f"backbone is {model.config.model_type}: write an adapter (--adapter) instead")
    if representation_metadata(model.config)["video_representation"] != "spatiotemporal":
        raise CheckpointError("the original mm_projector.bin layout has no place for the two-token video "
                              "representation's context module (and the original code reads spatio-temporal rows "
                              "only): write an adapter (--adapter) instead")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # model.embed_tokens.weight FIRST: the original trainer's --pretrain_mm_mlp_adapter maps keys by their last
    # dotted part and the last one wins, so the video projector's weight must come after the embedding matrix
    emb = state["model.embed_tokens.weight"] if state is not None else model.get_input_embeddings().weight.detach()
    sd = {"model.embed_tokens.weight": emb, **_projector_state(model, modalities, state)}
    sd = {k: v.cpu().clone() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        torch.save(sd, tmp)
    return path

"""Merging projector/adapter files BY NAME (replaces the original ``scripts/merge_weights.py``).

The original merged files by plain dict union (the later file wins), which let an untrained copy of a row
overwrite a trained one and silently lost the stage-1 start/end token rows. Here each modality's projector and its
start/end rows are taken from the file that TRAINED that modality (the last such file when several did):

* our adapter files say which modalities they trained (safetensors metadata ``modalities``);
* our training folders hold ``adapter.safetensors``;
* files of the original code hold projectors only for the modalities they trained, and the whole embedding
  matrix (rows mapped by token name through the layouts of docs/design.md#artifacts).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..constants import MODALITIES, TOKEN_LAYOUTS
from ..io_utils import atomic_path
from ..model.adapters import ADAPTER_EMBED_PREFIX, ADAPTER_FORMAT, ADAPTER_VERSION, adapter_metadata
from ..model.backbones import LIGHTENING
from ..model.checkpoint import ADAPTER_FOLDER_FILE
from ..model.files import normalise_keys, read_tensor_file
from ..model.two_token import CONTEXT_MODULE
from ..model.validate import CheckpointError
from ..representation import METADATA_KEY, SPATIOTEMPORAL

REAL_BASE_VOCAB = 32003  # LLaMA 32000 + the three LLaVA tokens


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in (ADAPTER_FOLDER_FILE, "mm_projector.bin"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: folder holds neither {ADAPTER_FOLDER_FILE} nor mm_projector.bin")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such projector file")
    return path


def read_trained_parts(path: str | os.PathLike, base_vocab: int | None = None) -> dict:
    """``{"modalities": [...], "projectors": {key: tensor}, "rows": {token name: row}}`` of one file: only the
    parts of the modalities it trained."""
    path = _resolve(path)
    state = normalise_keys(read_tensor_file(path))
    trained: list[str]
    rows: dict[str, torch.Tensor] = {}
    meta = adapter_metadata(path)
    if meta:
        trained = [m for m in meta.get("modalities", "").split(",") if m]
        for k, v in state.items():
            if k.startswith(ADAPTER_EMBED_PREFIX):
                rows[k[len(ADAPTER_EMBED_PREFIX):]] = v
    else:
        trained = [m.name for m in MODALITIES.values() if f"model.{m.projector}.weight" in state]
        if "model.embed_tokens.weight" in state:
            emb = state["model.embed_tokens.weight"]
            names = _legacy_layout(emb.shape[0], trained, base_vocab, path)
            n_base = emb.shape[0] - len(names)
            rows = {name: emb[n_base + i] for i, name in enumerate(names)}
    projectors = {}
    for m in trained:
        p = MODALITIES[m].projector
        for w in ("weight", "bias"):
            key = f"model.{p}.{w}"
            if key not in state:
                raise CheckpointError(f"{path}: says it trained {m} but has no {key}")
            projectors[key] = state[key]
        if m == "video":  # two-token video: the context module travels with the video projector
            projectors.update({k: v for k, v in state.items() if k.startswith(f"model.{CONTEXT_MODULE}.")})
    keep = {t for m in trained for t in (MODALITIES[m].start_token, MODALITIES[m].end_token)}
    return {"path": str(path), "modalities": trained, "projectors": projectors,
            "rows": {k: v for k, v in rows.items() if k in keep},
            "tokenization": meta.get("tokenization"),  # a .bin does not say (ours and the release's look alike)
            "backbone": meta.get("backbone", LIGHTENING) if meta else LIGHTENING,
            "template": meta.get("template"),
            # the feature kind each trained modality read (a .bin: rows, as the release's files)
            "pooling": {m: pooling_metadata_of(meta, m) for m in trained},
            # the video representation of a file that trained video (the release's files: spatio-temporal rows)
            "video_representation": meta.get(METADATA_KEY, SPATIOTEMPORAL) if "video" in trained else None}


def pooling_metadata_of(meta: dict[str, str], modality: str) -> dict[str, str]:
    """The ``{name}_pool`` / ``{name}_pool_frames`` metadata of one trained modality, as :func:`pooling_metadata`
    writes it (``none`` for rows and for files without metadata)."""
    attr = MODALITIES[modality].pool_attr
    if not attr:
        return {}
    out = {attr: meta.get(attr, "none")}
    if out[attr] != "none":
        out[f"{attr}_frames"] = meta.get(f"{attr}_frames", "16")
    return out  # a .bin does not say (ours and the release's look alike)


def _legacy_layout(n_rows: int, trained: list[str], base_vocab: int | None, path: Path) -> tuple[str, ...]:
    if base_vocab is not None:
        for names in TOKEN_LAYOUTS.values():
            if base_vocab + len(names) == n_rows:
                return names
        raise CheckpointError(f"{path}: {n_rows} embedding rows match no token layout for a base vocabulary of "
                              f"{base_vocab}")
    for names in TOKEN_LAYOUTS.values():
        if REAL_BASE_VOCAB + len(names) == n_rows:
            return names
    raise CheckpointError(f"{path}: {n_rows} embedding rows; pass the base model (--base) so the token layout "
                          "can be told from the base vocabulary size")


def merge_adapters(paths: list[str | os.PathLike], output: str | os.PathLike, base_vocab: int | None = None) -> dict:
    """Merge by name into one adapter file (our safetensors format, which ``--pretrain_mm_mlp_adapter`` and every
    loader here accept). Input-embedding rows only: lm_head rows are never trained by projector-only runs.
    Returns what came from where."""
    if len(paths) < 2:
        raise ValueError("give at least two files to merge")
    merged_proj: dict[str, torch.Tensor] = {}
    merged_rows: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    modalities: list[str] = []
    tokenization: dict[str, str] = {}
    pooling: dict[str, dict[str, str]] = {}  # per modality, from the file that trained it (as its weights)
    backbones: dict[str, str] = {}
    template = None
    representation = None  # from the file that trained video, as its video projector (docs/design.md#two-token-video)
    for p in paths:
        parts = read_trained_parts(p, base_vocab)
        if "video" in parts["modalities"]:
            representation = parts["video_representation"]
            merged_proj = {k: v for k, v in merged_proj.items() if not k.startswith(f"model.{CONTEXT_MODULE}.")}
        backbones[parts["path"]] = parts["backbone"]
        template = parts["template"] or template
        if parts["tokenization"]:
            tokenization[parts["path"]] = parts["tokenization"]
        for m in parts["modalities"]:
            if m in source:
                print(f"merge: {m} from {parts['path']} replaces the one from {source[m]}")
            source[m] = parts["path"]
            pooling[m] = parts["pooling"][m]
            if m not in modalities:
                modalities.append(m)
        merged_proj.update(parts["projectors"])
        merged_rows.update(parts["rows"])
    if len(set(tokenization.values())) > 1:
        raise CheckpointError("files trained on different tokenizations of span boundaries cannot be merged: "
                              + ", ".join(f"{p}: {t}" for p, t in tokenization.items()))
    if len(set(backbones.values())) > 1:
        raise CheckpointError("files trained on different backbones cannot be merged: "
                              + ", ".join(f"{p}: {b}" for p, b in backbones.items()))
    projector_biases = {f"model.{m.projector}.bias" for m in MODALITIES.values()}  # their length is the LLM width
    hidden = {v.shape[0] for k, v in merged_proj.items() if k in projector_biases}
    if len(hidden) > 1:
        raise CheckpointError(f"files disagree on the hidden size: {sorted(hidden)}")
    sd = dict(merged_proj)
    sd.update({ADAPTER_EMBED_PREFIX + k: v for k, v in merged_rows.items()})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    order = [m for m in MODALITIES if m in modalities]
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "modalities": ",".join(order),
            "merged_from": ";".join(f"{m}={source[m]}" for m in order), "mm_use_vid_start_end": str(bool(merged_rows)),
            "backbone": next(iter(backbones.values()))}
    if template:
        meta["template"] = template
    if representation is not None:
        meta[METADATA_KEY] = representation
    if tokenization:
        meta["tokenization"] = next(iter(tokenization.values()))
    for m in order:
        meta.update(pooling[m])
    with atomic_path(output) as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=meta)
    return {"output": str(output), "modalities": order, "sources": {m: source[m] for m in order},
            "token_rows": sorted(merged_rows)}


__all__ = ["merge_adapters", "read_trained_parts"]

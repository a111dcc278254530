"""Reading the raw files of checkpoints: torch pickles restricted to tensors, safetensors, sharded folders, config.json.

Every error names the file and what was expected. Torch files are loaded with ``weights_only=True`` after a check
that they are what ``torch.save`` writes (a text file named ``.bin`` is an error, not a ``KeyError`` from deep inside
the unpickler).
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from .validate import CheckpointError, check_config_dict, check_torch_file

__all__ = ["read_config_dict", "read_folder_state_dict", "read_tensor_file"]


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


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def read_config_dict(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a model folder (config.json missing)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None
    return check_config_dict(cfg, path)

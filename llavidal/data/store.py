"""A feature folder packed into one memory-mapped file: no per-sample open/unpickle in the data loader.

Layout of a store folder: ``data.bin`` (all arrays back to back, each in its own dtype) and ``index.json``
(``{"format": "llavidal-feature-store", "version": 1, "items": {name: {"offset", "shape", "dtype"}}}``). Names
are the file names the training JSON uses, so a store can replace its folder in ``--video_folder`` as is.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..features import FeatureError, load_feature

STORE_FORMAT = "llavidal-feature-store"
FEATURE_SUFFIXES = (".pkl", ".pickle", ".npy", ".npz", ".safetensors", ".pt", ".pth")


class FeatureStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            index = json.loads((self.root / "index.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FeatureError(f"{self.root}/index.json: not a feature store index: {e}") from None
        if index.get("format") != STORE_FORMAT:
            raise FeatureError(f"{self.root}/index.json: format {index.get('format')!r}, expected {STORE_FORMAT!r}")
        self.items: dict[str, dict] = index["items"]
        self._data = np.memmap(self.root / "data.bin", dtype=np.uint8, mode="r")

    def __contains__(self, name: str) -> bool:
        return name in self.items

    def __len__(self) -> int:
        return len(self.items)

    def get(self, name: str) -> np.ndarray:
        if name not in self.items:
            raise KeyError(f"{self.root}: no entry {name!r} in the feature store")
        it = self.items[name]
        dtype = np.dtype(it["dtype"])
        count = int(np.prod(it["shape"]))
        raw = self._data[it["offset"]: it["offset"] + count * dtype.itemsize]
        return np.frombuffer(raw, dtype=dtype).reshape(it["shape"])


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / "index.json").is_file() and (Path(path) / "data.bin").is_file()


def open_feature_source(path: str | os.PathLike, modality: str) -> FeatureStore | Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {modality} feature folder not found")
    return FeatureStore(path) if is_store(path) else path


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike, names: Iterable[str] | None = None,
                modality: str | None = None) -> dict:
    """Pack the feature files of ``folder`` (all of them, or ``names``) into a store at ``out``.

    Unreadable files are listed in the result (and left out), never silently dropped. Writes are atomic: the
    index is written last, under a temporary name, then renamed.
    """
    folder, out = Path(folder), Path(out)
    if names is None:
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in FEATURE_SUFFIXES)
    out.mkdir(parents=True, exist_ok=True)
    items, failures, offset = {}, {}, 0
    with open(out / "data.bin.tmp", "wb") as fh:
        for name in tqdm(list(names), desc=f"packing {folder}", unit="file"):
            try:
                arr = np.ascontiguousarray(load_feature(folder / name, modality))
            except (FileNotFoundError, FeatureError) as e:
                failures[name] = str(e)
                continue
            items[name] = {"offset": offset, "shape": list(arr.shape), "dtype": arr.dtype.str}
            fh.write(arr.tobytes())
            offset += arr.nbytes
    os.replace(out / "data.bin.tmp", out / "data.bin")
    index = {"format": STORE_FORMAT, "version": 1, "source": str(folder), "items": items}
    (out / "index.json.tmp").write_text(json.dumps(index))
    os.replace(out / "index.json.tmp", out / "index.json")
    if failures:
        (out / "failures.json").write_text(json.dumps(failures, indent=2))
    return {"packed": len(items), "failed": failures, "bytes": offset}


__all__ = ["FeatureStore", "is_store", "open_feature_source", "pack_folder"]

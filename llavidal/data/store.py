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
from ..io_utils import append_jsonl, atomic_write_json, commit, read_jsonl

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
        data = self.root / "data.bin"
        self._data = (np.memmap(data, dtype=np.uint8, mode="r") if data.stat().st_size
                      else np.zeros(0, dtype=np.uint8))  # a store of nothing (every file failed)

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
        if raw.size != count * dtype.itemsize:
            raise FeatureError(f"{self.root}/data.bin: entry {name!r} needs bytes {it['offset']}.."
                               f"{it['offset'] + count * dtype.itemsize} but the file has {self._data.size}; truncated")
        return np.frombuffer(raw, dtype=dtype).reshape(it["shape"])


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / "index.json").is_file() and (Path(path) / "data.bin").is_file()


def open_feature_source(path: str | os.PathLike, modality: str) -> FeatureStore | Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {modality} feature folder not found")
    return FeatureStore(path) if is_store(path) else path


JOURNAL = "progress.jsonl"  # one line per packed (or failed) file of an unfinished pack


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike, names: Iterable[str] | None = None,
                modality: str | None = None) -> dict:
    """Pack the feature files of ``folder`` (all of them, or ``names``) into a store at ``out``.

    Unreadable files are listed in the result (and left out), never silently dropped. The pack resumes after a crash:
    arrays are appended to ``data.bin.partial`` and each one is then recorded in ``progress.jsonl``; a rerun cuts the
    data file back to the last recorded array and goes on with the next name, so the finished store is the same
    bytes as an uninterrupted pack. ``data.bin`` and ``index.json`` appear only at the end (atomic renames, the
    index last). A finished store of the same files is left as it is.
    """
    folder, out = Path(folder), Path(out)
    if names is None:
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in FEATURE_SUFFIXES)
    names = list(names)
    done = _finished(out, names)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    items, failures, offset = {}, {}, 0
    journal, partial = out / JOURNAL, out / "data.bin.partial"
    for rec in read_jsonl(journal) if partial.is_file() else []:
        if "error" in rec:
            failures[rec["name"]] = rec["error"]
        else:
            items[rec["name"]] = {k: rec[k] for k in ("offset", "shape", "dtype")}
            offset = rec["offset"] + rec["nbytes"]
    if not partial.is_file():
        journal.unlink(missing_ok=True)
    with open(partial, "ab") as fh:
        fh.truncate(offset)  # bytes of an array whose journal line was never written
        todo = [n for n in names if n not in items and n not in failures]
        for name in tqdm(todo, desc=f"packing {folder}", unit="file", initial=len(names) - len(todo),
                         total=len(names)):
            try:
                arr = np.ascontiguousarray(load_feature(folder / name, modality))
            except (FileNotFoundError, FeatureError) as e:
                failures[name] = str(e)
                append_jsonl(journal, [{"name": name, "error": str(e)}])
                continue
            fh.write(arr.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
            items[name] = {"offset": offset, "shape": list(arr.shape), "dtype": arr.dtype.str}
            append_jsonl(journal, [{"name": name, **items[name], "nbytes": arr.nbytes}])
            offset += arr.nbytes
    commit(partial, out / "data.bin")  # the journaled partial file becomes the store in one rename
    (out / "failures.json").unlink(missing_ok=True)
    if failures:
        atomic_write_json(out / "failures.json", failures)
    index = {"format": STORE_FORMAT, "version": 1, "source": str(folder), "items": items,
             "failed": sorted(failures)}
    atomic_write_json(out / "index.json", index, indent=None)
    journal.unlink(missing_ok=True)
    return {"packed": len(items), "failed": failures, "bytes": offset}


def _finished(out: Path, names: list[str]) -> dict | None:
    """The summary of a finished store at ``out`` made from exactly ``names``, else None."""
    if not is_store(out) or (out / JOURNAL).is_file():
        return None
    try:
        index = json.loads((out / "index.json").read_text())
        failures = json.loads((out / "failures.json").read_text()) if (out / "failures.json").is_file() else {}
    except (OSError, json.JSONDecodeError):
        return None
    if sorted([*index.get("items", {}), *index.get("failed", [])]) != sorted(names):
        return None
    size = sum(int(np.prod(it["shape"])) * np.dtype(it["dtype"]).itemsize for it in index["items"].values())
    return {"packed": len(index["items"]), "failed": failures, "bytes": size, "already_packed": True}


__all__ = ["FeatureStore", "is_store", "open_feature_source", "pack_folder"]

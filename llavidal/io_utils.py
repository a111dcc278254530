"""Small file helpers shared by the long-running jobs: atomic writes and append-only JSON-lines logs.

A job that is killed must never leave a half-written output that a later run would take for a finished one, and
must never lose records it already wrote: outputs go to a temporary name and are renamed into place, and result
logs are append-only JSON lines whose torn last line (a kill mid-write) is ignored on reading.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_path_for(path: str | os.PathLike, suffix: str = "") -> Path:
    """A temporary name beside ``path`` (same folder, so the final rename is atomic); ``suffix`` keeps an extension
    that a writer needs (video containers are chosen by it). The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move a finished temporary file (flushed to disk first) or folder onto ``path`` in one atomic rename."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_file():
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary file or folder left by a failed write."""
    tmp = Path(tmp)
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Write to the yielded temporary path; when the block ends without error it is committed onto ``path``
    (:func:`commit`), otherwise removed. A kill leaves at most a hidden temporary file, never a half-written
    ``path``."""
    tmp = temp_path_for(path, suffix)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def stays_inside(relative: str) -> bool:
    """Whether a path named by a data record stays inside the folder it is joined to: relative, without a ``..``
    part (a record must never make the program read or write elsewhere)."""
    import re

    parts = relative.replace("\\", "/").split("/")
    return not (relative.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", relative) or ".." in parts)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of an append-only JSON-lines file; a torn last line (killed mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows, one JSON line each, flushed to disk; a torn last line left by a kill is closed first so that it
    cannot swallow the next record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        if torn:
            fh.write("\n")
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (``.{name}.{pid}.tmp...``) that writers killed mid-write left in ``folder``: those whose
    process is gone. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp*"):
        parts = p.name.split(".")
        pid = next((int(parts[i - 1]) for i in range(1, len(parts)) if parts[i].startswith("tmp")
                    and parts[i - 1].isdigit()), None)
        if pid is None or not p.is_file() or _alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

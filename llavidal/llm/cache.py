"""A SQLite store of replies that parsed: a re-run asks the endpoint only for the calls that failed.

Keyed by SHA-256 over the endpoint identity (base URL, model, temperature, seed, extra body), the caller's
namespace (e.g. prompt set, prompt key and reply kind), the reply budget and the exact messages. A hit is parsed
again by the caller's current parser, so a reply cached under a more lenient parser is asked for again. WAL mode
and a busy timeout let several processes (torchrun ranks) share one file.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CACHE_SCHEMA_VERSION", "ReplyCache", "reply_cache_key"]

CACHE_SCHEMA_VERSION = 2


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def reply_cache_key(identity: Mapping[str, Any], namespace: Mapping[str, Any], messages: Sequence[Mapping[str, Any]],
                    max_tokens: int) -> str:
    payload = {"schema": CACHE_SCHEMA_VERSION, "endpoint": dict(identity), "namespace": dict(namespace),
               "max_tokens": int(max_tokens), "messages": [dict(m) for m in messages]}
    return hashlib.sha256(canonical(payload).encode("utf-8")).hexdigest()


class ReplyCache:
    """``path``: a SQLite file (created with its folder), or ``":memory:"``. Thread-safe (one connection, a lock)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, endpoint TEXT NOT NULL, "
                "namespace TEXT NOT NULL, messages TEXT NOT NULL, reply TEXT NOT NULL, served_model TEXT, "
                "created REAL NOT NULL)")

    def get(self, key: str) -> tuple[str, str | None] | None:
        """``(reply, served_model)`` or ``None``."""
        with self._lock:
            row = self._conn.execute("SELECT reply, served_model FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put(self, key: str, identity: Mapping[str, Any], namespace: Mapping[str, Any],
            messages: Sequence[Mapping[str, Any]], reply: str, served_model: str | None = None) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (key, canonical(dict(identity)), canonical(dict(namespace)),
                                canonical([dict(m) for m in messages]), reply, served_model, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReplyCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Model folders from the Hugging Face Hub: ``--base org/name`` (or ``org/name@revision``) anywhere a folder is read.

A name that is not an existing path and looks like a hub repository id is downloaded once with
:func:`huggingface_hub.snapshot_download` into the standard cache (``HF_HUB_CACHE`` / ``HF_HOME``) and read from
there afterwards. ``HF_HUB_OFFLINE=1`` is honoured: the cached snapshot is used without contacting the Hub, and a
repository that is not in the cache is a :class:`~llavidal.model.validate.CheckpointError` that says so. Only the
files a model folder needs are fetched (configs, tokenizer, weights), never code.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .validate import CheckpointError

#: ``owner/name`` with an optional ``@revision`` (branch, tag or commit)
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<rev>[\w./-]+))?$")
#: what a model folder consists of (weights, configs, tokenizer); never code
MODEL_FILES = ["*.json", "*.model", "*.safetensors", "*.bin", "*.txt", "*.tiktoken"]


def hub_id(name: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``name`` is not an existing path and reads as a hub id; else None."""
    text = str(name)
    if Path(text).exists() or text.startswith((".", "/", "~")):
        return None
    m = HUB_ID.match(text)
    return (m.group("repo"), m.group("rev")) if m else None


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A local folder for ``name``: the path itself, or the cached snapshot of a hub repository (downloaded when
    needed and allowed)."""
    ident = hub_id(name)
    if ident is None:
        return Path(name)
    repo, revision = ident
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"{name}: not a local folder; as a Hugging Face Hub model"
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=MODEL_FILES))
    except LocalEntryNotFoundError as e:  # offline (or unreachable) and not (completely) in the cache
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(f"{where} it is not in the local cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                                  f"is set: download it once with network access (`hf download {repo}`), or give "
                                  "a local folder") from None
        raise CheckpointError(f"{where} it could not be downloaded and is not in the local cache "
                              f"({constants.HF_HUB_CACHE}): {e}") from None
    except HfHubHTTPError as e:  # no such repository or revision, gated, unauthorised
        raise CheckpointError(f"{where} it cannot be fetched: {str(e).splitlines()[0]}") from None


__all__ = ["HUB_ID", "MODEL_FILES", "hub_id", "resolve_model_path"]

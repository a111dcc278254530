"""LLAVIDAL: a video LLM for Activities of Daily Living (video + pose + object features into LLaMA).

The model API is imported lazily (PEP 562), so that ``llavidal --help`` and light subcommands do not pay for
importing torch and transformers.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_MODEL_API = (
    "CheckpointError", "LlavidalConfig", "LlavidalForCausalLM", "export_legacy_projector", "load_pretrained",
    "load_projector", "save_adapter", "save_pretrained",
)

__all__ = ["__version__", *_MODEL_API]


def __getattr__(name: str):
    if name in _MODEL_API:
        value = getattr(importlib.import_module(".model", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llavidal' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

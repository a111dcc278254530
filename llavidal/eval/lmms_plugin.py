"""The lmms-eval plugin: ``lmms-eval --model llavidal --model_args base=...,projector=...,clip=... --tasks <task>``.

Installing llavidal declares an entry point in lmms-eval's group for external models (``lmms_eval.models``, see
pyproject.toml); lmms-eval calls :func:`manifest` when it builds its model registry, and imports the model class
(:class:`llavidal.eval.lmms_model.Llavidal`) only when ``--model llavidal`` is asked for. Nothing here imports
lmms-eval unless lmms-eval itself is running (``pip install -e ".[lmms]"``).
"""
from __future__ import annotations

MODEL_ID = "llavidal"
CLASS_PATH = "llavidal.eval.lmms_model.Llavidal"


def manifest():
    """lmms-eval's registration record of the ``llavidal`` model (a "simple" model: raw prompts and visuals)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


__all__ = ["CLASS_PATH", "MODEL_ID", "manifest"]

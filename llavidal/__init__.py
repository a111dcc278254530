"""LLAVIDAL: a video LLM for Activities of Daily Living (video + pose + object features into LLaMA)."""
__version__ = "0.1.0"

from .model import (  # noqa: E402
    CheckpointError, LlavidalConfig, LlavidalForCausalLM, export_legacy_projector, load_pretrained, load_projector,
    save_adapter, save_pretrained,
)

__all__ = [
    "CheckpointError", "LlavidalConfig", "LlavidalForCausalLM", "__version__", "export_legacy_projector",
    "load_pretrained", "load_projector", "save_adapter", "save_pretrained",
]

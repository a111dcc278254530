from .configuration_llavidal import LlavidalConfig
from .modeling_llavidal import LlavidalForCausalLM, LlavidalModel, pack_features
from .checkpoint import (
    CheckpointError, ProjectorLoadReport, export_legacy_projector, load_base, load_pretrained, load_projector,
    save_adapter, save_pretrained,
)

__all__ = [
    "CheckpointError", "LlavidalConfig", "LlavidalForCausalLM", "LlavidalModel", "ProjectorLoadReport",
    "export_legacy_projector", "load_base", "load_pretrained", "load_projector", "pack_features", "save_adapter",
    "save_pretrained",
]

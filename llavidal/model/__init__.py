from .adapters import ProjectorLoadReport, export_legacy_projector, load_projector, save_adapter
from .base import load_base
from .checkpoint import load_pretrained, save_pretrained
from .configuration_llavidal import LlavidalConfig
from .modeling_llavidal import LlavidalForCausalLM, LlavidalModel, pack_features
from .validate import CheckpointError

__all__ = [
    "CheckpointError", "LlavidalConfig", "LlavidalForCausalLM", "LlavidalModel", "ProjectorLoadReport",
    "export_legacy_projector", "load_base", "load_pretrained", "load_projector", "pack_features", "save_adapter",
    "save_pretrained",
]

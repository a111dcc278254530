"""Fast generation for LLAVIDAL: continuous batching over a slot KV cache (see :mod:`llavidal.engine.engine`)."""
from .config import COMPILE_BY_DEFAULT, EngineConfig, GenerationRequest, GenerationResult
from .engine import Engine, EngineBusy, EngineStats, GenerationHandle, get_engine

__all__ = ["COMPILE_BY_DEFAULT", "Engine", "EngineBusy", "EngineConfig", "EngineStats", "GenerationHandle",
           "GenerationRequest", "GenerationResult", "get_engine"]

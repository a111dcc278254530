"""Configuration of the generation engine and of one generation request."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# Where torch.compile of the decode step is on by default. It is off everywhere until a measurement shows it wins
# (bench/bench_engine.py on CPU; bench/bench_engine_gpu.py prints the GPU comparison): flip an entry only with the
# figure in docs/benchmarks.md.
COMPILE_BY_DEFAULT = {"cpu": False, "cuda": False}

# KV positions per slot when EngineConfig.max_cache_len is not set: the model's window up to this many. The slot cache
# is allocated whole, and the windows of other backbones (LLaMA-3.1: 131,072; Qwen2.5: 32,768) would take tens of GB
# per slot; LLaMA-Lightening's 2,048 is well below it.
DEFAULT_MAX_CACHE_LEN = 8192


@dataclass
class EngineConfig:
    """How the engine batches and runs the model.

    ``max_batch_size`` sequences are decoded together (one KV-cache row, a "slot", each). With ``refill`` a slot
    whose sequence finished takes the next waiting request at once (continuous batching); without it the engine
    waits until the whole batch has finished (static batching, what ``model.generate`` on fixed batches does).
    """

    max_batch_size: int = 8  # slots
    max_cache_len: int | None = None  # KV positions per slot (default: the model's window, at most DEFAULT_MAX_CACHE_LEN)
    max_prefill_tokens: int = 8192  # prompt tokens prefilled by one forward (admitted requests are grouped)
    refill: bool = True  # continuous batching (False: static batches, for comparison)
    compile: bool | None = None  # torch.compile the decode step (None: COMPILE_BY_DEFAULT for the device)
    compile_backend: str = "inductor"  # torch.compile backend ("eager"/"aot_eager" check the capture quickly)
    static_window: bool | None = None  # attend over power-of-two key windows of fixed shape (None: = compile)
    max_queue: int | None = None  # waiting requests accepted (None: no limit); beyond it submit raises EngineBusy

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be at least 1, got {self.max_prefill_tokens}")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")

    def compile_on(self, device: torch.device) -> bool:
        return COMPILE_BY_DEFAULT.get(device.type, False) if self.compile is None else bool(self.compile)

    def static_on(self, device: torch.device) -> bool:
        return self.compile_on(device) if self.static_window is None else bool(self.static_window)


@dataclass
class GenerationRequest:
    """One prompt to continue: token ids (modality spans expanded) and the packed feature rows of its spans.

    ``on_tokens`` (optional) receives the new token ids as they are generated, on the engine's thread: it must only
    hand them over (a queue put), never block.
    """

    input_ids: list[int]
    features: dict[str, torch.Tensor | None] = field(default_factory=dict)  # modality -> [R, D] rows (any device)
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0  # sampling noise (greedy requests ignore it)
    on_tokens: Callable[[list[int]], None] | None = None
    query: list[int] | None = None  # positions of the question's tokens (two-token video; docs/design.md#two-token-video)

    @property
    def greedy(self) -> bool:
        return not (self.temperature and self.temperature > 0)


@dataclass
class GenerationResult:
    """What a request produced: the new token ids (without ``</s>``) and why it ended."""

    token_ids: list[int]
    finish_reason: str  # "stop" (</s>), "length" (max_new_tokens), "cancelled"
    prompt_tokens: int
    queued_s: float  # submit -> prefill start
    first_token_s: float | None  # submit -> first token
    total_s: float  # submit -> end


__all__ = ["COMPILE_BY_DEFAULT", "DEFAULT_MAX_CACHE_LEN", "EngineConfig", "GenerationRequest", "GenerationResult"]

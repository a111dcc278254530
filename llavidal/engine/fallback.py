"""The engine's interface over ``model.generate``, for models the slot cache cannot hold.

:func:`~llavidal.engine.engine.get_engine` hands this out, with the reason logged, when
:func:`~llavidal.engine.engine.unsupported_reason` names one (sliding-window or non-attention layers): requests are
queued, streamed, cancelled and reported exactly as with :class:`~llavidal.engine.engine.Engine`, but each runs alone
through ``model.generate`` and transformers' own caches (no continuous batching). Greedy replies are those of
``model.generate``; sampling draws from torch's generator seeded with the request's seed.
"""
from __future__ import annotations

import logging
import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..model.two_token import question_mask
from .config import EngineConfig, GenerationRequest
from .engine import Engine, GenerationHandle

log = logging.getLogger("llavidal.engine")


class _Tokens(BaseStreamer):
    """Hands each new token of a request to its ``on_tokens`` (the prompt, which generate puts first, is skipped)."""

    def __init__(self, handle: GenerationHandle, eos_id: int):
        self.handle, self.eos_id, self.prompt_seen = handle, eos_id, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.handle.first_token is None:
            self.handle.first_token = time.perf_counter()
        tokens = [t for t in value.reshape(-1).tolist() if t != self.eos_id]
        if tokens and self.handle.request.on_tokens is not None:
            self.handle.request.on_tokens(tokens)

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    def __init__(self, engine: GenerateEngine, handle: GenerationHandle):
        self.engine, self.handle = engine, handle

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        stop = self.handle.cancel_requested or self.engine._closed
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class GenerateEngine(Engine):
    """:class:`Engine`'s queue, handles and statistics; each request generated alone by ``model.generate``."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, reason: str = ""):
        self.reason = reason
        super().__init__(model, tokenizer, config)
        self.max_len = self.limit  # transformers' caches grow with the sequence: the model's window is the limit

    @staticmethod
    def _check_model(model) -> str:
        return getattr(model.config, "_attn_implementation", "sdpa")

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    for h in self._cancelled:  # cancelled while waiting (a running one stops at its next token)
                        if h.slot is None and not h.future.done():
                            if h in self._waiting:
                                self._waiting.remove(h)
                            h._finish([], "cancelled")
                            self.stats.cancelled += 1
                    self._cancelled.clear()
                    if not self._waiting:
                        self._thread = None
                        return
                    handle = self._waiting.popleft()
                    handle.slot = 0
                t0 = time.perf_counter()
                try:
                    self._generate_one(handle)
                except Exception as e:  # a failed request fails alone
                    log.exception("generation failed")
                    handle._fail(e)
                    self.stats.failed += 1
                handle.slot = None
                self.stats.busy_s += time.perf_counter() - t0

    def _generate_one(self, handle: GenerationHandle) -> None:
        r: GenerationRequest = handle.request
        handle.started = time.perf_counter()
        ids = torch.tensor([r.input_ids], dtype=torch.long, device=self.device)
        feats = {f"{m}_features": f.to(self.device) for m, f in r.features.items() if f is not None}
        if r.query is not None:  # two-token video: the question's positions
            feats["query_mask"] = question_mask([r.query], [len(r.input_ids)], len(r.input_ids), left=False).to(self.device)
        kw = {"max_new_tokens": r.max_new_tokens, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id,
              "repetition_penalty": r.repetition_penalty, "do_sample": not r.greedy, "use_cache": True}
        if not r.greedy:
            kw.update(temperature=r.temperature, top_p=r.top_p)
            torch.manual_seed(r.seed)
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), streamer=_Tokens(handle, self.eos_id),
                                  stopping_criteria=StoppingCriteriaList([_Cancelled(self, handle)]), **feats, **kw)
        tokens = out[0].tolist()
        self.stats.prefill_forwards += 1
        self.stats.prefill_tokens += len(r.input_ids)
        self.stats.generated_tokens += len(tokens)
        if handle.cancel_requested or self._closed:
            reason = "cancelled"
            self.stats.cancelled += 1
        else:
            reason = "stop" if tokens and tokens[-1] == self.eos_id else "length"
            self.stats.finished += 1
        if tokens and tokens[-1] == self.eos_id:
            tokens = tokens[:-1]
        handle._finish(tokens, reason)


__all__ = ["GenerateEngine"]

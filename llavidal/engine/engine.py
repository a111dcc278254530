"""The generation engine: continuous batching over a slot KV cache, one background thread per busy period.

Requests are submitted from any thread (:meth:`Engine.submit`) and wait in a FIFO queue. The engine's thread
repeats two phases while there is work:

1. **admit**: waiting requests take the free slots; their prompts (modality features spliced into the token
   embeddings once) are prefilled, left padded, in groups of at most ``max_prefill_tokens`` tokens; the keys and
   values land in their slots' rows (:class:`~llavidal.engine.cache.SlotCache`) and the first token is chosen.
2. **decode**: one forward of one token for every slot, the next tokens chosen on the device
   (:func:`~llavidal.engine.sampling.choose_tokens`); one small device-to-host copy per step (the tokens and the
   finished flags) tells the host which slots finished and what to stream. A finished slot is free for the next
   admission, i.e. at the next step.

The thread ends when the queue and the slots are empty, and a later submit starts a new one, so an idle engine
holds no thread. Cancelling a request (a client that went away) frees its slot before the next step.
"""
from __future__ import annotations

import atexit
import collections
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..constants import MODALITIES
from ..model.two_token import question_mask
from ..representation import tokens_for_rows
from .cache import SlotCache
from .config import DEFAULT_MAX_CACHE_LEN, EngineConfig, GenerationRequest, GenerationResult
from .sampling import SlotParams, choose_tokens

log = logging.getLogger("llavidal.engine")


_LIVE: weakref.WeakSet = weakref.WeakSet()  # engines whose threads are stopped at interpreter exit


@atexit.register
def _close_all() -> None:
    """Stop every engine's thread before the interpreter tears down (a daemon thread killed inside torch aborts
    the process)."""
    for engine in list(_LIVE):
        engine.close()


class EngineBusy(RuntimeError):
    """The engine's queue is full; try again later (``retry_after`` seconds is an estimate)."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class GenerationHandle:
    """A submitted request: :meth:`result` waits for it, :meth:`cancel` stops it (its slot is freed)."""

    def __init__(self, engine: Engine, request: GenerationRequest):
        self.engine = engine
        self.request = request
        self.future: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.first_token: float | None = None
        self.slot: int | None = None
        self.cancel_requested = False

    def result(self, timeout: float | None = None) -> GenerationResult:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        """Stop generating; the result (finish reason "cancelled") holds the tokens made so far."""
        self.engine._cancel(self)

    def _finish(self, tokens: list[int], reason: str) -> None:
        if self.future.done():
            return
        now = time.perf_counter()
        self.future.set_result(GenerationResult(
            token_ids=tokens, finish_reason=reason, prompt_tokens=len(self.request.input_ids),
            queued_s=(self.started or now) - self.submitted,
            first_token_s=None if self.first_token is None else self.first_token - self.submitted,
            total_s=now - self.submitted))

    def _fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class EngineStats:
    """Counters since the engine was made (read them for benchmarks and the server's logs)."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    prefill_forwards: int = 0
    prefill_tokens: int = 0
    decode_steps: int = 0
    generated_tokens: int = 0
    slot_steps: int = 0  # sum over decode steps of the busy slots (occupancy = slot_steps / (steps * slots))
    busy_s: float = 0.0
    extra: dict = field(default_factory=dict)


class _SlotState:
    """Device tensors of every slot plus their host mirrors (only the engine thread touches them)."""

    def __init__(self, n: int, max_len: int, vocab: int, device):
        self.last = torch.zeros(n, dtype=torch.long, device=device)  # last token (input of the next step)
        self.pos = torch.zeros(n, dtype=torch.long, device=device)  # cache length = position of the next token
        self.gen = torch.zeros(n, dtype=torch.long, device=device)  # tokens generated
        self.max_new = torch.ones(n, dtype=torch.long, device=device)
        self.active = torch.zeros(n, dtype=torch.bool, device=device)
        self.out = torch.zeros(n, max_len, dtype=torch.long, device=device)  # generated tokens
        self.params = SlotParams.empty(n, vocab, device)
        self.host_len = np.zeros(n, dtype=np.int64)
        self.host_gen = np.zeros(n, dtype=np.int64)
        self.host_active = np.zeros(n, dtype=bool)
        self.host_stream = np.zeros(n, dtype=bool)  # the slot's request streams its tokens
        self.host_need = np.zeros(n, dtype=np.int64)  # prompt + max_new_tokens: cache positions the slot may use
        self.handles: list[GenerationHandle | None] = [None] * n
        # busy slots that need a repetition penalty / sample / use top-p: the work a step may skip
        self.flag_counts = np.zeros(3, dtype=np.int64)

    def occupy(self, slot: int, handle: GenerationHandle) -> None:
        self.handles[slot] = handle
        self.host_stream[slot] = handle.request.on_tokens is not None
        self.host_need[slot] = len(handle.request.input_ids) + handle.request.max_new_tokens
        self.flag_counts += _flags_of(handle.request)

    def vacate(self, slot: int) -> GenerationHandle | None:
        handle = self.handles[slot]
        if handle is not None:
            self.flag_counts -= _flags_of(handle.request)
        self.handles[slot] = None
        self.host_active[slot] = False
        self.host_stream[slot] = False
        self.host_need[slot] = 0
        self.host_len[slot] = 0
        self.host_gen[slot] = 0
        self.active[slot] = False
        return handle

    def flags(self) -> tuple[bool, bool, bool]:
        return tuple(bool(c > 0) for c in self.flag_counts)


def _flags_of(r: GenerationRequest) -> np.ndarray:
    return np.array([r.repetition_penalty != 1.0, not r.greedy, not r.greedy and r.top_p < 1.0], dtype=np.int64)


class Engine:
    """Continuous-batching generation for one model (see the module docstring).

    Greedy replies are token for token those of ``model.generate`` on the same prompts
    (tests/test_engine.py compares them); sampling is reproducible per request seed.
    """

    def __init__(self, model, tokenizer, config: EngineConfig | None = None):
        self.model = model
        self.config = config or EngineConfig()
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.attn = self._check_model(model)
        self.device = model.get_input_embeddings().weight.device
        self.limit = int(model.config.max_position_embeddings)
        self.max_len = min(self.config.max_cache_len or min(self.limit, DEFAULT_MAX_CACHE_LEN), self.limit)
        self.vocab = int(model.get_output_embeddings().weight.shape[0])
        suppress = sorted(set(model.never_generated_token_ids()))
        self.suppress = None
        if suppress:
            self.suppress = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            self.suppress[torch.tensor(suppress, device=self.device)] = True
        self._patch = {name: (model.patch_token_id(name), m.dim(model.config))
                       for name, m in MODALITIES.items()}  # modality -> (patch token id, feature width)
        self.compiled = self.config.compile_on(self.device)
        self.static = self.config.static_on(self.device)
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._waiting: collections.deque[GenerationHandle] = collections.deque()
        self._cancelled: list[GenerationHandle] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._state: _SlotState | None = None
        self._cache: SlotCache | None = None
        self._decode_fn = None
        _LIVE.add(self)

    @staticmethod
    def _check_model(model) -> str:
        """The attention implementation the engine runs with; a model the slot cache cannot hold is refused
        (:func:`get_engine` falls back to ``model.generate`` for it)."""
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the generation engine cannot run this model: {reason}")
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        if attn not in ("sdpa", "eager"):
            raise ValueError(f"the generation engine runs with sdpa or eager attention; this model was loaded with "
                             f"{attn!r} (load it with --attn sdpa)")
        return attn

    # ------------------------------------------------------------------ public
    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError for a request this engine cannot run (before it is queued)."""
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        if not request.input_ids:
            raise ValueError("the prompt is empty")
        n = len(request.input_ids)
        if n + request.max_new_tokens > self.max_len:
            where = (f"the model's {self.max_len} positions" if self.max_len == self.limit else
                     f"the engine's KV cache of {self.max_len} positions per sequence (EngineConfig.max_cache_len; "
                     f"the model allows {self.limit})")
            raise ValueError(f"the prompt is {n} tokens; with max_new_tokens={request.max_new_tokens} it exceeds "
                             f"{where}")
        if not 0 < request.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {request.top_p}")
        if request.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {request.repetition_penalty}")
        ids = np.asarray(request.input_ids)
        for m, (token, width) in self._patch.items():
            f = request.features.get(m)
            rows = 0 if f is None else f.reshape(-1, f.shape[-1]).shape[0]
            if f is not None and f.shape[-1] != width:
                raise ValueError(f"{m} features have width {f.shape[-1]}, expected {width}")
            n_tokens = int((ids == token).sum())
            if n_tokens != tokens_for_rows(self.model.config, m, rows):
                raise ValueError(f"{m}: the prompt holds {n_tokens} patch tokens but {rows} feature rows were given")
        if request.query is not None and any(not 0 <= p < n for p in request.query):
            raise ValueError(f"question positions outside the prompt of {n} tokens")

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue one request; raises ValueError for a bad one and :class:`EngineBusy` when the queue is full."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[GenerationRequest]) -> list[GenerationHandle]:
        for r in requests:
            self.check(r)
        handles = [GenerationHandle(self, r) for r in requests]
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            limit = self.config.max_queue
            if limit is not None and len(self._waiting) + len(handles) > limit:
                raise EngineBusy(f"{len(self._waiting)} requests are waiting (limit {limit})",
                                 retry_after=self._retry_after())
            self._waiting.extend(handles)
            self.stats.requests += len(handles)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llavidal-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return handles

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Submit and wait for all (results in request order)."""
        return [h.result() for h in self.submit_many(requests)]

    def imap(self, keyed_requests: Iterable[tuple[Any, GenerationRequest]],
             window: int | None = None) -> Iterator[tuple[Any, GenerationResult]]:
        """``(key, result)`` for every ``(key, request)``, as they finish. At most ``window`` requests (default
        four times the slots) are submitted and not yet finished, so the queue keeps the slots busy while the
        requests (and their features) are built lazily. Closing the iterator cancels what is still running."""
        window = window or 4 * self.config.max_batch_size
        source = iter(keyed_requests)
        pending: dict[concurrent.futures.Future, tuple[Any, GenerationHandle]] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        key, request = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    h = self.submit(request)
                    pending[h.future] = (key, h)
                if not pending:
                    return
                finished, _ = concurrent.futures.wait(list(pending), return_when=concurrent.futures.FIRST_COMPLETED)
                for f in finished:
                    key, _ = pending.pop(f)
                    yield key, f.result()
        finally:
            for _, h in pending.values():
                h.cancel()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy_slots(self) -> int:
        state = self._state
        return 0 if state is None else int(state.host_active.sum())

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._thread is not None

    def close(self) -> None:
        """Cancel everything and stop the thread."""
        with self._cond:
            self._closed = True
            handles = list(self._waiting)
            if self._state is not None:
                handles += [h for h in self._state.handles if h is not None]
            self._cancelled.extend(handles)
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    # ------------------------------------------------------------------ internals
    def _retry_after(self) -> float:
        steps = max(self.stats.decode_steps, 1)
        per_step = self.stats.busy_s / steps if self.stats.decode_steps else 0.05
        return float(min(60.0, max(1.0, per_step * 64)))

    def _cancel(self, handle: GenerationHandle) -> None:
        with self._cond:
            handle.cancel_requested = True
            if not handle.future.done():
                self._cancelled.append(handle)
                self._cond.notify_all()

    def _ensure_state(self) -> _SlotState:
        if self._state is None:
            n = self.config.max_batch_size
            state = _SlotState(n, self.max_len, self.vocab, self.device)
            self._arange = torch.arange(n, device=self.device)
            self._cache = SlotCache(self.model.config.num_hidden_layers, n, self.max_len, compileable=self.static,
                                    grow=not self.static)
            self._state = state  # last: a failed start is tried again by the next request
        return self._state

    def _fail_waiting(self, error: Exception) -> None:
        """The engine could not start: every waiting request fails with ``error`` (instead of waiting forever)."""
        log.error("the generation engine could not start: %s", error)
        with self._cond:
            failed, self._waiting = list(self._waiting), collections.deque()
            self._thread = None
        for h in failed:
            h._fail(error)
        self.stats.failed += len(failed)

    def _run(self) -> None:
        with torch.inference_mode():
            try:
                state = self._ensure_state()
            except Exception as e:  # noqa: BLE001 - e.g. a transformers whose cache classes SlotCache does not fit
                self._fail_waiting(e)
                return
            while True:
                with self._cond:
                    self._drop_cancelled(state)
                    if not self._waiting and not state.host_active.any():
                        self._thread = None
                        return
                    admitted = self._take_admissions(state)
                t0 = time.perf_counter()
                try:
                    if admitted:
                        self._admit(state, admitted)
                    if state.host_active.any():
                        self._decode(state)
                except Exception as e:  # a failed forward fails the requests it carried, not the engine
                    log.exception("generation step failed")
                    self._fail_active(state, e)
                self.stats.busy_s += time.perf_counter() - t0

    def _drop_cancelled(self, state: _SlotState) -> None:
        """(under the lock) finish cancelled requests: out of the queue, or out of their slot."""
        for h in self._cancelled:
            if h.future.done():
                continue
            if h.slot is None:
                try:
                    self._waiting.remove(h)
                except ValueError:
                    pass
                h._finish([], "cancelled")
            else:
                self._release(state, h.slot, "cancelled")
            self.stats.cancelled += 1
        self._cancelled.clear()

    def _take_admissions(self, state: _SlotState) -> list[tuple[int, GenerationHandle]]:
        """(under the lock) waiting requests that get a slot now, FIFO."""
        if not self._waiting or (not self.config.refill and state.host_active.any()):
            return []
        free = np.flatnonzero(~state.host_active).tolist()
        out = []
        while self._waiting and free:
            h = self._waiting.popleft()
            h.slot = free.pop(0)
            state.occupy(h.slot, h)
            out.append((h.slot, h))
        return out

    # ---- admission: prefill
    def _admit(self, state: _SlotState, admitted: list[tuple[int, GenerationHandle]]) -> None:
        budget = self.config.max_prefill_tokens
        group: list[tuple[int, GenerationHandle]] = []
        longest = 0
        for item in admitted:
            n = len(item[1].request.input_ids)
            if group and max(longest, n) * (len(group) + 1) > budget:
                self._prefill_group(state, group)
                group, longest = [], 0
            group.append(item)
            longest = max(longest, n)
        if group:
            self._prefill_group(state, group)

    def _prefill_group(self, state: _SlotState, group: list[tuple[int, GenerationHandle]]) -> None:
        try:
            self._prefill(state, group)
        except Exception as e:
            if len(group) > 1:  # find the request that fails: the others go on
                for item in group:
                    self._prefill_group(state, [item])
                return
            log.exception("prefill failed")
            for slot, h in group:
                state.vacate(slot)
                h.slot = None
                h._fail(e)
                self.stats.failed += 1

    def _prefill(self, state: _SlotState, group: list[tuple[int, GenerationHandle]]) -> None:
        model, dev = self.model, self.device
        now = time.perf_counter()
        reqs = [h.request for _, h in group]
        for _, h in group:
            h.started = now
        n = len(group)
        lengths = [len(r.input_ids) for r in reqs]
        q = max(lengths)
        occupied = np.flatnonzero(state.host_need)  # admitted slots, this group included
        self._cache.reserve(int(occupied[-1]) + 1, int(state.host_need.max()))
        ids = torch.full((n, q), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, q), dtype=torch.long)
        cols = torch.full((n, q), self._cache.trash_column, dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding, as model.generate batches prompts
            p = lengths[i]
            ids[i, q - p:] = torch.tensor(r.input_ids)
            mask[i, q - p:] = 1
            cols[i, q - p:] = torch.arange(p)
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        feats = {}
        for m in MODALITIES:
            rows = [r.features.get(m) for r in reqs if r.features.get(m) is not None]
            feats[f"{m}_features"] = torch.cat([f.reshape(-1, f.shape[-1]) for f in rows]) if rows else None
        if any(r.query is not None for r in reqs):  # two-token video: the question's positions, left padded like ids
            feats["query_mask"] = question_mask([r.query for r in reqs], lengths, q, left=True).to(dev)
        embeds = model.embed_multimodal(ids.to(dev), **feats)  # [n, q, H]: the multimodal prompt, spliced once
        slots = torch.tensor([s for s, _ in group], dtype=torch.long)
        plan = self._cache.plan
        plan.mode, plan.rows, plan.cols = "prefill", slots[:, None].to(dev), cols.to(dev)
        out = model(inputs_embeds=embeds, attention_mask=mask.to(dev), position_ids=position_ids.to(dev),
                    cache=self._cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].to(dtype=torch.float32)  # [n, V]
        self.stats.prefill_forwards += 1
        self.stats.prefill_tokens += sum(lengths)

        rows = slots.to(dev)
        p = state.params
        as_t = lambda values, dtype: torch.tensor(values, dtype=dtype, device=dev)  # noqa: E731
        p.greedy[rows] = as_t([r.greedy for r in reqs], torch.bool)
        p.temperature[rows] = as_t([1.0 if r.greedy else float(r.temperature) for r in reqs], torch.float32)
        p.top_p[rows] = as_t([float(r.top_p) for r in reqs], torch.float32)
        p.repetition_penalty[rows] = as_t([float(r.repetition_penalty) for r in reqs], torch.float32)
        p.seed[rows] = as_t([int(r.seed) & ((1 << 62) - 1) for r in reqs], torch.long)
        p.seen[rows] = False
        tok = choose_tokens(logits, p, rows, torch.zeros(n, dtype=torch.long, device=dev), self.suppress,
                            *state.flags())
        max_new = as_t([r.max_new_tokens for r in reqs], torch.long)
        state.out[rows, 0] = tok
        state.last[rows] = tok
        state.gen[rows] = 1
        state.pos[rows] = as_t(lengths, torch.long)
        state.max_new[rows] = max_new
        state.active[rows] = True
        p.seen[rows, tok] = True
        done = (tok == self.eos_id) | (max_new <= 1)
        host = torch.stack([tok, done.long()]).cpu().numpy()  # the one sync of this prefill
        first = time.perf_counter()
        for i, (slot, h) in enumerate(group):
            h.first_token = first
            state.host_len[slot] = lengths[i]
            state.host_gen[slot] = 1
            state.host_active[slot] = True
        self.stats.generated_tokens += n
        at = np.zeros(state.host_active.shape[0], dtype=np.int64)
        fin = np.zeros(state.host_active.shape[0], dtype=bool)
        at[slots.numpy()], fin[slots.numpy()] = host[0], host[1].astype(bool)
        self._emit(state, slots.numpy(), at, fin)

    # ---- decode
    def _window(self, longest: int) -> int:
        """Key columns read by a decode step: exactly the longest busy slot, or a power-of-two bucket (fixed
        shapes for torch.compile / CUDA graphs)."""
        if not self.static:
            return longest
        w = 64
        while w < longest:
            w *= 2
        return min(w, self.max_len)

    def _decode_forward(self, last, positions, mask):
        out = self.model(input_ids=last[:, None], position_ids=positions[:, None], attention_mask=mask,
                         cache=self._cache, use_cache=True)
        return out.logits[:, -1].to(dtype=torch.float32)

    def _decode(self, state: _SlotState) -> None:
        dev = self.device
        busy = np.flatnonzero(state.host_active)
        n = self.config.max_batch_size if self.static else int(busy[-1]) + 1  # slots 0..n-1 take part
        window = self._window(int(state.host_len[:n].max()) + 1)
        active = state.active[:n]
        positions = torch.where(active, state.pos[:n], 0)
        plan = self._cache.plan
        plan.mode, plan.n_rows, plan.window, plan.rows = "decode", n, window, self._arange[:n]
        plan.cols = torch.where(active, state.pos[:n], self._cache.trash_column)
        lengths = state.host_len[:n]
        if not self.static and len(busy) == n and lengths.min() == lengths.max():
            mask = None  # every row reads its whole window: no mask (the kernel generate uses at batch 1)
        else:
            allowed = torch.arange(window, device=dev)[None, :] <= positions[:, None]  # [n, W]; free slots: col 0
            if self.attn == "eager":
                dtype = self.model.get_input_embeddings().weight.dtype
                mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed,
                                                                                       torch.finfo(dtype).min)
            else:
                mask = allowed
            mask = mask[:, None, None, :]
        logits = self._decode_callable()(state.last[:n], positions, mask)
        tok = choose_tokens(logits, state.params, slice(0, n), state.gen[:n], self.suppress, *state.flags())
        state.out[:n].scatter_(1, state.gen[:n].clamp(max=self.max_len - 1)[:, None], tok[:, None])
        state.last[:n] = tok
        state.gen[:n] += active
        state.pos[:n] += active
        state.params.seen[:n].scatter_(1, tok[:, None], True)
        done = active & ((tok == self.eos_id) | (state.gen[:n] >= state.max_new[:n]))
        host = torch.stack([tok, done.long()]).cpu().numpy()  # the one sync of this step
        state.host_len[busy] += 1
        state.host_gen[busy] += 1
        self.stats.decode_steps += 1
        self.stats.slot_steps += len(busy)
        self.stats.generated_tokens += len(busy)
        self._emit(state, busy, host[0], host[1].astype(bool))

    def _decode_callable(self):
        if not self.compiled:
            return self._decode_forward
        if self._decode_fn is None:
            backend = self.config.compile_backend
            kw = {"mode": "reduce-overhead"} if backend == "inductor" and self.device.type == "cuda" else {}
            self._decode_fn = torch.compile(self._decode_forward, backend=backend, dynamic=False, **kw)
        return self._decode_fn

    def _emit(self, state: _SlotState, slots: np.ndarray, tokens: np.ndarray, done: np.ndarray) -> None:
        """Host side of a step: the new token of each streaming slot among ``slots`` goes to its request, the
        finished slots are released. ``tokens``/``done`` are indexed by slot; other slots cost nothing here."""
        for slot in slots[state.host_stream[slots]].tolist():
            tok = int(tokens[slot])
            if done[slot] and tok == self.eos_id:
                continue
            h = state.handles[slot]
            try:
                h.request.on_tokens([tok])
            except Exception:  # a broken consumer ends its own request only
                log.exception("streaming consumer failed; cancelling its request")
                self._release(state, slot, "cancelled")
                self.stats.cancelled += 1
        for slot in slots[done[slots]].tolist():
            if state.handles[slot] is None:
                continue
            self._release(state, slot, "stop" if int(tokens[slot]) == self.eos_id else "length")
            self.stats.finished += 1

    def _release(self, state: _SlotState, slot: int, reason: str) -> None:
        n = int(state.host_gen[slot])
        tokens = state.out[slot, :n].tolist()
        if reason == "stop" and tokens and tokens[-1] == self.eos_id:
            tokens = tokens[:-1]
        h = state.vacate(slot)
        h.slot = None
        h._finish(tokens, reason)

    def _fail_active(self, state: _SlotState, error: BaseException) -> None:
        for slot, h in enumerate(state.handles):
            if h is not None:
                state.vacate(slot)
                h.slot = None
                h._fail(error)
                self.stats.failed += 1


def unsupported_reason(model) -> str | None:
    """Why the slot cache cannot hold ``model``'s layers (None when it can): it keeps full causal attention over
    every position, so sliding-window and non-attention layers (Mistral v0.1, Gemma 2/3, hybrid models) need
    ``model.generate``'s own caches."""
    cfg = model.config
    kinds = set(getattr(cfg, "layer_types", None) or ()) - {"full_attention"}
    if kinds:
        return f"its layers include {', '.join(sorted(kinds))} (the slot cache holds full-attention layers only)"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True):
        return f"it attends within a sliding window of {window} positions (the slot cache holds full attention only)"
    return None


def get_engine(model, tokenizer, config: EngineConfig | None = None, **overrides) -> Engine:
    """The engine attached to ``model`` (made on first use). ``config``/``overrides`` (EngineConfig fields)
    replace an idle engine whose configuration differs; a busy one is kept as it is. A model the slot cache cannot
    hold (:func:`unsupported_reason`) gets a :class:`~llavidal.engine.fallback.GenerateEngine`: the same interface
    over ``model.generate``, one request at a time, with the reason logged once."""
    engine: Engine | None = getattr(model, "_llavidal_engine", None)
    base = config or (engine.config if engine is not None else EngineConfig())
    wanted = replace(base, **overrides) if overrides else base
    if engine is not None and (engine.config == wanted or engine.busy):
        return engine
    if engine is not None:
        engine.close()
    reason = unsupported_reason(model)
    if reason is None:
        engine = Engine(model, tokenizer, wanted)
    else:
        from .fallback import GenerateEngine

        log.warning("the generation engine cannot run this model: %s; replies come from model.generate, one request "
                    "at a time (no continuous batching)", reason)
        engine = GenerateEngine(model, tokenizer, wanted, reason=reason)
    model._llavidal_engine = engine
    return engine


__all__ = ["Engine", "EngineBusy", "EngineStats", "GenerationHandle", "get_engine", "unsupported_reason"]

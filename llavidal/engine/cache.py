"""A KV cache with one row per batch slot and a write position per row, for continuous batching.

transformers' :class:`~transformers.StaticLayer` preallocates ``[batch, heads, max_cache_len, head_dim]`` tensors
(static addresses, so decoding can be compiled and captured as CUDA graphs), but every row shares one write
position. With continuous batching each slot holds a different request at a different length, so
:class:`SlotLayer` keeps the allocation of ``StaticLayer`` and replaces only the write: the engine says, before each
forward, which rows and columns the new keys and values go to (:class:`WritePlan`).

Column ``max_cache_len`` is a trash column: writes that must go somewhere but are never read (left padding of a
prefill batch, slots that hold no request) land there, so whatever they hold can never reach an attention read
(a masked key still multiplies its value by zero, and zero times NaN is NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, StaticLayer


@dataclass
class WritePlan:
    """Where the next forward writes its keys/values; set by the engine before every forward.

    prefill: the batch holds ``n`` new requests, left padded to ``q`` tokens; row ``i`` goes to slot ``rows[i]``,
    its token ``j`` to column ``cols[i, j]`` (the prompt at ``0..P-1``, padding in the trash column). The forward
    attends to its own keys only (a prompt is prefilled from scratch).

    decode: one token per slot ``0..n_rows-1``, written at ``cols[b]``; attention reads columns ``[0, window)``.
    """

    mode: str = "decode"  # "prefill" | "decode"
    rows: torch.Tensor | None = None  # prefill: [n, 1] slot of each batch row; decode: [n_rows] = 0..n_rows-1
    cols: torch.Tensor | None = None  # prefill: [n, q]; decode: [n_rows]
    n_rows: int = 0  # decode: slots 0..n_rows-1 take part
    window: int = 0  # decode: key columns read


class SlotLayer(StaticLayer):
    """One decoder layer's slot cache: ``keys``/``values`` ``[slots, heads, max_cache_len + 1, head_dim]``."""

    def __init__(self, max_cache_len: int, n_slots: int, plan: WritePlan, compileable: bool = True):
        super().__init__(max_cache_len=max_cache_len + 1)  # + the trash column
        self.n_slots = n_slots
        self.plan = plan
        # transformers materialises every mask of a compileable cache; eager decoding may skip an all-true one
        self.is_compileable = compileable

    def resize(self, rows: int, cols: int) -> None:
        """Room for ``rows`` slots of ``cols`` positions (+ trash), keeping what the slots hold."""
        old_rows, old_cols = self.n_slots, self.max_cache_len - 1
        self.n_slots, self.max_cache_len = rows, cols + 1
        if not self.is_initialized:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((rows, old.shape[1], cols + 1, old.shape[3]))
            new[:old_rows, :, :old_cols] = old[:, :, :old_cols]  # the old trash column is not carried over
            setattr(self, name, new)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # allocate for every slot, whatever the batch of the first forward (a prefill of a few requests)
        shape_k = (self.n_slots, key_states.shape[1], 0, key_states.shape[-1])
        shape_v = (self.n_slots, value_states.shape[1], 0, value_states.shape[-1])
        super().lazy_initialization(key_states.new_zeros(shape_k), value_states.new_zeros(shape_v))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.plan
        device = self.keys.device
        if plan.mode == "prefill":  # key_states [n, H, q, D] -> slots' rows, prompt columns
            rows, cols = plan.rows.to(device), plan.cols.to(device)
            self.keys[rows, :, cols] = key_states.transpose(1, 2)  # [n, q, H, D]
            self.values[rows, :, cols] = value_states.transpose(1, 2)
            return key_states, value_states
        n = plan.n_rows  # key_states [n, H, 1, D]
        slots, cols = plan.rows.to(device), plan.cols.to(device)
        self.keys[slots, :, cols] = key_states[:, :, 0]  # [n, H, D]
        self.values[slots, :, cols] = value_states[:, :, 0]
        return self.keys[:n, :, :plan.window], self.values[:n, :, :plan.window]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # prefill masks span the prompt only (decode passes its own 4-D mask)
        if self.plan.mode == "prefill":
            return query_length, 0
        return self.plan.window, 0

    def get_seq_length(self) -> int:
        # the query's column as transformers' mask functions see it: a prefill starts at 0; a decode step without
        # its own mask (every row reads its whole window) sits at the window's last column
        return 0 if self.plan.mode == "prefill" else self.plan.window - 1

    def reset(self) -> None:
        pass  # stale rows are never read: each slot's columns are masked beyond its own length


class SlotCache(Cache):
    """A :class:`~transformers.cache_utils.Cache` of :class:`SlotLayer` s sharing one :class:`WritePlan`.

    With ``grow`` the tensors start empty and :meth:`reserve` enlarges them to what the admitted requests need
    (slots and positions, doubling), so a single short question on a small GPU does not hold memory for
    ``max_slots`` x ``max_len`` positions; without it (compiled decoding: fixed addresses) they are allocated whole.
    """

    def __init__(self, num_layers: int, max_slots: int, max_len: int, compileable: bool = True, grow: bool = False):
        self.plan = WritePlan()
        self.max_slots, self.max_len, self.grow = max_slots, max_len, grow
        self.n_slots, self.max_cache_len = (0, 0) if grow else (max_slots, max_len)
        super().__init__(layers=[SlotLayer(self.max_cache_len, self.n_slots, self.plan, compileable)
                                 for _ in range(num_layers)])

    @property
    def trash_column(self) -> int:
        return self.max_cache_len

    def reserve(self, rows: int, cols: int) -> None:
        """Make room for slots ``0..rows-1`` holding up to ``cols`` positions each."""
        if rows <= self.n_slots and cols <= self.max_cache_len:
            return
        rows = min(self.max_slots, max(rows, 2 * self.n_slots))
        cols = min(self.max_len, max(-(-cols // 256) * 256, 2 * self.max_cache_len))
        for layer in self.layers:
            layer.resize(rows, cols)
        self.n_slots, self.max_cache_len = rows, cols

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers if layer.is_initialized
                   for t in (layer.keys, layer.values))


__all__ = ["SlotCache", "SlotLayer", "WritePlan"]

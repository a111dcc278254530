"""Choosing the next token of every slot at once, each slot with its own decoding parameters.

The processing is the one ``model.generate`` applies, in the same order and with the same arithmetic, so greedy
replies are identical: repetition penalty on the tokens generated so far (transformers'
``RepetitionPenaltyLogitsProcessor``; with a prompt given as embeddings, ``generate`` knows no prompt ids either),
modality tokens set to ``-inf`` (``SuppressTokensLogitsProcessor``), then for sampling rows temperature and top-p
(``TemperatureLogitsWarper``, ``TopPLogitsWarper``). Parameters are per-row tensors instead of one scalar per batch.

Sampling draws with the Gumbel-max trick from noise that is a pure function of (seed, step, token id): a request
with a seed gets the same reply whichever slot it lands in and whoever shares its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
# odd multipliers below 2**31: every product of a 32-bit value with them fits in int64 without overflow
_MUL1, _MUL2, _MUL3 = 0x7FEB352D, 0x68E31DA5, 0x2C1B3C6D


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MUL3) & _MASK32
    return x ^ (x >> 15)


def gumbel_noise(seed: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise ``[n, vocab]`` determined by ``seed`` [n] and ``step`` [n] (int64) only."""
    key = _mix32((seed & _MASK32) ^ _mix32((step * 0x9E37 + (seed >> 32)) & _MASK32))  # [n]
    ids = torch.arange(vocab, device=seed.device, dtype=torch.int64)
    bits = _mix32(key[:, None] ^ ((ids[None, :] * _MUL1) & _MASK32))  # [n, V]
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # uniform in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


@dataclass
class SlotParams:
    """Decoding parameters of every slot (device tensors, rows = slots)."""

    greedy: torch.Tensor  # [B] bool
    temperature: torch.Tensor  # [B] float32 (1 for greedy rows)
    top_p: torch.Tensor  # [B] float32
    repetition_penalty: torch.Tensor  # [B] float32
    seed: torch.Tensor  # [B] int64
    seen: torch.Tensor  # [B, V] bool: tokens generated so far (repetition penalty)

    @classmethod
    def empty(cls, n: int, vocab: int, device) -> SlotParams:
        return cls(greedy=torch.ones(n, dtype=torch.bool, device=device),
                   temperature=torch.ones(n, device=device), top_p=torch.ones(n, device=device),
                   repetition_penalty=torch.ones(n, device=device),
                   seed=torch.zeros(n, dtype=torch.int64, device=device),
                   seen=torch.zeros(n, vocab, dtype=torch.bool, device=device))


def process_scores(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor,
                   suppress: torch.Tensor | None, use_penalty: bool) -> torch.Tensor:
    """Repetition penalty then suppression, as ``generate``'s processors (``scores`` [n, V] float32)."""
    if use_penalty:
        pen = penalty[:, None]
        scores = torch.where(seen, torch.where(scores < 0, scores * pen, scores / pen), scores)
    if suppress is not None:
        scores = scores.masked_fill(suppress, -float("inf"))
    return scores


def top_p_filter(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """transformers' nucleus filter with a per-row ``top_p`` [n] (rows with 1.0 keep everything)."""
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p[:, None])
    remove[:, -1] = False  # keep at least one token
    remove &= (top_p < 1.0)[:, None]
    return scores.masked_fill(remove.scatter(1, sorted_idx, remove), -float("inf"))


def choose_tokens(logits: torch.Tensor, params: SlotParams, rows: torch.Tensor | slice, step: torch.Tensor,
                  suppress: torch.Tensor | None, use_penalty: bool, any_sampling: bool,
                  any_top_p: bool) -> torch.Tensor:
    """Next token ``[n]`` of the ``rows`` of ``params`` from their last-position ``logits`` [n, V] (float32).

    ``step`` [n] is each row's number of tokens generated so far (the noise index). The three flags are known on
    the host and skip work no row needs.
    """
    scores = process_scores(logits, params.seen[rows], params.repetition_penalty[rows], suppress, use_penalty)
    greedy_tok = scores.argmax(dim=-1)
    if not any_sampling:
        return greedy_tok
    warped = scores / params.temperature[rows][:, None]
    if any_top_p:
        warped = top_p_filter(warped, params.top_p[rows])
    sampled = (warped + gumbel_noise(params.seed[rows], step, warped.shape[-1])).argmax(dim=-1)
    return torch.where(params.greedy[rows], greedy_tok, sampled)


__all__ = ["SlotParams", "choose_tokens", "gumbel_noise", "process_scores", "top_p_filter"]

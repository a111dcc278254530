"""Asking LLAVIDAL about a video: prompt building, batching, generation and streaming.

Template and defaults: docs/design.md#template and docs/design.md#inference.

Unlike the original, every modality that is given is used (not only video), the system prompt defaults to the
training one (vicuna_v1_1), decoding is greedy unless a temperature is set, and replies stop at ``</s>`` (the id
comes from the tokenizer, not from the base folder's wrong config).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .constants import MODALITY_ORDER
from .features import load_feature, patch_rows, validate_feature
from .prompting import DEFAULT_TEMPLATE, encode_turns, inference_turns

FeatureLike = np.ndarray | torch.Tensor | str | os.PathLike | None


@dataclass
class GenerationOptions:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # seeds sampling (temperature > 0)
    template: str = DEFAULT_TEMPLATE
    system: str | None = None  # overrides the template's system prompt

    def generate_kwargs(self, tokenizer) -> dict:
        kw = dict(max_new_tokens=self.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, use_cache=True,
                  repetition_penalty=self.repetition_penalty)
        if self.temperature and self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kw.update(do_sample=False)
        return kw


@dataclass
class Query:
    """One question about one sample; features are arrays, tensors or paths to feature files."""

    question: str
    video: FeatureLike = None
    object: FeatureLike = None
    pose: FeatureLike = None
    history: Sequence[tuple[str, str]] = field(default_factory=tuple)

    def features(self) -> dict[str, FeatureLike]:
        return {"video": self.video, "object": self.object, "pose": self.pose}


def _to_array(value: FeatureLike, modality: str, config) -> np.ndarray | None:
    if value is None:
        return None
    source = "<array>"
    if isinstance(value, (str, os.PathLike)):
        source = str(value)
        value = load_feature(Path(value), modality)
    elif isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    return validate_feature(np.asarray(value), modality, config, source)


def prepare_inputs(model, tokenizer, queries: Sequence[Query], options: GenerationOptions) -> dict:
    """Token ids (left-padded for generation) and packed feature rows for a batch of queries."""
    config = model.config
    device = model.device
    sequences, feats = [], {m: [] for m in MODALITY_ORDER}
    for q in queries:
        arrays = {m: _to_array(v, m, config) for m, v in q.features().items()}
        rows = {m: (patch_rows(a) if a is not None else None) for m, a in arrays.items()}
        turns = inference_turns(q.question, rows, history=q.history, use_start_end=config.mm_use_vid_start_end,
                                use_string_prefix=config.use_modality_string_prefix)
        sequences.append(encode_turns(tokenizer, turns, template=options.template, system=options.system)[0])
        for m, a in arrays.items():
            feats[m].append(None if a is None else torch.from_numpy(np.ascontiguousarray(a)).float())
    longest = max(map(len, sequences))
    limit = config.max_position_embeddings
    if longest + options.max_new_tokens > limit:
        raise ValueError(f"the prompt is {longest} tokens; with max_new_tokens={options.max_new_tokens} it exceeds "
                         f"the model's {limit} positions")
    input_ids = torch.full((len(sequences), longest), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):  # left padding for generation
        input_ids[i, longest - len(seq):] = torch.tensor(seq)
        attention_mask[i, longest - len(seq):] = 1
    out = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    for m in MODALITY_ORDER:
        present = [f for f in feats[m] if f is not None]
        out[f"{m}_features"] = torch.cat([f.reshape(-1, f.shape[-1]) for f in present]).to(device) if present else None
    return out


def _clean(text: str) -> str:
    return text.strip()


@torch.inference_mode()
def answer_batch(model, tokenizer, queries: Sequence[Query], options: GenerationOptions | None = None,
                 batch_size: int = 8) -> list[str]:
    """Answers for many queries, ``batch_size`` at a time (left padding, one generate call per batch)."""
    options = options or GenerationOptions()
    if options.seed is not None:
        torch.manual_seed(options.seed)
    answers: list[str] = []
    for start in range(0, len(queries), batch_size):
        batch = prepare_inputs(model, tokenizer, queries[start:start + batch_size], options)
        new_ids = model.generate(**batch, **options.generate_kwargs(tokenizer))
        answers.extend(_clean(t) for t in tokenizer.batch_decode(new_ids, skip_special_tokens=True))
    return answers


def answer(model, tokenizer, question: str, video: FeatureLike = None, object: FeatureLike = None,
           pose: FeatureLike = None, history: Sequence[tuple[str, str]] = (),
           options: GenerationOptions | None = None, **option_overrides) -> str:
    """The reply to one question about one sample. ``option_overrides`` are GenerationOptions fields."""
    options = _merge(options, option_overrides)
    return answer_batch(model, tokenizer, [Query(question, video, object, pose, tuple(history))], options)[0]


def stream_answer(model, tokenizer, question: str, video: FeatureLike = None, object: FeatureLike = None,
                  pose: FeatureLike = None, history: Sequence[tuple[str, str]] = (),
                  options: GenerationOptions | None = None, **option_overrides) -> Iterator[str]:
    """Yields the reply piece by piece as it is generated (transformers' TextIteratorStreamer).

    Closing the generator early (a web client that went away, a reset in a chat) stops the generation at the next
    token instead of letting it run to ``max_new_tokens`` in the background.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Cancelled(StoppingCriteria):
        def __init__(self, event: threading.Event):
            self.event = event

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)

    options = _merge(options, option_overrides)
    batch = prepare_inputs(model, tokenizer, [Query(question, video, object, pose, tuple(history))], options)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    errors: list[BaseException] = []
    cancel = threading.Event()

    def run():
        try:
            with torch.inference_mode():
                model.generate(**batch, **options.generate_kwargs(tokenizer), streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]))
        except BaseException as e:  # surfaced in the consumer thread below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    first = True
    try:
        for piece in streamer:
            if first:
                piece, first = piece.lstrip(), not piece.strip()
            if piece:
                yield piece
    finally:  # normal end, or the consumer closed the generator: either way the generation thread ends
        cancel.set()
        thread.join()
    if errors:
        raise errors[0]


def _merge(options: GenerationOptions | None, overrides: dict) -> GenerationOptions:
    options = options or GenerationOptions()
    if overrides:
        unknown = set(overrides) - set(GenerationOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation options {sorted(unknown)}")
        options = GenerationOptions(**{**options.__dict__, **overrides})
    return options





@torch.inference_mode()
def option_logprobs(model, tokenizer, query: Query, options: Sequence[str],
                    gen_options: GenerationOptions | None = None) -> list[float]:
    """Log-likelihood of each option as the assistant's reply (sum over its tokens and the closing ``</s>``).

    Multiple-choice scoring without generation: the item's options go through the model as one batch that
    shares the prompt and the features.
    """
    gen_options = gen_options or GenerationOptions(max_new_tokens=0)
    batch = prepare_inputs(model, tokenizer, [query], gen_options)
    prompt = batch["input_ids"][0].tolist()
    answers = [tokenizer(o.strip() + "</s>", add_special_tokens=False).input_ids for o in options]
    longest = len(prompt) + max(map(len, answers))
    k = len(options)
    input_ids = torch.full((k, longest), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((k, longest), dtype=torch.long)
    target = torch.zeros((k, longest), dtype=torch.bool)
    for i, a in enumerate(answers):  # right padding: every option starts right after the shared prompt
        input_ids[i, :len(prompt) + len(a)] = torch.tensor(prompt + a)
        attention[i, :len(prompt) + len(a)] = 1
        target[i, len(prompt):len(prompt) + len(a)] = True
    feats = {f"{m}_features": (None if batch[f"{m}_features"] is None else batch[f"{m}_features"].repeat(k, 1))
             for m in MODALITY_ORDER}
    device = model.device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), **feats).logits
    where = target[:, 1:].to(device)  # position t predicts token t+1; only answer tokens are scored
    logp = torch.log_softmax(logits[:, :-1][where].float(), dim=-1)  # [N_answer_tokens, V]
    picked = logp.gather(-1, input_ids[:, 1:].to(device)[where].unsqueeze(-1)).squeeze(-1)
    option_of = torch.arange(k, device=device).unsqueeze(1).expand_as(where)[where]
    return torch.zeros(k, device=device).index_add_(0, option_of, picked).tolist()

__all__ = ["GenerationOptions", "Query", "answer", "answer_batch", "option_logprobs", "prepare_inputs", "stream_answer"]

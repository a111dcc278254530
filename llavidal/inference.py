"""Asking LLAVIDAL about a video: prompt building, generation and streaming.

Template and defaults: docs/design.md#template and docs/design.md#inference.

Unlike the original, every modality that is given is used (not only video), the system prompt defaults to the
training one (vicuna_v1_1), decoding is greedy unless a temperature is set, and replies stop at ``</s>`` (the id
comes from the tokenizer, not from the base folder's wrong config).

Generation runs on the model's :class:`~llavidal.engine.Engine` (continuous batching, the multimodal prompt
prefilled once); greedy replies are those of ``model.generate`` on :func:`prepare_inputs`, token for token.
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .constants import MODALITIES
from .engine import GenerationRequest, GenerationResult, get_engine
from .features import load_feature, validate_feature
from .model.two_token import question_mask
from .prompting import encode_turns, inference_turns, model_template, reply_ids
from .representation import span_rows, two_token_spec

FeatureLike = np.ndarray | torch.Tensor | str | os.PathLike | None


@dataclass
class GenerationOptions:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # seeds sampling (temperature > 0)
    template: str | None = None  # None: the model's own (vicuna_v1_1 for LLaMA-Lightening, chat for other backbones)
    system: str | None = None  # overrides the template's system prompt
    tokenization: str | None = None  # clean | original; None: what the model was trained with (config.tokenization)

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
    more: dict[str, FeatureLike] = field(default_factory=dict)  # registered modalities beyond the three, by name

    @classmethod
    def of(cls, question: str, features: dict[str, FeatureLike], history: Sequence[tuple[str, str]] = ()) -> Query:
        """A query from ``{modality: features}`` (any registered modality)."""
        named = {k: features[k] for k in ("video", "object", "pose") if k in features}
        more = {k: v for k, v in features.items() if k not in named}
        return cls(question, history=tuple(history), more=more, **named)

    def features(self) -> dict[str, FeatureLike]:
        unknown = sorted(set(self.more) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; registered: {', '.join(MODALITIES)}")
        given = {"video": self.video, "object": self.object, "pose": self.pose, **self.more}
        return {m: given.get(m) for m in MODALITIES}


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


@dataclass
class EncodedQuery:
    """One query made ready for the model: prompt ids (spans expanded), validated feature arrays (None if absent)
    and, for a two-token video model, the positions of the question's tokens (else None)."""

    ids: list[int]
    arrays: dict[str, np.ndarray | None]
    query: list[int] | None = None


def encode_query_parts(model, tokenizer, query: Query, options: GenerationOptions) -> EncodedQuery:
    """:func:`encode_query`, plus the question's positions when the model's video is two-token
    (docs/design.md#two-token-video)."""
    config = model.config
    arrays = {m: _to_array(v, m, config) for m, v in query.features().items()}
    check_trained_modalities(model, [m for m, a in arrays.items() if a is not None])
    turns = inference_turns(query.question, span_rows(arrays, config), history=query.history,
                            use_start_end=config.mm_use_vid_start_end,
                            use_string_prefix=config.use_modality_string_prefix)
    marks = [] if two_token_spec(config) is not None else None
    ids = encode_turns(tokenizer, turns, template=resolve_template(model, options), system=options.system,
                       tokenization=resolve_tokenization(model, options), query_positions=marks)[0]
    return EncodedQuery(ids, arrays, marks)


def encode_query(model, tokenizer, query: Query, options: GenerationOptions) -> tuple[list[int], dict]:
    """The prompt ids of one query (modality spans expanded) and its validated feature arrays (None if absent)."""
    enc = encode_query_parts(model, tokenizer, query, options)
    return enc.ids, enc.arrays


def prepare_inputs(model, tokenizer, queries: Sequence[Query], options: GenerationOptions) -> dict:
    """Token ids (left-padded) and packed feature rows for a batch of queries: the inputs of ``model.generate``
    and of a plain forward."""
    config = model.config
    device = model.get_input_embeddings().weight.device
    sequences, marks, feats = [], [], {m: [] for m in MODALITIES}
    for q in queries:
        enc = encode_query_parts(model, tokenizer, q, options)
        ids, arrays = enc.ids, enc.arrays
        sequences.append(ids)
        marks.append(enc.query)
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
    marked = question_mask(marks, list(map(len, sequences)), longest, left=True)
    if marked is not None:  # two-token video: the question's positions (docs/design.md#two-token-video)
        out["query_mask"] = marked.to(device)
    for m in MODALITIES:
        present = [f for f in feats[m] if f is not None]
        out[f"{m}_features"] = torch.cat([f.reshape(-1, f.shape[-1]) for f in present]).to(device) if present else None
    return out


def make_request(model, tokenizer, query: Query, options: GenerationOptions, on_tokens=None) -> GenerationRequest:
    """The engine request of one query. Sampling without a seed draws one from torch's global generator, so
    ``torch.manual_seed`` upstream still makes a run reproducible."""
    enc = encode_query_parts(model, tokenizer, query, options)
    ids = enc.ids
    features = {m: torch.from_numpy(np.ascontiguousarray(a)).float() for m, a in enc.arrays.items() if a is not None}
    sampling = bool(options.temperature and options.temperature > 0)
    seed = options.seed if options.seed is not None else (
        int(torch.randint(0, 2**62, ()).item()) if sampling else 0)
    return GenerationRequest(input_ids=ids, features=features, max_new_tokens=options.max_new_tokens,
                             temperature=options.temperature if sampling else 0.0, top_p=options.top_p,
                             repetition_penalty=options.repetition_penalty, seed=seed, on_tokens=on_tokens,
                             query=enc.query)


def reply_text(tokenizer, result: GenerationResult) -> str:
    return _clean(tokenizer.decode(result.token_ids, skip_special_tokens=True))


def check_trained_modalities(model, modalities: Sequence[str]) -> None:
    """A modality whose projector the loaded weights never trained is refused: the model would read random
    projections (the published 2024 projector file has no pose projector). ``load_pretrained(...,
    allow_untrained_modality=True)`` (``--allow-untrained-modality``) lets it through."""
    trained = getattr(model.config, "trained_modalities", None)
    if trained is None or getattr(model, "allow_untrained_modality", False):
        return
    untrained = [m for m in modalities if m not in trained]
    if untrained:
        raise ValueError(f"{', '.join(untrained)} features given, but the loaded weights have no trained "
                         f"{' or '.join(untrained)} projector (trained: {', '.join(trained) or 'none'}): the answer "
                         "would come from an untrained projector. Leave them out, load a projector file that has "
                         "them, or pass --allow-untrained-modality")


def resolve_tokenization(model, options: GenerationOptions) -> str:
    """The options' tokenization, else the model's (``config.tokenization``: what its weights were trained on)."""
    return options.tokenization or getattr(model.config, "tokenization", None) or "clean"


def resolve_template(model, options: GenerationOptions) -> str:
    """The options' template, else the one the model was built for (``prompting.model_template``)."""
    return options.template or model_template(model.config)


def _clean(text: str) -> str:
    return text.strip()


def answer_batch(model, tokenizer, queries: Sequence[Query], options: GenerationOptions | None = None,
                 batch_size: int = 8) -> list[str]:
    """Answers for many queries, ``batch_size`` sequences decoded at a time with continuous batching (a finished
    reply's slot takes the next query at once). Every query is checked before any is generated."""
    options = options or GenerationOptions()
    requests = [make_request(model, tokenizer, q, options) for q in queries]
    engine = get_engine(model, tokenizer, max_batch_size=batch_size)
    for r in requests:
        engine.check(r)
    replies: list[str] = [""] * len(requests)
    for i, result in engine.imap(enumerate(requests)):
        replies[i] = reply_text(tokenizer, result)
    return replies


def answer(model, tokenizer, question: str, video: FeatureLike = None, object: FeatureLike = None,
           pose: FeatureLike = None, history: Sequence[tuple[str, str]] = (),
           options: GenerationOptions | None = None, more: dict[str, FeatureLike] | None = None,
           **option_overrides) -> str:
    """The reply to one question about one sample. ``more``: features of registered modalities beyond the three,
    by name; ``option_overrides`` are GenerationOptions fields."""
    options = _merge(options, option_overrides)
    return answer_batch(model, tokenizer, [Query(question, video, object, pose, tuple(history), dict(more or {}))],
                        options)[0]


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # sentencepiece's byte-fallback pieces


class _TextPieces:
    """Incremental detokenization: each call releases the text the new ids add, never half a character, with the
    whitespace :func:`answer` strips left out (see :class:`_Trim`), so the pieces of a reply join to its ``answer()``.

    The new ids are decoded together with the previous piece's ids and only the text beyond that piece's decoding is
    released (the offsets scheme of TGI and vLLM): a word's leading space and a character split over byte tokens come
    out as in the decoding of the whole reply. A piece is released only after an ordinary token (see
    :meth:`_boundary`), and text ending in U+FFFD waits for the bytes that may complete it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        self.ids: list[int] = []
        self.prefix = 0  # start of the ids decoded as context for the next piece
        self.read = 0  # ids before this position are released
        self.trim = _Trim()

    def _boundary(self, last: int) -> bool:
        """Whether text may be released after this id: not a byte-fallback piece (a run of byte tokens decodes as a
        whole; an invalid run gives one U+FFFD per byte) nor a special or added token (skipped in decoding, it would
        join two runs)."""
        return last not in self.special and not _BYTE_TOKEN.fullmatch(self.tokenizer.convert_ids_to_tokens(last) or "")

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _new_text(self, final: bool) -> str:
        if not final and self.ids and not self._boundary(self.ids[-1]):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]

    def put(self, ids: list[int]) -> list[str]:
        self.ids.extend(ids)
        return self._take(self._new_text(final=False))

    def end(self) -> list[str]:
        return self._take(self._new_text(final=True))

    def _take(self, text: str) -> list[str]:
        out = self.trim(text)
        return [out] if out else []


class _Trim:
    """Streamed text without the whitespace at either end of the reply: leading whitespace is dropped, trailing
    whitespace is held back until more text follows it (so the pieces join to ``text.strip()``)."""

    def __init__(self):
        self.started, self.held = False, ""

    def __call__(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        body = piece.rstrip()
        if not body:
            self.held += piece
            return ""
        out, self.held = self.held + body, piece[len(body):]
        return out


def stream_answer(model, tokenizer, question: str, video: FeatureLike = None, object: FeatureLike = None,
                  pose: FeatureLike = None, history: Sequence[tuple[str, str]] = (),
                  options: GenerationOptions | None = None, more: dict[str, FeatureLike] | None = None,
                  **option_overrides) -> Iterator[str]:
    """Yields the reply piece by piece as it is generated; ``"".join`` of the pieces equals :func:`answer`.

    Closing the generator early (a web client that went away, a reset in a chat) cancels the request: its batch
    slot is free before the next decoding step.
    """
    options = _merge(options, option_overrides)
    tokens: queue.Queue = queue.Queue()
    request = make_request(model, tokenizer, Query(question, video, object, pose, tuple(history), dict(more or {})),
                           options,
                           on_tokens=tokens.put)
    handle = get_engine(model, tokenizer).submit(request)
    handle.future.add_done_callback(lambda _: tokens.put(None))
    text = _TextPieces(tokenizer)

    def pieces() -> Iterator[str]:
        while (ids := tokens.get()) is not None:
            yield from text.put(ids)
        yield from text.end()

    try:
        yield from pieces()
        handle.result()  # a failed generation raises here
    finally:  # normal end, or the consumer closed the generator: the request has ended (its slot is free) when
        handle.cancel()  # this returns
        concurrent.futures.wait([handle.future])


def _merge(options: GenerationOptions | None, overrides: dict) -> GenerationOptions:
    options = options or GenerationOptions()
    if overrides:
        unknown = set(overrides) - set(GenerationOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation options {sorted(unknown)}")
        options = GenerationOptions(**{**options.__dict__, **overrides})
    return options


def option_logprobs(model, tokenizer, query: Query, options: Sequence[str],
                    gen_options: GenerationOptions | None = None) -> list[float]:
    """Log-likelihood of each option as the assistant's reply (sum over its tokens and the token that closes the
    turn: ``</s>``, or the chat template's end-of-turn token).

    Multiple-choice scoring without generation: the item's options go through the model as one batch that
    shares the prompt and the features.
    """
    return [s.logprob for s in continuation_scores(model, tokenizer, query, options, gen_options, close=True)]


@dataclass(frozen=True)
class ContinuationScore:
    """How likely a continuation is as the assistant's reply: ``logprob`` summed over its ``tokens``, and whether
    greedy decoding would produce exactly it (``greedy``)."""

    logprob: float
    greedy: bool
    tokens: int


@torch.inference_mode()
def continuation_scores(model, tokenizer, query: Query, continuations: Sequence[str],
                        gen_options: GenerationOptions | None = None, close: bool = False) -> list[ContinuationScore]:
    """Score each continuation (leading/trailing whitespace dropped: the template places the reply) as the
    assistant's reply to ``query``, with ``</s>`` after it when ``close``. The continuations go through the model as
    one batch sharing the prompt and the features."""
    gen_options = gen_options or GenerationOptions(max_new_tokens=0)
    batch = prepare_inputs(model, tokenizer, [query], gen_options)
    prompt = batch["input_ids"][0].tolist()
    tokenization = resolve_tokenization(model, gen_options)
    template = resolve_template(model, gen_options)
    answers = [reply_ids(tokenizer, c, template, tokenization, close=close) for c in continuations]
    if any(not a for a in answers):
        raise ValueError("an empty continuation has no likelihood to score")
    longest = len(prompt) + max(map(len, answers))
    k = len(continuations)
    input_ids = torch.full((k, longest), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((k, longest), dtype=torch.long)
    target = torch.zeros((k, longest), dtype=torch.bool)
    for i, a in enumerate(answers):  # right padding: every continuation starts right after the shared prompt
        input_ids[i, :len(prompt) + len(a)] = torch.tensor(prompt + a)
        attention[i, :len(prompt) + len(a)] = 1
        target[i, len(prompt):len(prompt) + len(a)] = True
    feats = {f"{m}_features": (None if batch[f"{m}_features"] is None else batch[f"{m}_features"].repeat(k, 1))
             for m in MODALITIES}
    device = model.get_input_embeddings().weight.device
    if "query_mask" in batch:  # the prompt's question positions, for every continuation (right padded)
        marks = torch.zeros((k, longest), dtype=torch.bool)
        marks[:, :len(prompt)] = batch["query_mask"][0].cpu()
        feats["query_mask"] = marks.to(device)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), **feats).logits
    where = target[:, 1:].to(device)  # position t predicts token t+1; only continuation tokens are scored
    scored = logits[:, :-1][where].float()  # [N_continuation_tokens, V]
    wanted = input_ids[:, 1:].to(device)[where]
    picked = torch.log_softmax(scored, dim=-1).gather(-1, wanted.unsqueeze(-1)).squeeze(-1)
    owner = torch.arange(k, device=device).unsqueeze(1).expand_as(where)[where]
    logprob = torch.zeros(k, device=device).index_add_(0, owner, picked)
    misses = torch.zeros(k, device=device).index_add_(0, owner, (scored.argmax(-1) != wanted).float())
    return [ContinuationScore(float(lp), not bool(m), len(a))
            for lp, m, a in zip(logprob.tolist(), misses.tolist(), answers)]

__all__ = ["ContinuationScore", "EncodedQuery", "GenerationOptions", "Query", "answer", "answer_batch",
           "continuation_scores", "encode_query", "encode_query_parts", "make_request", "option_logprobs",
           "prepare_inputs", "reply_text", "resolve_template", "stream_answer"]

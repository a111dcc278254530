"""Conversation templates and modality spans (docs/design.md#model, docs/design.md#template).

A prompt is rendered as text in which every modality placeholder (``<video>``, ``<object>``, ``<human_pose>``)
has been replaced by its span ``[prefix] <x_start> <x_patch>*N <x_end>``, with N taken from the sample's feature
array, and then tokenized in one call, as the original did. Placeholders of absent modalities are removed.

**Tokenization** (``tokenization="clean"`` or ``"original"``). ``clean`` is the tokenizer's own segmentation.
``original`` reproduces the ids of the original release under its pinned libraries, on which the published weights
were trained: the text is split at added tokens and at ``<s>`` / ``</s>``, and each text piece is encoded by the
sentencepiece model on its own, with the model's dummy ``▁`` prefix. The difference shows after the end of a span
when text follows: ``<vid_end> ASSISTANT:`` becomes ``<vid_end> ▁ ▁A SS IST ANT :`` (a lone ``▁``, id 29871 in
LLaMA) instead of ``<vid_end> ▁A SS IST ANT :``. ``None`` takes the model's ``config.tokenization`` (what its
weights were trained with).
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .constants import IGNORE_INDEX, LLAVA_TOKENS, MODALITIES, added_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Template:
    """A two-separator chat template (vicuna v1.1 style): ``system␠USER: q␠ASSISTANT: a</s>USER: ...``.
    ``system=None``: the text is the original release's and is read from the user's checkout of it."""

    name: str
    system: str | None
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"

    def render(self, turns: Sequence[tuple[str, str | None]], system: str | None = None) -> str:
        """``turns`` = [(user, assistant-or-None), ...]; a final None answer leaves the prompt open for generation."""
        out = (self.system if system is None else system) + self.sep
        for i, (user, assistant) in enumerate(turns):
            out += f"{self.roles[0]}: {user}{self.sep}"
            if assistant is None:
                if i != len(turns) - 1:
                    raise ValueError("only the last turn may lack an answer")
                out += f"{self.roles[1]}:"
            else:
                out += f"{self.roles[1]}: {assistant}{self.sep2}"
        return out


VICUNA_V1_1 = Template(
    "vicuna_v1_1",
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
)
# The system prompt of the original inference scripts (a mismatch with training; kept selectable). Its wording is
# the release's: read from the user's checkout ($ORIGINAL_REPO), never copied here.
LLAVIDAL_V1 = Template("llavidal_v1", None)
TEMPLATES: dict[str, Template] = {t.name: t for t in (VICUNA_V1_1, LLAVIDAL_V1)}
DEFAULT_TEMPLATE = "vicuna_v1_1"
TOKENIZATIONS = ("clean", "original")



def _reserved_re() -> re.Pattern:
    """Token strings user text may not carry: every modality token, the LLaVA tokens, ``<s>`` / ``</s>``
    (built from the registry on each call: ``re`` caches the compiled pattern)."""
    return re.compile("|".join(re.escape(t) for t in (*added_tokens(), *LLAVA_TOKENS, "<s>", "</s>")))


def _placeholder_re() -> re.Pattern:
    return re.compile("|".join(re.escape(m.placeholder) for m in MODALITIES.values()))


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose from {sorted(TEMPLATES)}")
    t = TEMPLATES[name]
    if t.system is None:
        t = replace(t, system=_release_system_prompt(None))
    return t


def template_with_system(name: str, system: str | None = None) -> Template:
    """Template ``name``, with ``system`` as its system text when given (then no release needs to be read)."""
    if system is not None and name in TEMPLATES:
        return replace(TEMPLATES[name], system=system)
    return get_template(name)


@functools.lru_cache(maxsize=4)
def _release_system_prompt(root: str | None) -> str:
    from .eval.original import OriginalRelease, find_original_repo

    return OriginalRelease(find_original_repo(root)).system_prompt


# ----------------------------------------------------------------------------------------------------------------
# tokenization
# ----------------------------------------------------------------------------------------------------------------


def check_tokenization(tokenization: str | None) -> None:
    if tokenization is not None and tokenization not in TOKENIZATIONS:
        raise ValueError(f"tokenization must be one of {', '.join(TOKENIZATIONS)}, got {tokenization!r}")


class OriginalSegmenter:
    """The original release's ids for a text (see the module docstring): pieces between added tokens (and ``<s>``,
    ``</s>``) encoded one by one by the sentencepiece model, each with its dummy prefix."""

    def __init__(self, tokenizer):
        import sentencepiece as spm

        model_file = getattr(tokenizer, "vocab_file", None)
        if not model_file:
            raise ValueError("tokenization='original' needs the sentencepiece tokenizer.model of a LLaMA tokenizer; "
                             f"this {type(tokenizer).__name__} has none")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        specials = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_added_vocab()}
        specials.update({tokenizer.bos_token: tokenizer.bos_token_id, tokenizer.eos_token: tokenizer.eos_token_id})
        self.specials = specials
        self.split = re.compile("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")")

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self.split.split(text):
            if part:
                ids += [self.specials[part]] if part in self.specials else self.sp.encode(part)
        return ids


def encode_text(tokenizer, text: str, tokenization: str | None = "clean") -> list[int]:
    """Ids of ``text`` without bos/eos: the tokenizer's (``clean``) or the original release's (``original``)."""
    check_tokenization(tokenization)
    if tokenization == "original":
        seg = getattr(tokenizer, "_llavidal_original_segmenter", None)
        if seg is None:
            seg = OriginalSegmenter(tokenizer)
            tokenizer._llavidal_original_segmenter = seg  # built once per tokenizer object
        return seg.encode(text)
    return tokenizer(text, add_special_tokens=False).input_ids


def strip_reserved_tokens(text: str) -> tuple[str, int]:
    """Remove literal modality-token strings (``<vid_patch>`` ...) from user text; returns (text, count)."""
    return _reserved_re().subn("", text)


def modality_span(modality: str, n_rows: int, use_start_end: bool = True, use_string_prefix: bool = False) -> str:
    m = MODALITIES[modality]
    span = m.patch_token * n_rows
    if use_start_end:
        span = m.start_token + span + m.end_token
    if use_string_prefix:
        span = m.string_prefix + span
    return span


def expand_placeholders(
    text: str,
    rows: Mapping[str, int | None],
    use_start_end: bool = True,
    use_string_prefix: bool = False,
) -> str:
    """Replace each placeholder by its span; ``rows[modality]`` = number of feature rows, or None/absent to drop
    the placeholder. A present modality must appear exactly once."""
    return expand_turns([(text, None)], rows, use_start_end, use_string_prefix)[0][0]


def expand_turns(
    turns: Sequence[tuple[str, str | None]],
    rows: Mapping[str, int | None],
    use_start_end: bool = True,
    use_string_prefix: bool = False,
) -> list[tuple[str, str | None]]:
    """:func:`expand_placeholders` over the user texts of a conversation: each present modality's placeholder
    must appear exactly once in the whole conversation; placeholders of absent modalities are removed."""
    seen: dict[str, int] = {}

    def repl(match: re.Match) -> str:
        name = next(m.name for m in MODALITIES.values() if m.placeholder == match.group(0))
        seen[name] = seen.get(name, 0) + 1
        n = rows.get(name)
        if not n:
            return ""
        return modality_span(name, n, use_start_end, use_string_prefix)

    out = [(_placeholder_re().sub(repl, user), answer) for user, answer in turns]
    for name, n in rows.items():
        if n and seen.get(name, 0) != 1:
            raise ValueError(
                f"the text holds {seen.get(name, 0)} {MODALITIES[name].placeholder} placeholders for a sample with "
                f"{name} features; expected exactly one"
            )
    return out


def encode_turns(
    tokenizer,
    turns: Sequence[tuple[str, str | None]],
    template: str = DEFAULT_TEMPLATE,
    system: str | None = None,
    tokenization: str | None = "clean",
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation whose placeholders are already expanded.

    Built by construction, segment by segment: ``<s>`` + ``system USER: q ASSISTANT:`` (ignored), then the answer +
    ``</s>`` (the only labelled tokens), then ``USER: q ASSISTANT:`` (ignored), ... A final turn without an answer
    leaves the ids open for generation. Training and inference share this function, so both see the same ids.
    ``tokenization``: ``clean`` or ``original`` (see the module docstring).
    """
    t = template_with_system(template, system)
    ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for i, (user, answer) in enumerate(turns):
        head = (t.system + t.sep if i == 0 else "")
        head += f"{t.roles[0]}: {user}{t.sep}{t.roles[1]}:"
        head_ids = encode_text(tokenizer, head, tokenization)
        ids += head_ids
        labels += [IGNORE_INDEX] * len(head_ids)
        if answer is None:
            if i != len(turns) - 1:
                raise ValueError("only the last turn may lack an answer")
            break
        answer_ids = encode_text(tokenizer, answer.strip() + t.sep2, tokenization)
        ids += answer_ids
        labels += answer_ids
    return ids, labels


def user_message(question: str, modalities: Sequence[str]) -> str:
    """The user turn of an inference prompt: the question, then a newline and the placeholders of the given
    modalities in canonical order, unless the question already places them itself."""
    question, n = strip_reserved_tokens(question)
    if n:
        logger.warning("removed %d literal modality-token strings from the question", n)
    missing = [MODALITIES[m].placeholder for m in MODALITIES if m in modalities
               and MODALITIES[m].placeholder not in question]
    return question + ("\n" + "".join(missing) if missing else "")


def inference_turns(
    question: str,
    rows: Mapping[str, int | None],
    history: Sequence[tuple[str, str]] = (),
    use_start_end: bool = True,
    use_string_prefix: bool = False,
) -> list[tuple[str, str | None]]:
    """The turns of a generation prompt for ``question`` after ``history``; modality spans go into the first user
    turn (where the features were introduced), as in training."""
    present = [m for m in MODALITIES if rows.get(m)]
    turns: list[tuple[str, str | None]] = []
    for i, (q, a) in enumerate(list(history) + [(question, None)]):
        turns.append((user_message(q, present) if i == 0 else strip_reserved_tokens(q)[0], a))
    return expand_turns(turns, rows, use_start_end, use_string_prefix)


def build_prompt(
    question: str,
    rows: Mapping[str, int | None],
    history: Sequence[tuple[str, str]] = (),
    template: str = DEFAULT_TEMPLATE,
    system: str | None = None,
    use_start_end: bool = True,
    use_string_prefix: bool = False,
) -> str:
    """The generation prompt as text (for display and logging; :func:`encode_turns` makes the ids)."""
    turns = inference_turns(question, rows, history, use_start_end, use_string_prefix)
    return template_with_system(template, system).render(turns)


__all__ = ["DEFAULT_TEMPLATE", "TEMPLATES", "TOKENIZATIONS", "Template", "build_prompt", "encode_text", "encode_turns",
           "expand_placeholders", "expand_turns", "get_template", "inference_turns", "modality_span",
           "strip_reserved_tokens", "template_with_system", "user_message"]

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

**Other backbones** (docs/design.md#backbones) use their tokenizer's own chat template (template name ``chat``):
the conversation is rendered by ``apply_chat_template`` and cut into segments at the points where the rendering
of a shorter conversation ends, so labels still come by construction: each assistant reply and the token that
closes its turn. :func:`model_template` is the template a model was built for.
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
CHAT = "chat"  # the tokenizer's own chat template (jinja, apply_chat_template): other backbones
TEMPLATE_NAMES = (*TEMPLATES, CHAT)
TEMPLATE_HELP = ("conversation template: vicuna_v1_1, llavidal_v1 (the original inference prompt) or chat (the "
                 "tokenizer's chat template); default: the model's own (vicuna_v1_1 for LLaMA-Lightening, chat for "
                 "other backbones)")
TOKENIZATIONS = ("clean", "original")


def model_template(config) -> str:
    """The conversation template a model was built for: its config's ``template`` (recorded for other backbones),
    else vicuna_v1_1 (LLaVA-Lightening, the published model)."""
    return getattr(config, "template", None) or DEFAULT_TEMPLATE


def check_template(name: str) -> None:
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown conversation template {name!r}; choose from {', '.join(TEMPLATE_NAMES)}")



def _reserved_re() -> re.Pattern:
    """Token strings user text may not carry: every modality token, the LLaVA tokens, ``<s>`` / ``</s>``
    (built from the registry on each call: ``re`` caches the compiled pattern)."""
    return re.compile("|".join(re.escape(t) for t in (*added_tokens(), *LLAVA_TOKENS, "<s>", "</s>")))


def _placeholder_re() -> re.Pattern:
    return re.compile("|".join(re.escape(m.placeholder) for m in MODALITIES.values()))


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        hint = " (the chat template is the tokenizer's: encode_turns renders it)" if name == CHAT else ""
        raise ValueError(f"unknown conversation template {name!r}; choose from {sorted(TEMPLATES)}{hint}")
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
                             f"this {type(tokenizer).__name__} has none (a model folder saved before llavidal kept "
                             "it: copy tokenizer.model from its base folder into it)")
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
    query_positions: list[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation whose placeholders are already expanded.

    Built by construction, segment by segment: ``<s>`` + ``system USER: q ASSISTANT:`` (ignored), then the answer +
    ``</s>`` (the only labelled tokens), then ``USER: q ASSISTANT:`` (ignored), ... A final turn without an answer
    leaves the ids open for generation. Training and inference share this function, so both see the same ids.
    ``tokenization``: ``clean`` or ``original`` (see the module docstring). ``template="chat"``: the tokenizer's
    chat template (:func:`encode_chat_turns`). ``</s>`` stands for the tokenizer's eos token, and a tokenizer
    without a bos token gets none. ``query_positions``: a list that receives the positions of the question's tokens
    (:func:`question_positions`; the two-token video representation computes its context tokens from them).
    """
    if template == CHAT:
        return encode_chat_turns(tokenizer, turns, system, tokenization, query_positions)
    t = template_with_system(template, system)
    bos = tokenizer.bos_token_id
    ids, labels = ([bos], [IGNORE_INDEX]) if bos is not None else ([], [])
    for i, (user, answer) in enumerate(turns):
        head = (t.system + t.sep if i == 0 else "")
        head += f"{t.roles[0]}: "
        user_at = len(head)
        head += f"{user}{t.sep}{t.roles[1]}:"
        head_ids = encode_text(tokenizer, head, tokenization)
        if query_positions is not None:
            query_positions += question_positions(tokenizer, head, head_ids, user_at, user, len(ids), tokenization)
        ids += head_ids
        labels += [IGNORE_INDEX] * len(head_ids)
        if answer is None:
            if i != len(turns) - 1:
                raise ValueError("only the last turn may lack an answer")
            break
        answer_ids = reply_ids(tokenizer, answer, template, tokenization)
        ids += answer_ids
        labels += answer_ids
    return ids, labels


def reply_ids(tokenizer, answer: str, template: str = DEFAULT_TEMPLATE, tokenization: str | None = "clean",
              close: bool = True) -> list[int]:
    """The labelled ids of one assistant reply: its text and, when ``close``, the token that closes the turn
    (``</s>``; the chat template's end-of-turn token for ``template="chat"``). What :func:`encode_turns` labels, and
    what log-likelihood scoring of an option sums over."""
    if template == CHAT:
        reply = strip_chat_tokens(tokenizer, answer.strip())[0]
        return encode_text(tokenizer, reply, tokenization) + ([chat_end_of_turn(tokenizer)[1]] if close else [])
    t = TEMPLATES.get(template, VICUNA_V1_1)
    sep2 = tokenizer.eos_token if t.sep2 == "</s>" else t.sep2
    return encode_text(tokenizer, answer.strip() + (sep2 if close else ""), tokenization)


# ----------------------------------------------------------------------------------------------------------------
# the tokenizer's chat template (other backbones)
# ----------------------------------------------------------------------------------------------------------------

_PROBE_REPLY = "llavidal probe reply"


def render_chat(tokenizer, messages: list[dict], generation: bool) -> str:
    """``messages`` rendered by the tokenizer's chat template, as text; errors name the template's problem."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template 'chat' needs a tokenizer with a chat template; this {type(tokenizer).__name__} "
                         "has none: pass --template vicuna_v1_1 (or give the base folder a chat template)")
    try:
        import jinja2  # noqa: F401  (transformers renders chat templates with it)
    except ImportError:
        raise ValueError("template 'chat' needs jinja2 (pip install 'jinja2>=3.1.6')") from None
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as e:  # noqa: BLE001 - jinja2 errors (a template's raise_exception, an unsupported role ...)
        raise ValueError(f"the tokenizer's chat template cannot render this conversation: {type(e).__name__}: {e}"
                         ) from None


def chat_end_of_turn(tokenizer) -> tuple[str, int]:
    """The token that closes an assistant turn in the tokenizer's chat template (``<|im_end|>``, ``<|eot_id|>``
    ...) and its id: the first token after the reply in a rendered conversation. It must be a special token."""
    found = getattr(tokenizer, "_llavidal_end_of_turn", None)
    if found is not None:
        return found
    text = render_chat(tokenizer, [{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": _PROBE_REPLY}], generation=False)
    after = text[text.rindex(_PROBE_REPLY) + len(_PROBE_REPLY):]
    ids = tokenizer(after, add_special_tokens=False).input_ids
    token = tokenizer.convert_ids_to_tokens(ids[0]) if ids else None
    if token is None or token not in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()):
        raise ValueError(f"the tokenizer's chat template closes an assistant turn with {after[:40]!r}, which does not "
                         "start with a special token; llavidal needs one to stop generation and to label replies")
    tokenizer._llavidal_end_of_turn = (token, int(ids[0]))  # found once per tokenizer object
    return tokenizer._llavidal_end_of_turn


def strip_chat_tokens(tokenizer, text: str) -> tuple[str, int]:
    """Remove the literal strings of the tokenizer's special tokens (``<|im_start|>``, ``<|eot_id|>`` ...) from a
    message, so that text can never open or close a turn; modality tokens (the spans) stay. Returns (text, count)."""
    pattern = getattr(tokenizer, "_llavidal_chat_reserved", None)
    if pattern is None:
        names = (set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())) - set(added_tokens())
        names = sorted((n for n in names if n), key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(n) for n in names)) if names else re.compile(r"(?!)")
        tokenizer._llavidal_chat_reserved = pattern  # built once per tokenizer object
    return pattern.subn("", text)


def _after(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise ValueError("the tokenizer's chat template renders a conversation differently from the same conversation "
                         "with more turns (it rewrites earlier turns), so labels cannot be built segment by segment; "
                         "pass --template vicuna_v1_1")
    return text[len(prefix):]


def encode_chat_turns(
    tokenizer,
    turns: Sequence[tuple[str, str | None]],
    system: str | None = None,
    tokenization: str | None = "clean",
    query_positions: list[int] | None = None,
) -> tuple[list[int], list[int]]:
    """:func:`encode_turns` through the tokenizer's chat template.

    The conversation grows one message at a time; each rendering must extend the previous one, and the new text is
    one segment: the prompt up to the generation header of each user turn (ignored), then the assistant message:
    what the template puts before the reply (ignored), the reply and the end-of-turn token (labelled), what follows
    that token (a newline in ChatML; ignored). ``system=None`` leaves the system message to the template.
    """
    check_tokenization(tokenization)
    if tokenization == "original":
        raise ValueError("tokenization 'original' reproduces the ids of the LLaMA release; the chat template of other "
                         "backbones is encoded with tokenization 'clean'")
    _, end = chat_end_of_turn(tokenizer)
    messages = [] if system is None else [{"role": "system", "content": system}]
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    removed = 0
    for i, (user, answer) in enumerate(turns):
        user, n = strip_chat_tokens(tokenizer, user)
        removed += n
        messages.append({"role": "user", "content": user})
        text = render_chat(tokenizer, messages, generation=True)
        segment = _after(text, rendered)
        head = encode_text(tokenizer, segment)
        if query_positions is not None:
            at = segment.rfind(user) if user else -1
            if user and at < 0:
                raise ValueError("the tokenizer's chat template changes the text of a user message, so the question's "
                                 "tokens cannot be located (the two-token video representation needs them)")
            query_positions += question_positions(tokenizer, segment, head, at, user, len(ids), tokenization)
        ids += head
        labels += [IGNORE_INDEX] * len(head)
        rendered = text
        if answer is None:
            if i != len(turns) - 1:
                raise ValueError("only the last turn may lack an answer")
            break
        reply, n = strip_chat_tokens(tokenizer, answer.strip())
        removed += n
        messages.append({"role": "assistant", "content": reply})
        text = render_chat(tokenizer, messages, generation=False)
        segment = _after(text, rendered)
        at = segment.find(reply)
        if at < 0:
            raise ValueError("the tokenizer's chat template changes the text of an assistant reply; labels cannot be "
                             "built by construction: pass --template vicuna_v1_1")
        before = encode_text(tokenizer, segment[:at])
        answer_ids = encode_text(tokenizer, reply)
        tail = encode_text(tokenizer, segment[at + len(reply):])
        if not tail or tail[0] != end:
            raise ValueError(f"the chat template does not close this assistant reply with its end-of-turn token "
                             f"{tokenizer.convert_ids_to_tokens(end)!r}")
        ids += before + answer_ids + tail
        labels += [IGNORE_INDEX] * len(before) + answer_ids + [end] + [IGNORE_INDEX] * (len(tail) - 1)
        rendered = text
    if removed:
        logger.warning("removed %d literal special-token strings (chat template markers) from the conversation", removed)
    return ids, labels


def _span_re() -> re.Pattern:
    """A modality span in expanded text (optional string prefix, start token, patch tokens, end token)."""
    parts = [f"(?:{re.escape(m.string_prefix)})?(?:{re.escape(m.start_token)})?(?:{re.escape(m.patch_token)})+"
             f"(?:{re.escape(m.end_token)})?" for m in MODALITIES.values()]
    return re.compile("|".join(parts))


def question_ranges(user: str) -> list[tuple[int, int]]:
    """Character ranges of the question in a user message whose placeholders are expanded: the message without
    its modality spans, each remaining piece stripped of surrounding whitespace."""
    out, start = [], 0
    for match in [*_span_re().finditer(user), None]:
        end = match.start() if match is not None else len(user)
        piece = user[start:end]
        lead = len(piece) - len(piece.lstrip())
        if piece.strip():
            out.append((start + lead, start + lead + len(piece.strip())))
        if match is not None:
            start = match.end()
    return out


def question_positions(tokenizer, text: str, text_ids: list[int], user_at: int, user: str, offset: int,
                       tokenization: str | None = "clean") -> list[int]:
    """Positions (``offset`` + index in ``text_ids``) of the tokens of ``text`` that hold the question: the user
    message starting at character ``user_at`` of ``text``, without its modality spans (:func:`question_ranges`).

    Found from the tokenizer's character offsets of the very ids the prompt uses (a token that straddles the
    question's edge counts), so no text is tokenized a second time in another way. The two-token video
    representation needs this: ``tokenization='original'`` (the release's ids, for its LLaMA weights) is refused.
    """
    if tokenization == "original":
        raise ValueError("the two-token video representation locates the question through the tokenizer's offsets; "
                         "tokenization 'original' (the release's ids) has none: use tokenization 'clean'")
    ranges = [(user_at + a, user_at + b) for a, b in question_ranges(user)]
    if not ranges:
        return []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise ValueError(f"the two-token video representation needs a tokenizer with character offsets (a fast "
                         f"tokenizer); {type(tokenizer).__name__}: {e}") from None
    if list(enc.input_ids) != list(text_ids):
        raise ValueError("the tokenizer's ids with offsets differ from the prompt's ids; the question's tokens cannot "
                         "be located for the two-token video representation")
    special = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids(t) for t in added_tokens()}
    return [offset + i for i, ((a, b), tid) in enumerate(zip(enc.offset_mapping, text_ids))
            if tid not in special and b > a and any(a < hi and b > lo for lo, hi in ranges)]


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


__all__ = ["CHAT", "DEFAULT_TEMPLATE", "TEMPLATES", "TEMPLATE_HELP", "TEMPLATE_NAMES", "TOKENIZATIONS", "Template", "build_prompt",
           "chat_end_of_turn", "check_template", "encode_chat_turns", "encode_text", "encode_turns",
           "expand_placeholders", "expand_turns", "get_template", "inference_turns", "modality_span", "model_template",
           "question_positions", "question_ranges",
           "render_chat", "reply_ids", "strip_chat_tokens", "strip_reserved_tokens", "template_with_system", "user_message"]

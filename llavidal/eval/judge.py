"""The LLM judge of the description and MCQ benchmarks: requests, reply parsing, and the judge itself.

The judge is a thin layer over :class:`llavidal.llm.LLMClient`, the one client for OpenAI-compatible endpoints
(OpenAI, Ollama's ``/v1``, vLLM, llama.cpp server, a loopback stub). What it adds:

* **Requests with a kind** (:class:`JudgeRequest`, built by :class:`~llavidal.eval.prompts.JudgePromptSet`):
  ``score`` (an integer 0-5), ``mcq`` (one of the item's option letters, or ``Z`` for none) or ``text`` (the TSU
  clip summary). The reply is parsed and validated for that kind; an unparsable reply is asked again
  (``max_parse_failures`` times), then recorded as a failure — never as a zero.
* **Deterministic by default**: temperature 0 and a fixed seed (the release judged at 0.7 unseeded, and scores
  moved by points between runs; docs/design.md#differences).
* **A reply cache** (SQLite, shared by processes): keyed by the judge identity (base URL, model, temperature,
  seed, extra body), the prompt set (name + version), the prompt key, the reply budget and the exact messages.
  Only replies that parsed are cached, so a re-run asks again exactly for the calls that failed.
* :meth:`Judge.judge_many`: cache hits first, then at most ``concurrency`` requests in flight, a progress bar,
  results in request order.

Retries (the ``openai`` client's own: timeouts, connection errors, 408/409/429/5xx, honouring ``Retry-After``),
per-request timeouts and the circuit breaker are the client's; see :mod:`llavidal.llm.client`.

Typical use::

    from llavidal.eval.judge import Judge, JudgeConfig
    from llavidal.eval.prompts import default_prompt_set

    prompts = default_prompt_set()
    with Judge(JudgeConfig.ollama("llama3.1"), cache="judge_cache.sqlite") as judge:
        results = judge.judge_many([prompts.score_request("correctness", q, a, p, id=i) for ...], concurrency=16)
    print(judge.stats)
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from ..llm import LLMClient, LLMConfig, LLMConfigError, ReplyCache, ReplyError
from ..llm.cache import reply_cache_key
from ..llm.config import DUMMY_API_KEY
from ..llm.parsing import literal_dicts, short, strip_fences, strip_think

__all__ = [
    "DUMMY_API_KEY", "KIND_MCQ", "KIND_SCORE", "KIND_TEXT", "KIND_VERDICT", "Judge", "JudgeCache", "JudgeConfig", "JudgeConfigError",
    "JudgeRequest", "JudgeResult", "ReplyParseError", "cache_key", "parse_letter", "parse_reply", "parse_score",
    "parse_verdict",
]

KIND_SCORE = "score"  # integer 0..5
KIND_MCQ = "mcq"  # one option letter, or "Z" for none
KIND_TEXT = "text"  # free text (TSU clip summary)
KIND_VERDICT = "verdict"  # {"match": yes/no, "score": 0..5} (zero-shot open-ended QA)
KINDS = (KIND_SCORE, KIND_MCQ, KIND_TEXT, KIND_VERDICT)

SCORE_MIN, SCORE_MAX = 0, 5
NONE_LETTER = "Z"

JudgeConfigError = LLMConfigError
JudgeCache = ReplyCache


class ReplyParseError(ReplyError):
    """A judge reply could not be turned into a valid value."""


@dataclass(frozen=True)
class JudgeConfig(LLMConfig):
    """:class:`~llavidal.llm.LLMConfig` with the judge's names: ``$LLAVIDAL_JUDGE_BASE_URL`` / ``_MODEL`` /
    ``_API_KEY`` (then ``$OPENAI_*``) and ``--judge-*`` flags. ``max_tokens`` (256) is a floor: a prompt may ask for
    more (the TSU summary asks for 700), never for less."""

    role: str = field(default="judge", compare=False)
    env: str = field(default="LLAVIDAL_JUDGE", compare=False)
    flag_prefix: str = field(default="--judge-", compare=False)


# ----------------------------------------------------------------------------------------------------------------
# requests and results
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeRequest:
    """One judge call. Build these with :class:`llavidal.eval.prompts.JudgePromptSet` rather than by hand.

    ``messages``: the chat messages (``{"role", "content"}`` dicts) sent verbatim. ``kind``: ``"score"``,
    ``"mcq"`` or ``"text"`` (how the reply is parsed). ``prompt_set``: ``"name@version"`` of the prompts used
    (cache key and record). ``prompt_key``: which prompt (``"correctness"``, ``"mcq"``...). ``id``: the caller's
    label, returned on the result. ``choices``: allowed letters for ``mcq`` (``Z`` is always allowed).
    ``max_tokens``: the budget this prompt needs at least (the judge's ``max_tokens`` applies when larger).
    """

    messages: tuple[Mapping[str, str], ...]
    kind: str = KIND_SCORE
    prompt_set: str = "custom"
    prompt_key: str = ""
    id: str | None = None
    choices: tuple[str, ...] | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in self.messages)
        if not msgs:
            raise ValueError("a judge request needs at least one message")
        object.__setattr__(self, "messages", msgs)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(str(c).upper() for c in self.choices))

    @property
    def namespace(self) -> dict[str, str]:
        """What identifies this kind of call in the reply cache, besides the judge and the messages."""
        return {"prompt_set": self.prompt_set, "prompt_key": self.prompt_key, "kind": self.kind}


@dataclass
class JudgeResult:
    """Outcome of one judge call.

    ``ok``: a valid value was obtained. ``value``: int score (0..5), option letter, or text; ``None`` when not ok.
    ``error``: why it failed (``None`` when ok). ``reply``: the last raw reply text (also on parse failures).
    ``attempts``: HTTP requests made (0 for a cache hit). ``cached``: served from the cache.
    """

    id: str | None
    prompt_key: str
    kind: str
    ok: bool
    value: int | str | None = None
    error: str | None = None
    reply: str | None = None
    attempts: int = 0
    cached: bool = False
    latency_s: float = 0.0
    served_model: str | None = None
    usage: dict[str, int] | None = None

    @property
    def failed(self) -> bool:
        return not self.ok

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# reply parsing
# ----------------------------------------------------------------------------------------------------------------

_SCORE_LABEL = re.compile(r"""(?i)\bscore\b["']?\s*(?:[:=]|is|of)\s*["']?\s*(-?\d+(?:\.\d+)?)""")
_OUT_OF_FIVE = re.compile(r"(?i)(?<![\d.])(-?\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*5(?!\d|\.\d)")
_BARE_NUMBER = re.compile(r"^\W*?(-?\d+(?:\.\d+)?)\W*$")


def _score_value(v: Any) -> int:
    if isinstance(v, bool):
        raise ReplyParseError(f"score is a boolean ({v!r})")
    if isinstance(v, str):
        s = v.strip()
        try:
            v = float(s)
        except ValueError:
            raise ReplyParseError(f"score is not a number ({v!r})") from None
    if isinstance(v, float):
        if math.isnan(v) or not v.is_integer():
            raise ReplyParseError(f"score {v!r} is not an integer")
        v = int(v)
    if not isinstance(v, int):
        raise ReplyParseError(f"score has type {type(v).__name__}")
    if not SCORE_MIN <= v <= SCORE_MAX:
        raise ReplyParseError(f"score {v} outside {SCORE_MIN}..{SCORE_MAX}")
    return v


def _one(values: list, what: str) -> Any:
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        raise ReplyParseError(f"ambiguous reply: several {what} ({', '.join(map(str, distinct))})")
    return distinct[0]


def parse_score(text: str | None) -> int:
    """An integer 0..5 from a judge reply, or :class:`ReplyParseError`.

    Accepted shapes, in order: a dict literal / JSON object with a ``score`` key anywhere in the reply (code fences
    and prose around it are ignored), ``Score: N`` / ``score = N`` / ``score is N``, ``N/5`` / ``N out of 5``, a
    reply that is just a number. Several different scores are ambiguous (error); floats must be integral
    (``4.0`` -> 4, ``4.5`` -> error); values outside 0..5 are errors. Never returns a default.
    """
    if text is None or not str(text).strip():
        raise ReplyParseError("empty reply")
    body = strip_fences(str(text))
    found = [v for d in literal_dicts(body) for k, v in d.items() if str(k).strip().lower() == "score"]
    if found:
        return _score_value(_one([_score_value(v) for v in found], "scores"))
    for pattern in (_SCORE_LABEL, _OUT_OF_FIVE):
        hits = pattern.findall(body)
        if hits:
            return _one([_score_value(h) for h in hits], "scores")
    m = _BARE_NUMBER.match(body)
    if m:
        return _score_value(m.group(1))
    raise ReplyParseError(f"no score found in reply {short(text)!r}")


_LETTER_KEYS = ("answer", "letter", "choice", "option", "best_answer")
# "the best answer is (B)", "Answer: B", "option B." - the letter must stand alone (followed by the end,
# punctuation or a line break) so that "The answer is A person ..." is not read as option A.
_ANSWER_LETTER = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is)?\s*[:\-]?\s*(?:\(\s*([A-Za-z])\s*\)|([A-Z])(?=\s*(?:$|[\).:,;\-\n])))")
_PAREN_LETTER = re.compile(r"\(\s*([A-Za-z])\s*\)")
_ONLY_LETTER = re.compile(r"^[\W_]*(?:(?i:option|choice|answer)\s*)?([A-Za-z])[\W_]*$")
_LEADING_LETTER = re.compile(r"^\W*([A-Z])[\).:]\s")


def parse_letter(text: str | None, choices: Iterable[str] = "ABCDEF") -> str:
    """The option letter a reply names (upper case), ``"Z"`` for none, or :class:`ReplyParseError`.

    Looked for, in order: ``answer/option/choice [is] [:] (X)`` or ``... X`` with X standing alone; a JSON/dict
    ``{"answer": "X"}``; ``(X)`` anywhere (all occurrences must agree); a reply that is only a letter; a reply that
    starts with ``X)`` / ``X.`` / ``X:``. Unlike the original parser a capital letter inside ordinary words or an
    article ("A person ...") is never taken for an answer, and letters beyond E (F for six-option LEMMA) work.
    The letter must be one of ``choices`` or ``Z``.
    """
    allowed = {c.upper() for c in choices} | {NONE_LETTER}
    if text is None or not str(text).strip():
        raise ReplyParseError("empty reply")
    body = strip_fences(str(text))

    def check(letter: str) -> str:
        letter = letter.upper()
        if letter not in allowed:
            raise ReplyParseError(f"letter {letter} is not an option ({''.join(sorted(allowed))})")
        return letter

    hits = [a or b for a, b in _ANSWER_LETTER.findall(body)]
    if hits:
        return check(_one([h.upper() for h in hits], "letters"))
    found = [str(v).strip() for d in literal_dicts(body) for k, v in d.items()
             if str(k).strip().lower() in _LETTER_KEYS]
    if found:
        letters = []
        for v in found:
            m = _ONLY_LETTER.match(v) or _PAREN_LETTER.search(v)
            if not m:
                raise ReplyParseError(f"answer field {v!r} is not a letter")
            letters.append(m.group(1).upper())
        return check(_one(letters, "letters"))
    hits = _PAREN_LETTER.findall(body)
    if hits:
        return check(_one([h.upper() for h in hits], "letters"))
    for pattern in (_ONLY_LETTER, _LEADING_LETTER):
        m = pattern.match(body)
        if m:
            return check(m.group(1))
    raise ReplyParseError(f"no option letter found in reply {short(text)!r}")


_VERDICT_KEYS = ("correct", "pred", "match", "verdict")
_YES_NO = re.compile(r"(?i)\b(yes|no)\b")


def _yes_no(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().strip(".'\"").lower()
    if word in ("yes", "true", "correct"):
        return True
    if word in ("no", "false", "incorrect", "wrong"):
        return False
    raise ReplyParseError(f"verdict {value!r} is neither yes nor no")


def parse_verdict(text: str | None) -> dict[str, Any]:
    """``{"match": bool, "score": int}`` from a zero-shot QA judge reply, or :class:`ReplyParseError`.

    Looked for: a dict literal / JSON object with a verdict key (``correct``, ``pred``, ``match`` or ``verdict``:
    yes/no) and a ``score`` (0..5); failing that, exactly one distinct yes/no word in the reply plus a score that
    :func:`parse_score` accepts. Never returns a default.
    """
    if text is None or not str(text).strip():
        raise ReplyParseError("empty reply")
    body = strip_fences(str(text))
    for d in literal_dicts(body):
        keys = {str(k).strip().lower(): v for k, v in d.items()}
        verdict = [keys[k] for k in _VERDICT_KEYS if k in keys]
        if verdict and "score" in keys:
            return {"match": _one([_yes_no(v) for v in verdict], "verdicts"), "score": _score_value(keys["score"])}
    words = _YES_NO.findall(body)
    if not words:
        raise ReplyParseError(f"no yes/no verdict found in reply {short(text)!r}")
    return {"match": _one([w.lower() == "yes" for w in words], "verdicts"), "score": parse_score(body)}


def parse_reply(kind: str, text: str | None, choices: Iterable[str] | None = None) -> int | str:
    """Parse ``text`` as ``kind`` (``score`` -> int, ``mcq`` -> letter, ``text`` -> stripped non-empty text)."""
    if kind == KIND_SCORE:
        return parse_score(text)
    if kind == KIND_MCQ:
        return parse_letter(text, choices if choices is not None else "ABCDEF")
    if kind == KIND_VERDICT:
        return parse_verdict(text)
    if kind == KIND_TEXT:
        if text is None or not str(text).strip():
            raise ReplyParseError("empty reply")
        body = strip_think(str(text)).strip()
        if body.startswith("```"):
            body = strip_fences(body)
        if not body:
            raise ReplyParseError("empty reply")
        return body
    raise ValueError(f"unknown kind {kind!r}")


# ----------------------------------------------------------------------------------------------------------------
# the judge
# ----------------------------------------------------------------------------------------------------------------


def cache_key(identity: Mapping[str, Any], request: JudgeRequest, max_tokens: int) -> str:
    """The reply-cache key of ``request`` for a judge of ``identity`` with this reply budget."""
    return reply_cache_key(identity, request.namespace, request.messages, max_tokens)


class Judge:
    """A configured judge with an optional reply cache. Thread-safe.

    ``cache``: a path (SQLite file, created if needed), a :class:`JudgeCache`, or ``None``. ``client``: an
    ``openai.OpenAI``-like object to use instead of building one.
    """

    def __init__(self, config: LLMConfig | None = None, cache: str | ReplyCache | None = None, *,
                 client: Any = None):
        self.config = config or JudgeConfig()
        self.llm = LLMClient(self.config, cache=cache, client=client)
        self.identity = self.llm.identity
        self.stats = self.llm.stats
        self.cache = self.llm.cache

    @property
    def _client(self) -> Any:
        return self.llm._client

    def describe(self) -> dict[str, Any]:
        """The judge record stored beside reported scores (identity, asking rules, cache; never the key)."""
        return self.llm.describe()

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call_args(self, request: JudgeRequest) -> dict[str, Any]:
        return dict(parse=partial(parse_reply, request.kind, choices=request.choices),
                    max_tokens=max(self.config.max_tokens, request.max_tokens or 0), cache_ns=request.namespace)

    @staticmethod
    def _result(request: JudgeRequest, r) -> JudgeResult:
        return JudgeResult(id=request.id, prompt_key=request.prompt_key, kind=request.kind, ok=r.ok, value=r.value,
                           error=r.error, reply=r.reply, attempts=r.attempts, cached=r.cached, latency_s=r.latency_s,
                           served_model=r.served_model, usage=r.usage)

    def judge(self, request: JudgeRequest) -> JudgeResult:
        """One judge call (cache -> server with retries -> parse). Never raises for server or reply problems:
        those come back as a failure record."""
        return self._result(request, self.llm.call(request.messages, **self._call_args(request)))

    def judge_many(self, requests: Sequence[JudgeRequest], concurrency: int = 16, *, progress: bool = True,
                   desc: str = "judge") -> list[JudgeResult]:
        """Run ``requests`` with at most ``concurrency`` in flight; results in request order (cache hits first, a
        progress bar; see :meth:`llavidal.llm.LLMClient.call_many`)."""
        requests = list(requests)
        calls = [{"messages": r.messages, **self._call_args(r)} for r in requests]
        results = self.llm.call_many(calls, concurrency, progress=progress, desc=desc)
        return [self._result(req, r) for req, r in zip(requests, results)]

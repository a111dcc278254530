"""LLM judge client for the description and MCQ benchmarks.

One client for any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama's ``/v1``, vLLM, llama.cpp
server, a loopback stub), driven through the ``openai`` package (``pip install 'llavidal[eval]'``).

What it guarantees, in contrast to the original scripts (docs/design.md#differences):

* **Deterministic by default**: temperature 0 and a fixed seed (sent to servers that honour it).
* **Bounded retries**: timeouts, connection errors, 408/409/429 and 5xx are retried with exponential backoff and
  jitter, honouring ``Retry-After`` / ``retry-after-ms``; at most ``max_attempts`` requests per judge call.
  Other HTTP errors (400, 401, 404, ...) are not retried.
* **Robust, validated parsing**: a score must be an integer 0-5 (``{'score': 3}``, JSON, ``Score: 3``, code fences,
  surrounding prose are all accepted); an MCQ letter must be one of the item's option letters or ``Z`` (none). An
  unparsable reply is asked again (up to ``max_parse_failures`` times).
* **Failures are records, never zeros**: a call that still fails comes back as a :class:`JudgeResult` with
  ``ok=False`` and ``error`` saying why; :class:`JudgeStats` counts them, and
  :func:`llavidal.eval.metrics.aggregate_scores` excludes them from means and reports their number.
* **SQLite cache** (WAL mode, thread-safe, several processes may share the file): keyed by the judge identity
  (base URL, model, temperature, seed, max tokens, extra body), the prompt set (name + version) and the exact
  request messages. A hit never contacts the server. **Only successfully parsed replies are cached**, so a re-run
  asks again for exactly the calls that failed. The raw reply text is stored and parsed again on every hit.
* **Bounded concurrency**: :meth:`Judge.judge_many` runs up to ``concurrency`` requests at a time on a thread pool
  and shows a tqdm progress bar; results come back in request order.

Typical use::

    from llavidal.eval.judge import Judge, JudgeConfig
    from llavidal.eval.prompts import default_prompt_set

    prompts = default_prompt_set()
    cfg = JudgeConfig.ollama("llama3.1")            # or JudgeConfig(base_url=..., model=..., api_key=...)
    with Judge(cfg, cache="judge_cache.sqlite") as judge:
        reqs = [prompts.score_request("correctness", q, a, p, id=f"{i}/correctness") for i, (q, a, p) in ...]
        results = judge.judge_many(reqs, concurrency=16)
    print(judge.stats)
"""
from __future__ import annotations

import ast
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_SCHEMA_VERSION", "DEFAULT_OPENAI_BASE_URL", "KIND_MCQ", "KIND_SCORE", "KIND_TEXT", "Judge", "JudgeCache",
    "JudgeConfig", "JudgeConfigError", "JudgeRequest", "JudgeResult", "JudgeStats", "ReplyParseError",
    "parse_letter", "parse_reply", "parse_score",
]

KIND_SCORE = "score"  # integer 0..5
KIND_MCQ = "mcq"  # one option letter, or "Z" for none
KIND_TEXT = "text"  # free text (TSU clip summary)
KINDS = (KIND_SCORE, KIND_MCQ, KIND_TEXT)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DUMMY_API_KEY = "sk-no-key-required"  # local servers ignore the key, the openai client insists on one
CACHE_SCHEMA_VERSION = 1

SCORE_MIN, SCORE_MAX = 0, 5
NONE_LETTER = "Z"
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every status >= 500


class JudgeConfigError(ValueError):
    """The judge cannot be configured (no model, no API key for a hosted endpoint, openai missing...)."""


class ReplyParseError(ValueError):
    """A judge reply could not be turned into a valid value."""


class _BadResponse(Exception):
    """The server answered 200 with something that is not a usable chat completion."""


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def _normalize_url(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives and how it is asked.

    ``base_url``
        OpenAI-compatible root, e.g. ``https://api.openai.com/v1``, ``http://localhost:11434/v1`` (Ollama),
        ``http://host:8000/v1`` (vLLM). ``None``: ``$LLAVIDAL_JUDGE_BASE_URL``, then ``$OPENAI_BASE_URL``, then
        the OpenAI URL.
    ``model``
        Model name as the server knows it. ``None``: ``$LLAVIDAL_JUDGE_MODEL``; an error if still unset.
    ``api_key``
        ``None``: ``$LLAVIDAL_JUDGE_API_KEY``, then ``$OPENAI_API_KEY``; if still unset, a dummy key for any
        non-OpenAI URL (local servers), an error for the OpenAI URL. Never part of the cache key or ``repr``.
    ``temperature`` / ``seed``
        0 and 0 by default (the release judged at 0.7 unseeded; scores moved by points between runs). ``seed=None``
        leaves the field out of the request for servers that reject it.
    ``max_tokens``
        Reply budget of every call; a prompt may ask for more (the TSU summary asks for 700), never for less.
        Raise it for judges that reason aloud before answering.
    ``timeout``
        Seconds per HTTP request (connect + read).
    ``max_attempts``
        Requests per judge call at most, whatever the reason for repeating (transport error or bad reply).
    ``max_parse_failures``
        Give up after this many unparsable / invalid replies for one call.
    ``backoff_base`` / ``backoff_max``
        Exponential backoff ``min(max, base * 2**(k-1))`` scaled by a random factor in [0.5, 1] (jitter).
    ``max_retry_after``
        Upper bound on a server's ``Retry-After`` that is honoured (seconds).
    ``extra_body``
        Extra JSON fields for the request body (e.g. Ollama ``{"options": {"num_ctx": 8192}}``); part of the cache
        key.
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 256
    timeout: float = 120.0
    max_attempts: int = 6
    max_parse_failures: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    extra_body: Mapping[str, Any] | None = None

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def ollama(cls, model: str = "llama3.1", host: str | None = None, **kw: Any) -> "JudgeConfig":
        """The release's scoring judge: a local Ollama server (``$OLLAMA_HOST`` or ``http://localhost:11434``)."""
        host = host or os.environ.get("OLLAMA_HOST") or "http://localhost:11434"
        if not host.startswith(("http://", "https://")):
            host = "http://" + host
        return cls(base_url=_normalize_url(host) + "/v1", model=model, **kw)

    # -- resolution ---------------------------------------------------------------------------------------------
    def resolved_base_url(self) -> str:
        return _normalize_url(self.base_url or _env("LLAVIDAL_JUDGE_BASE_URL", "OPENAI_BASE_URL")
                              or DEFAULT_OPENAI_BASE_URL)

    def resolved_model(self) -> str:
        model = self.model or _env("LLAVIDAL_JUDGE_MODEL")
        if not model:
            raise JudgeConfigError("no judge model: pass JudgeConfig(model=...) or set $LLAVIDAL_JUDGE_MODEL "
                                   "(e.g. 'llama3.1' for Ollama, 'gpt-4o-mini' for OpenAI)")
        return model

    def resolved_api_key(self) -> str:
        key = self.api_key or _env("LLAVIDAL_JUDGE_API_KEY", "OPENAI_API_KEY")
        if key:
            return key
        url = self.resolved_base_url()
        if "api.openai.com" in url:
            raise JudgeConfigError(f"no API key for {url}: pass api_key=... or set $LLAVIDAL_JUDGE_API_KEY "
                                   "or $OPENAI_API_KEY")
        return DUMMY_API_KEY

    def validate(self) -> None:
        if self.temperature < 0:
            raise JudgeConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_attempts < 1 or self.max_parse_failures < 1:
            raise JudgeConfigError("max_attempts and max_parse_failures must be >= 1")
        if self.timeout <= 0 or self.max_tokens < 1:
            raise JudgeConfigError("timeout must be > 0 and max_tokens >= 1")

    def identity(self) -> dict[str, Any]:
        """What makes two judges give the same replies: cache key part and the record written beside scores."""
        return {
            "base_url": self.resolved_base_url(),
            "model": self.resolved_model(),
            "temperature": float(self.temperature),
            "seed": None if self.seed is None else int(self.seed),
            "extra_body": dict(self.extra_body) if self.extra_body else None,
        }


# ----------------------------------------------------------------------------------------------------------------
# requests and results
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeRequest:
    """One judge call. Build these with :class:`llavidal.eval.prompts.PromptSet` rather than by hand.

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


@dataclass
class JudgeStats:
    """Counters over the life of a :class:`Judge` (thread-safe updates through the judge)."""

    calls: int = 0  # judge calls asked for (hits + misses)
    cache_hits: int = 0
    http_requests: int = 0  # requests actually sent
    retries: int = 0  # requests beyond the first, for any reason
    ok: int = 0
    failures: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# reply parsing
# ----------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?|```")
_BRACED = re.compile(r"\{[^{}]*\}")
_SCORE_LABEL = re.compile(r"""(?i)\bscore\b["']?\s*(?:[:=]|is|of)\s*["']?\s*(-?\d+(?:\.\d+)?)""")
_OUT_OF_FIVE = re.compile(r"(?i)(?<![\d.])(-?\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*5(?!\d|\.\d)")
_BARE_NUMBER = re.compile(r"^\W*?(-?\d+(?:\.\d+)?)\W*$")


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def _strip_fences(text: str) -> str:
    """Without code fences and without the ``<think>...</think>`` block of reasoning models."""
    return _FENCE.sub("\n", _THINK.sub(" ", text)).strip()


def _literal_dicts(text: str) -> list[dict]:
    """Every ``{...}`` (no nesting) in ``text`` that reads as a Python literal or JSON object."""
    out = []
    for m in _BRACED.finditer(text):
        chunk = m.group(0)
        for loader in (ast.literal_eval, json.loads):
            try:
                obj = loader(chunk)
            except Exception:  # noqa: BLE001 - any failure means "not this loader"
                continue
            if isinstance(obj, dict):
                out.append(obj)
                break
    return out


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
    body = _strip_fences(str(text))
    found = [v for d in _literal_dicts(body) for k, v in d.items() if str(k).strip().lower() == "score"]
    if found:
        return _score_value(_one([_score_value(v) for v in found], "scores"))
    for pattern in (_SCORE_LABEL, _OUT_OF_FIVE):
        hits = pattern.findall(body)
        if hits:
            return _one([_score_value(h) for h in hits], "scores")
    m = _BARE_NUMBER.match(body)
    if m:
        return _score_value(m.group(1))
    raise ReplyParseError(f"no score found in reply {_short(text)!r}")


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
    body = _strip_fences(str(text))

    def check(letter: str) -> str:
        letter = letter.upper()
        if letter not in allowed:
            raise ReplyParseError(f"letter {letter} is not an option ({''.join(sorted(allowed))})")
        return letter

    hits = [a or b for a, b in _ANSWER_LETTER.findall(body)]
    if hits:
        return check(_one([h.upper() for h in hits], "letters"))
    found = [str(v).strip() for d in _literal_dicts(body) for k, v in d.items()
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
    raise ReplyParseError(f"no option letter found in reply {_short(text)!r}")


def parse_reply(kind: str, text: str | None, choices: Iterable[str] | None = None) -> int | str:
    """Parse ``text`` as ``kind`` (``score`` -> int, ``mcq`` -> letter, ``text`` -> stripped non-empty text)."""
    if kind == KIND_SCORE:
        return parse_score(text)
    if kind == KIND_MCQ:
        return parse_letter(text, choices if choices is not None else "ABCDEF")
    if kind == KIND_TEXT:
        if text is None or not str(text).strip():
            raise ReplyParseError("empty reply")
        body = _THINK.sub(" ", str(text)).strip()
        if body.startswith("```"):
            body = _strip_fences(body)
        if not body:
            raise ReplyParseError("empty reply")
        return body
    raise ValueError(f"unknown kind {kind!r}")


def _short(text: Any, n: int = 120) -> str:
    s = "" if text is None else str(text).replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


# ----------------------------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def cache_key(identity: Mapping[str, Any], request: JudgeRequest, max_tokens: int) -> str:
    """SHA-256 over the judge identity, the prompt set, the prompt key, the reply budget and the exact messages."""
    payload = {
        "schema": CACHE_SCHEMA_VERSION,
        "judge": dict(identity),
        "max_tokens": int(max_tokens),
        "prompt_set": request.prompt_set,
        "prompt_key": request.prompt_key,
        "kind": request.kind,
        "messages": [dict(m) for m in request.messages],
    }
    return hashlib.sha256(_canonical(payload).encode("utf-8")).hexdigest()


class JudgeCache:
    """SQLite store of successful judge replies (WAL mode; one connection guarded by a lock; ``busy_timeout`` so
    that several processes can share the file). Use ``":memory:"`` for a throw-away cache."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS judge_cache ("
                " key TEXT PRIMARY KEY, judge TEXT NOT NULL, prompt_set TEXT NOT NULL, prompt_key TEXT NOT NULL,"
                " kind TEXT NOT NULL, messages TEXT NOT NULL, reply TEXT NOT NULL, served_model TEXT,"
                " created REAL NOT NULL)")

    def get(self, key: str) -> tuple[str, str | None] | None:
        """``(reply, served_model)`` or ``None``."""
        with self._lock:
            row = self._conn.execute("SELECT reply, served_model FROM judge_cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put(self, key: str, identity: Mapping[str, Any], request: JudgeRequest, reply: str,
            served_model: str | None = None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO judge_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, _canonical(dict(identity)), request.prompt_set, request.prompt_key, request.kind,
                 _canonical([dict(m) for m in request.messages]), reply, served_model, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "JudgeCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# the judge
# ----------------------------------------------------------------------------------------------------------------


def _retry_after_seconds(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Judge:
    """A configured judge with an optional cache. Thread-safe; use :meth:`judge_many` for batches.

    ``cache``: a path (SQLite file, created if needed), a :class:`JudgeCache`, or ``None`` for no cache.
    ``client``: an ``openai.OpenAI``-like object to use instead of building one (tests, custom HTTP clients).
    ``sleep``: the function used to wait between retries (tests).
    """

    def __init__(self, config: JudgeConfig | None = None, cache: str | os.PathLike[str] | JudgeCache | None = None,
                 *, client: Any = None, sleep: Callable[[float], None] = time.sleep, rng_seed: int | None = None):
        self.config = config or JudgeConfig()
        self.config.validate()
        self.identity = self.config.identity()  # resolves model / base_url now: fail fast on a bad config
        self._owns_cache = cache is not None and not isinstance(cache, JudgeCache)
        self.cache = JudgeCache(cache) if self._owns_cache else cache
        self._client = client
        self._owns_client = client is None
        self._client_lock = threading.Lock()
        self._sleep = sleep
        self._rng = random.Random(rng_seed)
        self._stats_lock = threading.Lock()
        self.stats = JudgeStats()

    # -- plumbing -------------------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client, built on first use (a run served from the cache never builds one)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    try:
                        import openai
                    except ImportError as e:  # pragma: no cover - depends on the environment
                        raise JudgeConfigError("the LLM judge needs the openai package: "
                                               "pip install 'llavidal[eval]'  (or: pip install openai)") from e
                    self._client = openai.OpenAI(base_url=self.identity["base_url"],
                                                 api_key=self.config.resolved_api_key(),
                                                 timeout=self.config.timeout, max_retries=0)
        return self._client

    def describe(self) -> dict[str, Any]:
        """Judge record to store beside reported scores (no API key)."""
        d = dict(self.identity)
        d.update(max_tokens=self.config.max_tokens, timeout=self.config.timeout,
                 max_attempts=self.config.max_attempts, cache=getattr(self.cache, "path", None))
        return d

    def close(self) -> None:
        if self._owns_cache and self.cache is not None:
            self.cache.close()
        close = getattr(self._client, "close", None) if self._owns_client else None
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _record(self, result: JudgeResult) -> JudgeResult:
        with self._stats_lock:
            if result.ok:
                self.stats.ok += 1
            else:
                self.stats.failures += 1
                reason = (result.error or "unknown").split(":", 1)[0]
                self.stats.failure_reasons[reason] = self.stats.failure_reasons.get(reason, 0) + 1
        return result

    def _max_tokens(self, request: JudgeRequest) -> int:
        return max(self.config.max_tokens, request.max_tokens or 0)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            jitter = self._rng.uniform(0.0, 0.1 * self.config.backoff_base)
            return min(retry_after, self.config.max_retry_after) + jitter
        delay = min(self.config.backoff_max, self.config.backoff_base * (2 ** (attempt - 1)))
        return delay * self._rng.uniform(0.5, 1.0)

    def _send(self, request: JudgeRequest, max_tokens: int) -> tuple[str | None, str | None, dict | None]:
        cfg = self.config
        kwargs: dict[str, Any] = dict(model=self.identity["model"], messages=[dict(m) for m in request.messages],
                                      temperature=float(cfg.temperature), max_tokens=int(max_tokens))
        if cfg.seed is not None:
            kwargs["seed"] = int(cfg.seed)
        if cfg.extra_body:
            kwargs["extra_body"] = dict(cfg.extra_body)
        resp = self.client.chat.completions.create(**kwargs)
        choices = getattr(resp, "choices", None)
        if choices is None:
            raise _BadResponse(f"not a chat completion: {_short(resp, 80)!r}")
        if not choices:
            raise _BadResponse("chat completion without choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        usage = getattr(resp, "usage", None)
        usage_d = None
        if usage is not None:
            usage_d = {k: int(getattr(usage, k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
                       if isinstance(getattr(usage, k, None), int)}
        return content, getattr(resp, "model", None), usage_d

    # -- one call -------------------------------------------------------------------------------------------------
    def judge(self, request: JudgeRequest) -> JudgeResult:
        """Run one judge call (cache -> server with retries -> parse). Never raises for server or reply problems:
        those come back as a failure record."""
        t0 = time.perf_counter()
        self._count(calls=1)
        max_tokens = self._max_tokens(request)
        key = cache_key(self.identity, request, max_tokens) if self.cache is not None else None
        base = dict(id=request.id, prompt_key=request.prompt_key, kind=request.kind)

        if key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                reply, served = hit
                try:
                    value = parse_reply(request.kind, reply, request.choices)
                except ReplyParseError:
                    # a reply cached under an older, more lenient parser: ask again
                    logger.debug("cached reply for %s no longer parses; asking again", request.id)
                else:
                    self._count(cache_hits=1)
                    return self._record(JudgeResult(**base, ok=True, value=value, reply=reply, cached=True,
                                                    latency_s=time.perf_counter() - t0, served_model=served))

        _ = self.client  # built here (JudgeConfigError if openai is missing or no key for a hosted endpoint)
        import openai

        attempts = parse_failures = 0
        last_reply: str | None = None
        error = "no attempt made"
        while attempts < self.config.max_attempts:
            attempts += 1
            self._count(http_requests=1, retries=int(attempts > 1))
            try:
                reply, served, usage = self._send(request, max_tokens)
            except openai.APIStatusError as e:  # HTTP error status
                status = int(getattr(e, "status_code", 0) or 0)
                error = f"http {status}: {_short(getattr(e, 'message', e))}"
                if status in RETRYABLE_STATUS or status >= 500:
                    if attempts < self.config.max_attempts:
                        self._sleep(self._backoff(attempts, _retry_after_seconds(e)))
                    continue
                break  # 400, 401, 403, 404, 422...: asking again will not help
            except openai.APITimeoutError:
                error = f"timeout: no reply within {self.config.timeout:g} s"
                if attempts < self.config.max_attempts:
                    self._sleep(self._backoff(attempts, None))
                continue
            except openai.APIConnectionError as e:
                error = f"connection: {_short(e)}"
                if attempts < self.config.max_attempts:
                    self._sleep(self._backoff(attempts, None))
                continue
            except (openai.OpenAIError, _BadResponse) as e:  # e.g. a 200 body that is not a chat completion
                error = f"bad response: {_short(e)}"
                if attempts < self.config.max_attempts:
                    self._sleep(self._backoff(attempts, None))
                continue

            last_reply = reply
            try:
                value = parse_reply(request.kind, reply, request.choices)
            except ReplyParseError as e:
                parse_failures += 1
                error = f"unparsable: {e}"
                if parse_failures >= self.config.max_parse_failures:
                    break
                continue  # ask again at once; a server-side problem is not the cause
            if key is not None:
                try:
                    self.cache.put(key, self.identity, request, reply, served)
                except sqlite3.Error as e:  # a cache that cannot be written must not lose the score
                    logger.warning("judge cache write failed (%s); result kept, not cached", e)
            return self._record(JudgeResult(**base, ok=True, value=value, reply=reply, attempts=attempts,
                                            latency_s=time.perf_counter() - t0, served_model=served, usage=usage))

        if attempts >= self.config.max_attempts and not error.startswith("unparsable"):
            error = f"{error} (gave up after {attempts} attempts)"
        logger.warning("judge call %s failed: %s", request.id, error)
        return self._record(JudgeResult(**base, ok=False, error=error, reply=last_reply, attempts=attempts,
                                        latency_s=time.perf_counter() - t0))

    # -- batches --------------------------------------------------------------------------------------------------
    def judge_many(self, requests: Sequence[JudgeRequest], concurrency: int = 16, *, progress: bool = True,
                   desc: str = "judge") -> list[JudgeResult]:
        """Run ``requests`` with at most ``concurrency`` in flight; results in request order.

        Cache hits are answered on the calling thread before any request is sent. A tqdm bar shows progress with
        the number of failures and cache hits so far (``progress=False`` to hide it).
        """
        requests = list(requests)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        results: list[JudgeResult | None] = [None] * len(requests)
        bar = None
        if progress and requests:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc=desc, unit="call", dynamic_ncols=True)
        failures = hits = 0

        def done(i: int, r: JudgeResult) -> None:
            nonlocal failures, hits
            results[i] = r
            failures += int(not r.ok)
            hits += int(r.cached)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=failures, cached=hits, refresh=False)

        try:
            pending = list(range(len(requests)))
            if self.cache is not None:  # hits without a thread hop
                misses = []
                for i in pending:
                    r = self._cached_only(requests[i])
                    if r is None:
                        misses.append(i)
                    else:
                        done(i, r)
                pending = misses
            if pending:
                if concurrency == 1:
                    for i in pending:
                        done(i, self.judge(requests[i]))
                else:
                    with ThreadPoolExecutor(max_workers=min(concurrency, len(pending)),
                                            thread_name_prefix="llavidal-judge") as pool:
                        futures = {pool.submit(self.judge, requests[i]): i for i in pending}
                        try:
                            for fut in as_completed(futures):
                                done(futures[fut], fut.result())
                        except BaseException:
                            pool.shutdown(wait=False, cancel_futures=True)
                            raise
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    def _cached_only(self, request: JudgeRequest) -> JudgeResult | None:
        """The cached result for ``request`` if there is a usable one, without contacting the server."""
        if self.cache is None:
            return None
        t0 = time.perf_counter()
        max_tokens = self._max_tokens(request)
        hit = self.cache.get(cache_key(self.identity, request, max_tokens))
        if hit is None:
            return None
        reply, served = hit
        try:
            value = parse_reply(request.kind, reply, request.choices)
        except ReplyParseError:
            return None
        self._count(calls=1, cache_hits=1)
        return self._record(JudgeResult(id=request.id, prompt_key=request.prompt_key, kind=request.kind, ok=True,
                                        value=value, reply=reply, cached=True, latency_s=time.perf_counter() - t0,
                                        served_model=served))

"""Shared machinery of the LLM curation steps (captions, describe, qa): the chat client, reply parsing, bounded
concurrency and the bookkeeping that makes every step resumable.

**Client.** :class:`LLMClient` talks to any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama's
``/v1``, llama.cpp server) through the ``openai`` package. It reuses the transport rules of the evaluation judge
(:mod:`llavidal.eval.judge`: which statuses are retryable, ``Retry-After`` handling, the dummy key for local
servers) but not its ``Judge`` class, whose requests are text-only and whose parsers are fixed: curation sends
images (captions) and parses its own reply shapes. What a call guarantees:

* bounded retries: 408/409/429/5xx, timeouts, connection errors and 200 bodies that are not chat completions are
  retried with exponential backoff and jitter (honouring ``Retry-After``), at most ``max_attempts`` requests per
  call; other HTTP errors (400, 401, 404 ...) are not retried;
* bounded re-asking: a reply the step's parser rejects is asked again at once with ``seed + k`` (so that a
  deterministic server can answer differently), at most ``max_parse_failures`` times;
* a circuit breaker: after ``max_consecutive_failures`` calls in a row that failed on the server side (server
  down, wrong URL or model name, bad key, images sent to a text-only model), further calls fail at once and the
  step stops instead of spending hours on backoff or failing every item the same way;
* failures are values (:class:`CallResult` with ``ok=False`` and the reason), never exceptions and never defaults.

**Parsing.** :func:`parse_text` (a caption), :func:`parse_description` (a paragraph, also out of a ``{"A": ...}``
dict as the original prompts asked for) and :func:`parse_qa_list` (a list of ``{"Q", "A"}`` from JSON, JSON in a
code fence, a Python literal, surrounded by prose, or cut off after the last complete object).

**Bookkeeping.** :class:`StepLog` keeps a step's append-only results (JSON lines; a killed run loses at most the
requests in flight), its ``failures.jsonl`` and its manifest (what was done, reused, skipped and failed, and why;
model, prompt version, temperature and seed). :func:`run_bounded` runs tasks with at most ``concurrency`` in
flight and hands every result to the main thread, which alone writes files.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import platform
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..eval.judge import (
    _THINK,
    DEFAULT_OPENAI_BASE_URL,
    DUMMY_API_KEY,
    RETRYABLE_STATUS,
    _retry_after_seconds,
    _short,
    _strip_fences,
)
from ..io_utils import append_jsonl, atomic_write_json, read_jsonl

logger = logging.getLogger(__name__)

__all__ = [
    "CallResult",
    "LLMClient",
    "LLMConfig",
    "ReplyError",
    "StepError",
    "StepLog",
    "add_llm_args",
    "clean_reply",
    "exit_code",
    "llm_config_from_args",
    "load_actions",
    "parse_description",
    "parse_qa_list",
    "parse_text",
    "print_summary",
    "run_bounded",
    "sum_stats",
    "word_count",
]

T = TypeVar("T")


class StepError(ValueError):
    """A curation step cannot run (bad input file, bad configuration, results of another model in the output);
    the message names the file and what was expected."""


class ReplyError(ValueError):
    """A reply that does not have the expected shape; the call is asked again (bounded)."""


class _BadResponse(Exception):
    """A 200 answer that is not a usable chat completion."""


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMConfig:
    """Where the model lives and how it is asked.

    ``base_url``: OpenAI-compatible root (``http://localhost:8000/v1`` vLLM, ``http://localhost:11434/v1`` Ollama,
    ``http://localhost:8080/v1`` llama.cpp); ``None``: ``$LLAVIDAL_CURATION_BASE_URL``, ``$OPENAI_BASE_URL``, then
    OpenAI. ``api_key``: ``None``: ``$LLAVIDAL_CURATION_API_KEY``, ``$OPENAI_API_KEY``, else a dummy key for
    non-OpenAI URLs. ``seed=None`` leaves the field out (for servers that reject it). ``max_tokens``: the reply
    budget when a prompt names none. ``max_attempts``: HTTP requests per call at most, for any reason.
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 512
    timeout: float = 120.0
    max_attempts: int = 6
    max_parse_failures: int = 3
    max_consecutive_failures: int = 20
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    extra_body: Mapping[str, Any] | None = None

    def resolved_base_url(self) -> str:
        url = self.base_url or os.environ.get("LLAVIDAL_CURATION_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        return (url or DEFAULT_OPENAI_BASE_URL).strip().rstrip("/")

    def resolved_model(self) -> str:
        model = self.model or os.environ.get("LLAVIDAL_CURATION_MODEL")
        if not model:
            raise StepError("no model: pass --model NAME (e.g. gpt-4o-mini, or the name your vLLM / Ollama / "
                            "llama.cpp server serves) or set $LLAVIDAL_CURATION_MODEL")
        return model

    def resolved_api_key(self) -> str:
        key = self.api_key or os.environ.get("LLAVIDAL_CURATION_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        url = self.resolved_base_url()
        if "api.openai.com" in url:
            raise StepError(f"no API key for {url}: pass --api-key or set $OPENAI_API_KEY")
        return DUMMY_API_KEY

    def validate(self) -> None:
        if self.temperature < 0:
            raise StepError(f"--temperature must be >= 0, got {self.temperature}")
        if min(self.max_attempts, self.max_parse_failures, self.max_consecutive_failures) < 1:
            raise StepError("--max-attempts, --max-parse-failures and the failure limit must be >= 1")
        if self.timeout <= 0 or self.max_tokens < 1:
            raise StepError("--timeout must be > 0 and --max-tokens >= 1")

    def record(self) -> dict[str, Any]:
        """What the manifest stores about the model (never the key)."""
        return {"base_url": self.resolved_base_url(), "model": self.resolved_model(),
                "temperature": float(self.temperature), "seed": self.seed, "max_tokens": self.max_tokens,
                "timeout": self.timeout, "max_attempts": self.max_attempts,
                "max_parse_failures": self.max_parse_failures,
                "extra_body": dict(self.extra_body) if self.extra_body else None}


def add_llm_args(p: argparse.ArgumentParser, *, temperature: float, required: bool = True,
                 concurrency: int = 8) -> None:
    """The endpoint flags every LLM step shares."""
    g = p.add_argument_group("LLM endpoint (any OpenAI-compatible chat-completions server)")
    g.add_argument("--endpoint", required=False, default=None,
                   help="base URL, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama), "
                        "https://api.openai.com/v1 (default: $LLAVIDAL_CURATION_BASE_URL or $OPENAI_BASE_URL)")
    g.add_argument("--model", required=False, default=None,
                   help="model name as the server knows it" + (" (required)" if required else ""))
    g.add_argument("--api-key", default=None, help="default: $LLAVIDAL_CURATION_API_KEY or $OPENAI_API_KEY "
                                                   "(local servers need none)")
    g.add_argument("--temperature", type=float, default=temperature, help=f"default {temperature}")
    g.add_argument("--seed", type=int, default=0, help="sent with every request (default 0); re-asks after a "
                                                       "malformed reply use seed+1, seed+2, ...")
    g.add_argument("--no-seed", action="store_true", help="leave the seed out (servers that reject it)")
    g.add_argument("--max-tokens", type=int, default=None, help="reply budget (default: the prompt's own)")
    g.add_argument("--concurrency", type=int, default=concurrency,
                   help=f"requests in flight at most, per process (default {concurrency})")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request (default 120)")
    g.add_argument("--max-attempts", type=int, default=6,
                   help="HTTP requests per call at most (429/5xx/timeouts are retried with backoff; default 6)")
    g.add_argument("--max-parse-failures", type=int, default=3,
                   help="malformed replies per call before the item is recorded as failed (default 3)")
    g.add_argument("--prompts", default=None, help="curation prompt-set JSON (default: the built-in versioned set)")
    g.add_argument("--extra-body", default=None,
                   help='extra JSON fields for every request, e.g. \'{"options": {"num_ctx": 8192}}\' (Ollama)')


def llm_config_from_args(args: argparse.Namespace, **overrides: Any) -> LLMConfig:
    extra = None
    if getattr(args, "extra_body", None):
        try:
            extra = json.loads(args.extra_body)
        except json.JSONDecodeError as e:
            raise StepError(f"--extra-body is not valid JSON: {e}") from None
        if not isinstance(extra, dict):
            raise StepError("--extra-body must be a JSON object")
    kw = dict(base_url=args.endpoint, model=args.model, api_key=args.api_key, temperature=args.temperature,
              seed=None if args.no_seed else args.seed, timeout=args.timeout, max_attempts=args.max_attempts,
              max_parse_failures=args.max_parse_failures, extra_body=extra)
    if args.max_tokens is not None:
        kw["max_tokens"] = args.max_tokens
    kw.update(overrides)
    cfg = LLMConfig(**kw)
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# reply parsing
# ----------------------------------------------------------------------------------------------------------------


def clean_reply(text: str | None) -> str:
    """The reply without a ``<think>`` block and code fences, stripped; :class:`ReplyError` when empty."""
    if text is None or not str(text).strip():
        raise ReplyError("empty reply")
    body = _strip_fences(_THINK.sub(" ", str(text)))
    if not body:
        raise ReplyError("empty reply")
    return body


def parse_text(text: str | None) -> str:
    """Free text (a frame caption): the cleaned reply, whitespace runs collapsed."""
    return " ".join(clean_reply(text).split())


_LABEL = re.compile(r"^\s*(?:\*\*)?(?:video\s+)?(?:description|answer|paragraph)(?:\*\*)?\s*:\s*", re.IGNORECASE)
_DESC_KEYS = ("a", "answer", "description", "text", "paragraph")


def parse_description(text: str | None) -> str:
    """One paragraph of description. Accepts the plain paragraph (an optional ``Description:`` label is dropped),
    or a JSON / Python dict with the text under ``A`` / ``answer`` / ``description`` (the shape the original
    prompts asked for). Whitespace runs are collapsed."""
    body = clean_reply(text)
    if body.startswith("{"):
        obj = _load_literal(body)
        if isinstance(obj, dict):
            for k, v in obj.items():
                if str(k).strip().lower() in _DESC_KEYS and isinstance(v, str) and v.strip():
                    return " ".join(v.split())
            raise ReplyError(f"a dict without a description field (keys {sorted(map(str, obj))})")
    body = _LABEL.sub("", body)
    body = " ".join(body.split()).strip('"').strip()
    if not body:
        raise ReplyError("empty description")
    return body


def word_count(text: str) -> int:
    return len(text.split())


def _load_literal(text: str) -> Any:
    """JSON or a Python literal, or ``None``."""
    for loader in (json.loads, ast.literal_eval):
        try:
            return loader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _balanced_spans(text: str, opener: str) -> Iterable[str]:
    """Every top-level bracketed span starting with ``opener`` (``[`` or ``{``), quotes respected; an unclosed
    span at the end (a reply cut by the token limit) is closed when it does not end inside a string."""
    pairs = {"[": "]", "{": "}"}
    i, n = 0, len(text)
    while i < n:
        if text[i] != opener:
            i += 1
            continue
        stack: list[str] = []
        quote: str | None = None
        escaped = False
        j = i
        while j < n:
            c = text[j]
            if quote:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == quote:
                    quote = None
            elif c in "\"'":
                # an apostrophe inside a word ("person's") is text, not a Python string quote
                if c == "'" and j > 0 and text[j - 1].isalnum() and j + 1 < n and text[j + 1].isalnum():
                    pass
                else:
                    quote = c
            elif c in pairs:
                stack.append(pairs[c])
            elif c in "]}":
                if stack and c == stack[-1]:
                    stack.pop()
                    if not stack:
                        yield text[i:j + 1]
                        break
                else:
                    break  # mismatched: not a literal from here
            j += 1
        else:
            if stack and quote is None:  # cut off: close what is open, dropping a dangling comma
                yield text[i:].rstrip().rstrip(",") + "".join(reversed(stack))
            return
        i = j + 1 if j > i else i + 1


_Q_KEYS = ("q", "question")
_A_KEYS = ("a", "answer")


def _qa_pair(obj: Any, where: str) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise ReplyError(f"{where} is a {type(obj).__name__}, not an object with Q and A")
    low = {str(k).strip().lower(): v for k, v in obj.items()}
    q = next((low[k] for k in _Q_KEYS if k in low), None)
    a = next((low[k] for k in _A_KEYS if k in low), None)
    if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
        raise ReplyError(f"{where} lacks a non-empty 'Q' and 'A' (keys {sorted(map(str, obj))})")
    return {"Q": " ".join(q.split()), "A": " ".join(a.split())}


def _as_qa_items(obj: Any) -> list | None:
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:  # {"qa": [...]} / {"questions": [...]}
            return lists[0]
        low = {str(k).strip().lower() for k in obj}
        if low & set(_Q_KEYS) and low & set(_A_KEYS):  # one pair alone
            return [obj]
    return None


def parse_qa_list(text: str | None, n: int = 3) -> tuple[list[dict[str, str]], int]:
    """``n`` question-answer pairs ``[{"Q", "A"}, ...]`` from a reply, and how many extra pairs were dropped.

    Tried in order: the whole reply as JSON or a Python literal (code fences and ``<think>`` removed); each
    bracketed list in it; objects listed without brackets (``{...}, {...}``); a list cut off after its last
    complete object (closed for it). Keys are case-insensitive (``Q``/``question``, ``A``/``answer``). Fewer
    than ``n`` pairs is a :class:`ReplyError`; more are accepted, the first ``n`` kept and the rest counted.
    """
    body = clean_reply(text)
    candidates: list[Any] = [_load_literal(body)]
    candidates += [_load_literal(s) for s in _balanced_spans(body, "[")]
    objs = [_load_literal(s) for s in _balanced_spans(body, "{")]
    if objs and all(isinstance(o, dict) for o in objs):
        candidates.append(objs if len(objs) > 1 else objs[0])
    last_error: ReplyError | None = None
    for cand in candidates:
        items = _as_qa_items(cand)
        if items is None:
            continue
        try:
            pairs = [_qa_pair(x, f"item {i + 1}") for i, x in enumerate(items)]
        except ReplyError as e:
            last_error = e
            continue
        if len(pairs) < n:
            last_error = ReplyError(f"{len(pairs)} question-answer pairs, expected {n}")
            continue
        return pairs[:n], len(pairs) - n
    if last_error is not None:
        raise last_error
    raise ReplyError(f"no list of question-answer pairs in reply {_short(text)!r}")


# ----------------------------------------------------------------------------------------------------------------
# the client
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class CallResult:
    """One call. ``value``: the parsed reply (``None`` when not ok); ``error``: why it failed; ``reply``: the
    last raw reply; ``attempts``: HTTP requests made; ``seed``: the seed of the accepted (or last) request."""

    ok: bool
    value: Any = None
    error: str | None = None
    reply: str | None = None
    attempts: int = 0
    parse_failures: int = 0
    seed: int | None = None
    latency_s: float = 0.0
    served_model: str | None = None
    usage: dict[str, int] | None = None


@dataclass
class LLMStats:
    calls: int = 0
    ok: int = 0
    failures: int = 0
    http_requests: int = 0
    retries: int = 0
    parse_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LLMClient:
    """A configured chat client; thread-safe. ``client``: an ``openai.OpenAI``-like object to use instead of
    building one; ``sleep``: the wait between retries (tests)."""

    def __init__(self, config: LLMConfig, *, client: Any = None, sleep: Callable[[float], None] = time.sleep,
                 rng_seed: int | None = None):
        config.validate()
        self.config = config
        self.model = config.resolved_model()
        self.base_url = config.resolved_base_url()
        self._client = client
        self._owns_client = client is None
        self._sleep = sleep
        self._rng = random.Random(rng_seed)
        self._lock = threading.Lock()
        self.stats = LLMStats()
        self._consecutive = 0
        self.tripped: str | None = None  # why the circuit breaker opened

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        import openai
                    except ImportError as e:  # pragma: no cover - depends on the environment
                        raise StepError("the curation LLM steps need the openai package: pip install openai") from e
                    self._client = openai.OpenAI(base_url=self.base_url, api_key=self.config.resolved_api_key(),
                                                 timeout=self.config.timeout, max_retries=0)
        return self._client

    def close(self) -> None:
        close = getattr(self._client, "close", None) if self._owns_client else None
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort
                pass

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.max_retry_after) + self._rng.uniform(0, 0.1 * self.config.backoff_base)
        return min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1)

    def _send(self, messages: Sequence[Mapping[str, Any]], max_tokens: int, seed: int | None):
        kwargs: dict[str, Any] = dict(model=self.model, messages=list(messages),
                                      temperature=float(self.config.temperature), max_tokens=int(max_tokens))
        if seed is not None:
            kwargs["seed"] = int(seed)
        if self.config.extra_body:
            kwargs["extra_body"] = dict(self.config.extra_body)
        resp = self.client.chat.completions.create(**kwargs)
        choices = getattr(resp, "choices", None)
        if not choices:
            raise _BadResponse(f"not a chat completion with choices: {_short(resp, 80)!r}")
        content = getattr(getattr(choices[0], "message", None), "content", None)
        usage = getattr(resp, "usage", None)
        usage_d = None if usage is None else {
            k: int(getattr(usage, k)) for k in ("prompt_tokens", "completion_tokens")
            if isinstance(getattr(usage, k, None), int)}
        return content, getattr(resp, "model", None), usage_d

    def call(self, messages: Sequence[Mapping[str, Any]], parse: Callable[[str | None], Any] = parse_text, *,
             max_tokens: int | None = None, seed_offset: int = 0) -> CallResult:
        """Send ``messages`` (content may be a string or a list of parts, e.g. text + ``image_url``), parse the
        reply with ``parse`` (raising :class:`ReplyError` / ``ValueError`` on a bad shape). Never raises for
        server or reply problems."""
        import openai

        cfg = self.config
        t0 = time.perf_counter()
        self._count(calls=1)
        max_tokens = int(max_tokens or cfg.max_tokens)
        base_seed = None if cfg.seed is None else int(cfg.seed) + int(seed_offset)
        if self.tripped:
            return self._finish(CallResult(False, error=f"not sent: {self.tripped}", seed=base_seed), transport=None)
        attempts = parse_failures = 0
        last_reply: str | None = None
        error, transport, retryable = "no attempt made", True, True
        seed = base_seed
        while attempts < cfg.max_attempts:
            attempts += 1
            self._count(http_requests=1, retries=int(attempts > 1))
            seed = None if base_seed is None else base_seed + parse_failures
            try:
                reply, served, usage = self._send(messages, max_tokens, seed)
            except openai.APIStatusError as e:
                status = int(getattr(e, "status_code", 0) or 0)
                error, transport = f"http {status}: {_short(getattr(e, 'message', e))}", True
                if status in RETRYABLE_STATUS or status >= 500:
                    if attempts < cfg.max_attempts:
                        self._sleep(self._backoff(attempts, _retry_after_seconds(e)))
                    continue
                # 400/401/404/422: asking again will not help. Still counted by the circuit breaker: a wrong model
                # name, a bad key or a text-only model given images fails every call the same way.
                retryable = False
                break
            except openai.APITimeoutError:
                error, transport = f"timeout: no reply within {cfg.timeout:g} s", True
            except openai.APIConnectionError as e:
                error, transport = f"connection: {_short(e)}", True
            except (openai.OpenAIError, _BadResponse) as e:
                error, transport = f"bad response: {_short(e)}", True
            else:
                last_reply = reply
                if usage:
                    self._count(prompt_tokens=usage.get("prompt_tokens", 0),
                                completion_tokens=usage.get("completion_tokens", 0))
                try:
                    value = parse(reply)
                except (ReplyError, ValueError) as e:
                    parse_failures += 1
                    self._count(parse_failures=1)
                    error, transport = f"malformed reply: {e}", None  # the model's answer, not the server
                    if parse_failures >= cfg.max_parse_failures:
                        break
                    continue
                return self._finish(CallResult(True, value, None, reply, attempts, parse_failures, seed,
                                               time.perf_counter() - t0, served, usage), transport=False)
            if attempts < cfg.max_attempts:
                self._sleep(self._backoff(attempts, None))
        if attempts >= cfg.max_attempts and transport and retryable:
            error = f"{error} (gave up after {attempts} requests)"
        return self._finish(CallResult(False, None, error, last_reply, attempts, parse_failures, seed,
                                       time.perf_counter() - t0), transport=transport)

    def _finish(self, r: CallResult, transport: bool | None) -> CallResult:
        """Count the result; ``transport``: True for a call lost to the server (HTTP errors, timeouts...), False
        for a reply, None for neither (not sent, or malformed replies only: the breaker ignores those)."""
        with self._lock:
            if r.ok:
                self.stats.ok += 1
            else:
                self.stats.failures += 1
                reason = (r.error or "unknown").split(":", 1)[0]
                self.stats.failure_reasons[reason] = self.stats.failure_reasons.get(reason, 0) + 1
            if transport is True:
                self._consecutive += 1
                if self._consecutive >= self.config.max_consecutive_failures and not self.tripped:
                    self.tripped = (f"the endpoint {self.base_url} failed {self._consecutive} calls in a row "
                                    f"(last: {r.error}); stopping")
                    logger.error(self.tripped)
            elif transport is False:
                self._consecutive = 0
        return r


# ----------------------------------------------------------------------------------------------------------------
# bounded concurrency
# ----------------------------------------------------------------------------------------------------------------


def run_step_items(todo: list[T], work: Callable[[T], Any], on_done: Callable[[T, Any, BaseException | None], None],
                   finish: Callable[[str], None], *, client: LLMClient, log: StepLog, concurrency: int,
                   label: Callable[[T], str], attempted: Callable[[T], bool], bar=None) -> str:
    """The run of one LLM step over its items, shared by ``describe`` and ``qa``: :func:`run_bounded` until done or
    the endpoint's circuit breaker trips, then — also when interrupted — close the progress bar, record every item
    that never started as failed (never silently dropped), and ``finish(status)`` (write outputs and manifest).
    Returns the status: ``done``, ``aborted`` or, before the exception propagates, ``interrupted (...)``."""
    status = "interrupted"
    try:
        run_bounded(todo, work, on_done, concurrency, should_stop=lambda: client.tripped is not None,
                    on_idle=log.flush_if_due)
        status = "aborted" if client.tripped else "done"
    except BaseException as e:
        status = f"interrupted ({type(e).__name__}: {str(e)[:200]})"
        raise
    finally:
        if bar is not None:
            bar.close()
        reason = "not attempted in this run (" + (client.tripped or "interrupted") + ")"
        for item in todo:
            if not attempted(item) and label(item) not in log.failed:
                log.failed[label(item)] = reason
        finish(status)
    return status


def run_bounded(tasks: Iterable[T], fn: Callable[[T], Any],
                on_done: Callable[[T, Any, BaseException | None], None], concurrency: int = 8,
                should_stop: Callable[[], bool] | None = None, on_idle: Callable[[], None] | None = None,
                idle_s: float = 0.1) -> None:
    """Run ``fn(task)`` for every task with at most ``concurrency`` at a time; ``on_done(task, result, error)``
    runs on the calling thread as each finishes (so only that thread writes files). ``tasks`` is consumed lazily
    (at most ``2 * concurrency`` taken ahead), so a generator may decode videos as it goes. ``should_stop``: no
    new task is started once it returns true. ``on_idle``: called on the calling thread at least every
    ``idle_s`` seconds while waiting (e.g. to flush buffered results)."""
    if concurrency < 1:
        raise StepError(f"--concurrency must be >= 1, got {concurrency}")
    it = iter(tasks)
    if concurrency == 1:
        for t in it:
            if should_stop is not None and should_stop():
                break
            try:
                r, e = fn(t), None
            except Exception as ex:  # noqa: BLE001 - handed to on_done, which records it
                r, e = None, ex
            on_done(t, r, e)
            if on_idle is not None:
                on_idle()
        return
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llavidal-curate")
    pending: dict[Any, T] = {}
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < 2 * concurrency:
                if should_stop is not None and should_stop():
                    exhausted = True
                    break
                try:
                    t = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, t)] = t
            if not pending:
                break
            done, _ = wait(list(pending), timeout=idle_s if on_idle is not None else None,
                           return_when=FIRST_COMPLETED)
            for fut in done:
                t = pending.pop(fut)
                e = fut.exception()
                on_done(t, None if e is not None else fut.result(), e)
            if on_idle is not None:
                on_idle()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------------------------------------------
# inputs shared by describe and qa
# ----------------------------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike, what: str) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepError(f"{p}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise StepError(f"{p}: {what} is not valid JSON ({e})") from None


def load_actions(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """``actions.json`` of the stitch step: ``{video: {"actions": [names in order], "sentence": "..."}}``.

    Returns ``(good, bad)``: ``good[video] = {"actions": [...], "sentence": str}`` (a missing sentence is built
    from the actions), ``bad[video]`` = why its entry is unusable (the step skips that video and says so)."""
    data = read_json(path, "actions JSON")
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected an object {{video name: {{'actions': [...], 'sentence': ...}}}}, got "
                        f"{type(data).__name__}")
    good, bad = {}, {}
    for name, entry in data.items():
        acts = entry.get("actions") if isinstance(entry, dict) else None
        if not isinstance(acts, list) or not acts or not all(isinstance(a, str) and a.strip() for a in acts):
            bad[name] = (f"{path}: entry {name!r}: 'actions' must be a non-empty list of action names "
                         f"(got {_short(json.dumps(entry, ensure_ascii=False), 80)})")
            continue
        sentence = entry.get("sentence")
        if sentence is not None and not isinstance(sentence, str):
            bad[name] = f"{path}: entry {name!r}: 'sentence' must be a string"
            continue
        acts = [" ".join(a.split()) for a in acts]
        good[name] = {"actions": acts, "sentence": (sentence or "").strip() or default_sentence(acts)}
    return good, bad


def default_sentence(actions: Sequence[str]) -> str:
    if len(actions) == 1:
        return f"The person performs one action: {actions[0]}."
    return "The person performs these actions in order: " + ", then ".join(actions) + "."


def format_actions(entry: Mapping[str, Any]) -> str:
    """The action sentence followed by the numbered list: what the prompts see as ``${actions}``."""
    numbered = "; ".join(f"{i}. {a}" for i, a in enumerate(entry["actions"], 1))
    return f"{entry['sentence']} ({numbered})"


# ----------------------------------------------------------------------------------------------------------------
# step bookkeeping
# ----------------------------------------------------------------------------------------------------------------


def run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f"-{socket.gethostname()}-{os.getpid()}"


class StepLog:
    """Results, failures and manifest of one step run.

    ``results``: append-only JSON lines, one per finished item; an item is done iff it has a record there. Each
    record carries ``identity`` fields (model, prompt version, ...); records made under another identity are an
    error (:meth:`check_identity`), so a rerun with another model never mixes outputs silently.
    ``failures``: append-only ``failures.jsonl``, one line per failed item per run (a rerun asks again).
    ``manifest``: rewritten at the end of every run (also after an interruption).

    Results are written in small batches: a record waits at most ``flush_s`` seconds (or until ``flush_n`` are
    waiting) before it is appended and fsynced, so a fast run does not fsync every reply while a kill loses at
    most the replies of the last ``flush_s`` seconds (besides those in flight). Slow replies go out one by one.
    """

    def __init__(self, step: str, results: Path, failures: Path, manifest: Path, identity: Mapping[str, Any],
                 flush_s: float = 0.2, flush_n: int = 64):
        self.step, self.results, self.failures, self.manifest = step, Path(results), Path(failures), Path(manifest)
        self.identity = dict(identity)
        self.flush_s, self.flush_n = flush_s, flush_n
        self._buf: list[dict] = []
        self._last_flush = time.monotonic()
        self.run = run_id()
        self.t0 = time.time()
        self.counts: Counter = Counter()
        self.skipped: dict[str, dict[str, str]] = {}
        self.failed: dict[str, str] = {}

    def load(self, key: Callable[[dict], Any]) -> dict[Any, dict]:
        """Done records by ``key(record)`` (the first one wins), after the identity check."""
        rows = read_jsonl(self.results)
        self.check_identity(rows, self.results)
        out: dict[Any, dict] = {}
        for r in rows:
            out.setdefault(key(r), r)
        return out

    def check_identity(self, rows: Iterable[dict], where: Path) -> None:
        bad = Counter()
        for r in rows:
            other = tuple((k, r.get(k)) for k in self.identity if r.get(k) != self.identity[k])
            if other:
                bad[other] += 1
        if bad:
            (diff, _), = list(bad.items())[:1]
            found = ", ".join(f"{k}={v!r}" for k, v in diff)
            want = ", ".join(f"{k}={self.identity[k]!r}" for k, _ in diff)
            raise StepError(f"{where}: {sum(bad.values())} results were made with {found}, this run uses {want}; "
                            "results are never mixed: pass another output path, or delete those files to start over")

    def add_result(self, rec: dict) -> None:
        self._buf.append({**rec, **self.identity, "run": self.run})
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if self._buf and (len(self._buf) >= self.flush_n or time.monotonic() - self._last_flush >= self.flush_s):
            self.flush()

    def flush(self) -> None:
        if self._buf:
            append_jsonl(self.results, self._buf)
            self._buf = []
        self._last_flush = time.monotonic()

    def add_failure(self, item: str, error: str, **extra: Any) -> None:
        self.failed[item] = error
        append_jsonl(self.failures, [{"step": self.step, "item": item, "error": error, "run": self.run,
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}])

    def skip(self, item: str, kind: str, reason: str) -> None:
        """``kind``: a short label counted in the manifest (``no_captions``, ``bad_actions`` ...)."""
        self.skipped[item] = {"kind": kind, "reason": reason}

    def write_manifest(self, status: str, **extra: Any) -> Path:
        self.flush()
        skip_kinds = Counter(v["kind"] for v in self.skipped.values())
        manifest = {
            "step": self.step, "status": status, "run": self.run,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.t0)),
            "wall_s": round(time.time() - self.t0, 3), "host": platform.node(),
            "identity": self.identity, "counts": dict(self.counts),
            "skipped": {"count": len(self.skipped), "by_kind": dict(sorted(skip_kinds.items())),
                        "items": dict(sorted(self.skipped.items()))},
            "failed": {"count": len(self.failed), "items": dict(sorted(self.failed.items()))},
            "failures_log": str(self.failures), "results": str(self.results),
            **extra,
        }
        return atomic_write_json(self.manifest, manifest)


def sum_stats(stats: list[dict]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, dict)):
                continue
            if isinstance(v, dict):
                d = total.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                total[k] = total.get(k, 0) + v
    return total


def exit_code(manifest: dict[str, Any], complete: int) -> int:
    """0: every item done. 1: the step ran, some items failed (recorded; a rerun asks again, the next step skips
    them), as ``curate crop`` / ``stitch`` do. 3: the step was aborted (endpoint failing, interrupted) or nothing
    at all succeeded although items failed (an endpoint down, a wrong model name ...): do not go on.
    Skipped items (an earlier step failed for them) do not change the code: they were counted there."""
    failed = manifest["failed"]["count"]
    if manifest["status"] != "done" or (failed and complete == 0):
        return 3
    return 1 if failed else 0


def print_summary(manifest: dict[str, Any], what: str, complete: int, out: str) -> None:
    f, s = manifest["failed"]["count"], manifest["skipped"]["count"]
    print(f"{manifest['step']}: {complete} {what} in {out}; {f} failed, {s} skipped ({manifest['status']}; "
          f"failures: {manifest['failures_log']})")
    if manifest.get("aborted_because"):
        print(f"aborted: {manifest['aborted_because']}")

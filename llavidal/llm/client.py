""":class:`LLMClient`: one call to an OpenAI-compatible chat endpoint, with everything around it that a long
evaluation or curation run needs.

A call (:meth:`LLMClient.call`):

1. the reply cache, when the client has one and the caller names a namespace: a hit that still parses is returned
   without contacting the server;
2. the request, through the ``openai`` client, which retries timeouts, connection errors, 408/409/429 and 5xx with
   its own exponential backoff (honouring ``Retry-After``) up to ``max_attempts`` requests in all;
3. the caller's parser on the reply; a malformed reply (or a 200 body that is not a chat completion) is asked
   again at once with ``seed + k``, at most ``max_parse_failures`` times;
4. the outcome as a :class:`CallResult` — never an exception for server or reply problems, never a default value.

A circuit breaker opens after ``max_consecutive_failures`` calls in a row lost to the endpoint (server down,
wrong URL or model, bad key, images sent to a text-only model): later calls fail at once with the reason, and
batch runners stop starting new work. :class:`LLMStats` counts calls, cache hits, HTTP requests, retries, parse
failures, tokens and failure reasons. The client is thread-safe.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .cache import ReplyCache, reply_cache_key
from .config import LLMConfig, LLMConfigError
from .parsing import clean_reply, short

logger = logging.getLogger(__name__)

__all__ = ["RETRYABLE_STATUS", "CallResult", "LLMClient", "LLMStats", "parse_text"]

RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every status >= 500: what the openai client retries


def parse_text(text: str | None) -> str:
    """The default parser: the reply without ``<think>`` blocks and code fences; empty is malformed."""
    return clean_reply(text)


@dataclass
class CallResult:
    """One call. ``value``: the parsed reply (``None`` when not ok); ``error``: why it failed, prefixed by its kind
    (``http 503``, ``timeout``, ``connection``, ``bad response``, ``unparsable``, ``not sent``); ``reply``: the last
    raw reply; ``attempts``: HTTP requests made (0 for a cache hit; on a failure after retries, the requests the
    ``openai`` client was allowed); ``seed``: the seed of the accepted (or last) request."""

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
    cached: bool = False


@dataclass
class LLMStats:
    calls: int = 0
    cache_hits: int = 0
    ok: int = 0
    failures: int = 0
    http_requests: int = 0
    retries: int = 0  # requests beyond the first of a call, for any reason
    parse_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _BadResponse(Exception):
    """A 200 answer that is not a usable chat completion."""


class LLMClient:
    """A configured endpoint. ``cache``: a :class:`ReplyCache`, a path to one, or ``None``. ``client``: an
    ``openai.OpenAI``-like object to use instead of building one (custom HTTP clients)."""

    def __init__(self, config: LLMConfig, *, cache: ReplyCache | str | None = None, client: Any = None):
        config.validate()
        self.config = config
        self.identity = config.identity()  # resolves model and URL now: a bad configuration fails before any work
        self.model = self.identity["model"]
        self.base_url = self.identity["base_url"]
        self._owns_cache = cache is not None and not isinstance(cache, ReplyCache)
        self.cache: ReplyCache | None = ReplyCache(cache) if self._owns_cache else cache
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()
        self.stats = LLMStats()
        self._consecutive = 0
        self.tripped: str | None = None  # why the circuit breaker opened

    # -- plumbing -------------------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client, built on first use (a run served from the cache never builds one)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        import openai
                    except ImportError as e:  # pragma: no cover - depends on the environment
                        raise LLMConfigError("asking an LLM endpoint needs the openai package: pip install openai "
                                             "(or pip install 'llavidal[eval]')") from e
                    self._client = openai.OpenAI(base_url=self.base_url, api_key=self.config.resolved_api_key(),
                                                 timeout=self.config.timeout,
                                                 max_retries=self.config.max_attempts - 1)
        return self._client

    def describe(self) -> dict[str, Any]:
        """What to record beside results: identity, asking rules, cache file (never the key)."""
        return {**self.config.record(), "cache": getattr(self.cache, "path", None)}

    def close(self) -> None:
        if self._owns_cache and self.cache is not None:
            self.cache.close()
        close = getattr(self._client, "close", None) if self._owns_client else None
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    # -- one request ----------------------------------------------------------------------------------------------
    def _send(self, messages: Sequence[Mapping[str, Any]], max_tokens: int, seed: int | None):
        """``(content, served model, usage, requests made)``; raises the ``openai`` errors and :class:`_BadResponse`."""
        kwargs: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages],
                                  "max_tokens": int(max_tokens)}
        if self.config.temperature is not None:
            kwargs["temperature"] = float(self.config.temperature)
        if seed is not None:
            kwargs["seed"] = int(seed)
        if self.config.extra_body:
            kwargs["extra_body"] = dict(self.config.extra_body)
        raw = self.client.chat.completions.with_raw_response.create(**kwargs)
        requests = 1 + int(getattr(raw, "retries_taken", 0) or 0)
        resp = raw.parse()
        choices = getattr(resp, "choices", None)
        if not choices:
            raise _BadResponse(f"not a chat completion with choices: {short(resp, 80)!r}", requests)
        content = getattr(getattr(choices[0], "message", None), "content", None)
        usage = getattr(resp, "usage", None)
        usage_d = None if usage is None else {
            k: int(getattr(usage, k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
            if isinstance(getattr(usage, k, None), int)}
        return content, getattr(resp, "model", None), usage_d, requests

    # -- one call -------------------------------------------------------------------------------------------------
    def cache_key(self, messages: Sequence[Mapping[str, Any]], max_tokens: int, namespace: Mapping[str, Any]) -> str:
        return reply_cache_key(self.identity, namespace, messages, max_tokens)

    def cached(self, messages: Sequence[Mapping[str, Any]], parse: Callable[[str | None], Any] = parse_text, *,
               max_tokens: int | None = None, cache_ns: Mapping[str, Any] | None = None) -> CallResult | None:
        """The cached result of this call if there is one that still parses, without contacting the server."""
        if self.cache is None or cache_ns is None:
            return None
        t0 = time.perf_counter()
        hit = self.cache.get(self.cache_key(messages, int(max_tokens or self.config.max_tokens), cache_ns))
        if hit is None:
            return None
        reply, served = hit
        try:
            value = parse(reply)
        except ValueError:
            logger.debug("a cached reply no longer parses; it will be asked for again")
            return None
        self._count(calls=1, cache_hits=1)
        return self._finish(CallResult(True, value, reply=reply, cached=True, served_model=served,
                                       latency_s=time.perf_counter() - t0), transport=None)

    def call(self, messages: Sequence[Mapping[str, Any]], parse: Callable[[str | None], Any] = parse_text, *,
             max_tokens: int | None = None, seed_offset: int = 0,
             cache_ns: Mapping[str, Any] | None = None) -> CallResult:
        """Send ``messages`` (content may be a string or a list of parts, e.g. text + ``image_url``) and parse the
        reply with ``parse``, which raises ``ValueError`` (e.g. :class:`ReplyError`) for a malformed reply.
        ``max_tokens``: the reply budget (default: the config's). ``cache_ns``: with a cache, what besides the
        endpoint and the messages identifies this kind of call (prompt set, prompt key, ...)."""
        hit = self.cached(messages, parse, max_tokens=max_tokens, cache_ns=cache_ns)
        if hit is not None:
            return hit
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
        seed = base_seed
        while True:
            seed = None if base_seed is None else base_seed + parse_failures
            try:
                reply, served, usage, requests = self._send(messages, max_tokens, seed)
            except openai.APIStatusError as e:
                status = int(getattr(e, "status_code", 0) or 0)
                retried = status in RETRYABLE_STATUS or status >= 500
                attempts += cfg.max_attempts if retried else 1
                error = f"http {status}: {short(getattr(e, 'message', e))}"
                if retried:
                    error += f" (gave up after {cfg.max_attempts} attempts)"
                return self._fail(error, last_reply, attempts, parse_failures, seed, t0, transport=True)
            except openai.APITimeoutError:
                attempts += cfg.max_attempts
                return self._fail(f"timeout: no reply within {cfg.timeout:g} s (gave up after {cfg.max_attempts} "
                                  "attempts)", last_reply, attempts, parse_failures, seed, t0, transport=True)
            except openai.APIConnectionError as e:
                attempts += cfg.max_attempts
                return self._fail(f"connection: {short(e)} (gave up after {cfg.max_attempts} attempts)", last_reply,
                                  attempts, parse_failures, seed, t0, transport=True)
            except (openai.OpenAIError, _BadResponse) as e:  # a 200 that is not a chat completion: ask again
                attempts += e.args[1] if isinstance(e, _BadResponse) else 1
                parse_failures += 1
                error = f"bad response: {short(e.args[0] if e.args else e)}"
                if parse_failures >= cfg.max_parse_failures:
                    return self._fail(error, last_reply, attempts, parse_failures, seed, t0, transport=True)
                continue
            attempts += requests
            last_reply = reply
            if usage:
                self._count(prompt_tokens=usage.get("prompt_tokens", 0),
                            completion_tokens=usage.get("completion_tokens", 0))
            try:
                value = parse(reply)
            except ValueError as e:  # the model's answer, not the server: the breaker ignores it
                parse_failures += 1
                self._count(parse_failures=1)
                if parse_failures >= cfg.max_parse_failures:
                    return self._fail(f"unparsable: {e}", last_reply, attempts, parse_failures, seed, t0,
                                      transport=None)
                continue
            if self.cache is not None and cache_ns is not None:
                try:
                    self.cache.put(self.cache_key(messages, max_tokens, cache_ns), self.identity, cache_ns, messages,
                                   reply, served)
                except Exception as e:  # noqa: BLE001 - a cache that cannot be written must not lose the reply
                    logger.warning("reply cache write failed (%s); result kept, not cached", e)
            self._count(http_requests=attempts, retries=attempts - 1)
            return self._finish(CallResult(True, value, None, reply, attempts, parse_failures, seed,
                                           time.perf_counter() - t0, served, usage), transport=False)

    def call_many(self, calls: Sequence[Mapping[str, Any]], concurrency: int = 8, *, progress: bool = True,
                  desc: str = "llm") -> list[CallResult]:
        """:meth:`call` for each of ``calls`` (keyword arguments of :meth:`call`), at most ``concurrency`` in
        flight; results in order. Cache hits are answered on the calling thread first. A tqdm bar counts failures
        and cache hits (``progress=False`` hides it). Once the circuit breaker opens, the remaining calls fail at
        once with the reason: every call gets a result."""
        from .concurrency import run_bounded

        calls = list(calls)
        results: list[CallResult | None] = [None] * len(calls)
        counts = {"failed": 0, "cached": 0}
        bar = None
        if progress and calls:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(calls), desc=desc, unit="call", dynamic_ncols=True)

        def done(i: int, r: CallResult | None, error: BaseException | None = None) -> None:
            if error is not None:
                raise error
            results[i] = r
            counts["failed"] += int(not r.ok)
            counts["cached"] += int(r.cached)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(counts, refresh=False)

        try:
            misses = []
            for i, kw in enumerate(calls):
                hit = self.cached(kw["messages"], kw.get("parse", parse_text), max_tokens=kw.get("max_tokens"),
                                  cache_ns=kw.get("cache_ns"))
                if hit is None:
                    misses.append(i)
                else:
                    done(i, hit)
            run_bounded(misses, lambda i: self.call(**calls[i]), done, concurrency)
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    def _fail(self, error: str, reply: str | None, attempts: int, parse_failures: int, seed: int | None, t0: float,
              transport: bool | None) -> CallResult:
        self._count(http_requests=attempts, retries=max(0, attempts - 1))
        logger.debug("call to %s failed: %s", self.base_url, error)
        return self._finish(CallResult(False, None, error, reply, attempts, parse_failures, seed,
                                       time.perf_counter() - t0), transport=transport)

    def _finish(self, r: CallResult, transport: bool | None) -> CallResult:
        """Count the result; ``transport``: True for a call lost to the endpoint, False for a reply that parsed,
        None for neither (a cache hit, not sent, or malformed replies only: the breaker ignores those)."""
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


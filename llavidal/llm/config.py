"""Where an OpenAI-compatible endpoint lives and how it is asked: :class:`LLMConfig`, and the command-line flags that
build one (:func:`add_endpoint_args`, :func:`config_from_args`).

Each user of an endpoint has a *role* (``judge``, ``curation``, ``summarizer`` ...) that names its environment
variables and flags: ``$LLAVIDAL_JUDGE_MODEL`` / ``--judge-model`` for the judge, ``$LLAVIDAL_CURATION_MODEL`` /
``--model`` for curation (whose flags have no prefix). Unset values fall back to ``$OPENAI_BASE_URL`` and
``$OPENAI_API_KEY``. The API key is never part of ``repr``, of the identity that keys caches, or of any record.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

__all__ = ["DEFAULT_OPENAI_BASE_URL", "DUMMY_API_KEY", "LLMConfig", "LLMConfigError", "add_endpoint_args",
           "config_from_args"]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DUMMY_API_KEY = "sk-no-key-required"  # local servers ignore the key; the openai client insists on one


class LLMConfigError(ValueError):
    """The endpoint cannot be configured (no model, no key for a hosted endpoint, bad values, openai missing)."""


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class LLMConfig:
    """An endpoint and the rules of asking it.

    ``base_url``: OpenAI-compatible root (``http://localhost:8000/v1`` vLLM, ``http://localhost:11434/v1`` Ollama,
    ``http://localhost:8080/v1`` llama.cpp); ``None``: ``$<ENV>_BASE_URL``, ``$OPENAI_BASE_URL``, then OpenAI.
    ``model``: as the server names it; ``None``: ``$<ENV>_MODEL``, else an error. ``api_key``: ``None``:
    ``$<ENV>_API_KEY``, ``$OPENAI_API_KEY``, else a dummy key for non-OpenAI URLs (an error for OpenAI's).
    ``temperature`` / ``seed``: 0 and 0 by default; ``None`` leaves the field out of requests (the server's
    default applies; ``seed=None`` also for servers that reject the field).
    ``max_tokens``: the reply budget when a prompt asks for less. ``timeout``: seconds per HTTP request.
    ``max_attempts``: HTTP requests per ask at most — the ``openai`` client retries timeouts, connection errors,
    408/409/429 and 5xx ``max_attempts - 1`` times with its own exponential backoff, honouring ``Retry-After``;
    other statuses (400, 401, 404 ...) are not retried. ``max_parse_failures``: malformed replies (or 200 bodies that
    are not chat completions) per call before it is recorded as failed; each re-ask uses ``seed + k``.
    ``max_consecutive_failures``: the circuit breaker — after that many calls in a row lost to the endpoint, later
    calls fail at once instead of spending minutes each. ``extra_body``: extra JSON fields for every request (e.g.
    Ollama ``{"options": {"num_ctx": 8192}}``), part of the identity.

    ``role`` / ``env`` / ``flag_prefix`` only shape messages and the environment lookup.
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    temperature: float | None = 0.0
    seed: int | None = 0
    max_tokens: int = 256
    timeout: float = 120.0
    max_attempts: int = 6
    max_parse_failures: int = 3
    max_consecutive_failures: int = 20
    extra_body: Mapping[str, Any] | None = None
    role: str = field(default="LLM", compare=False)
    env: str = field(default="LLAVIDAL_LLM", compare=False)
    flag_prefix: str = field(default="--", compare=False)

    @classmethod
    def ollama(cls, model: str = "llama3.1", host: str | None = None, **kw: Any) -> LLMConfig:
        """A local Ollama server (``$OLLAMA_HOST`` or ``http://localhost:11434``), e.g. the release's judge."""
        host = host or os.environ.get("OLLAMA_HOST") or "http://localhost:11434"
        if not host.startswith(("http://", "https://")):
            host = "http://" + host
        return cls(base_url=normalize_url(host) + "/v1", model=model, **kw)

    def with_(self, **changes: Any) -> LLMConfig:
        return replace(self, **changes)

    # -- resolution ---------------------------------------------------------------------------------------------
    def resolved_base_url(self) -> str:
        return normalize_url(self.base_url or _env(f"{self.env}_BASE_URL", "OPENAI_BASE_URL")
                             or DEFAULT_OPENAI_BASE_URL)

    def resolved_model(self) -> str:
        model = self.model or _env(f"{self.env}_MODEL")
        if not model:
            raise LLMConfigError(f"no {self.role} model: pass {self.flag_prefix}model NAME (e.g. gpt-4o-mini, or the "
                                 f"name your vLLM / Ollama / llama.cpp server serves) or set ${self.env}_MODEL")
        return model

    def resolved_api_key(self) -> str:
        key = self.api_key or _env(f"{self.env}_API_KEY", "OPENAI_API_KEY")
        if key:
            return key
        url = self.resolved_base_url()
        if "api.openai.com" in url:
            raise LLMConfigError(f"no API key for {url}: pass {self.flag_prefix}api-key or set ${self.env}_API_KEY "
                                 "or $OPENAI_API_KEY")
        return DUMMY_API_KEY

    def validate(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise LLMConfigError(f"{self.flag_prefix}temperature must be >= 0, got {self.temperature}")
        for name in ("max_attempts", "max_parse_failures", "max_consecutive_failures"):
            if getattr(self, name) < 1:
                raise LLMConfigError(f"{self.flag_prefix}{name.replace('_', '-')} must be >= 1, got "
                                     f"{getattr(self, name)}")
        if self.timeout <= 0 or self.max_tokens < 1:
            raise LLMConfigError(f"{self.flag_prefix}timeout must be > 0 and {self.flag_prefix}max-tokens >= 1")

    def identity(self) -> dict[str, Any]:
        """What makes two endpoints give the same replies: part of cache keys and of every record (no key)."""
        return {
            "base_url": self.resolved_base_url(),
            "model": self.resolved_model(),
            "temperature": None if self.temperature is None else float(self.temperature),
            "seed": None if self.seed is None else int(self.seed),
            "extra_body": dict(self.extra_body) if self.extra_body else None,
        }

    def record(self) -> dict[str, Any]:
        """Identity plus the asking rules, for manifests and summaries (never the key)."""
        return {**self.identity(), "max_tokens": self.max_tokens, "timeout": self.timeout,
                "max_attempts": self.max_attempts, "max_parse_failures": self.max_parse_failures,
                "max_consecutive_failures": self.max_consecutive_failures}


# ----------------------------------------------------------------------------------------------------------------
# command-line flags
# ----------------------------------------------------------------------------------------------------------------


def _flag(prefix: str, name: str) -> str:
    return f"--{prefix}-{name}" if prefix else f"--{name}"


def _dest(prefix: str, name: str) -> str:
    return (f"{prefix}_{name}" if prefix else name).replace("-", "_")


def _default(config_cls: type[LLMConfig], name: str) -> Any:
    return config_cls.__dataclass_fields__[name].default


def add_endpoint_args(p: argparse.ArgumentParser, prefix: str = "", config_cls: type[LLMConfig] = LLMConfig, *,
                      temperature: float | None = None, concurrency: int = 8,
                      title: str | None = None) -> argparse._ArgumentGroup:
    """The flags of one endpoint: ``--{prefix}-base-url`` (alias ``--{prefix}-endpoint``), ``-model``,
    ``-api-key``, ``-temperature``, ``-seed`` / ``-no-seed``, ``-max-tokens``, ``-timeout``, ``-max-attempts``,
    ``-max-parse-failures``, ``-max-consecutive-failures``, ``-concurrency``, ``-extra-body``. With ``prefix=""``
    the flags are bare (``--model``). A flag that is not given leaves ``config_cls``'s default (which also names
    the environment variables); ``temperature`` overrides that class's default for this command."""
    env, role = config_cls.env, config_cls.role
    g = p.add_argument_group(title or f"{role} endpoint (any OpenAI-compatible chat-completions server)")
    f = lambda name: _flag(prefix, name)  # noqa: E731
    d = lambda name: _dest(prefix, name)  # noqa: E731
    default = lambda name: _default(config_cls, name)  # noqa: E731
    g.add_argument(f("base-url"), f("endpoint"), dest=d("base_url"), default=None,
                   help=f"e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama), "
                        f"https://api.openai.com/v1 (default: ${env}_BASE_URL, $OPENAI_BASE_URL, then OpenAI)")
    g.add_argument(f("model"), dest=d("model"), default=None, help=f"model name as the server knows it "
                                                                   f"(default: ${env}_MODEL)")
    g.add_argument(f("api-key"), dest=d("api_key"), default=None,
                   help=f"default: ${env}_API_KEY or $OPENAI_API_KEY (local servers need none); never written "
                        "to any file")
    g.add_argument(f("temperature"), dest=d("temperature"), type=float, default=temperature,
                   help=f"default {temperature if temperature is not None else default('temperature')}")
    g.add_argument(f("seed"), dest=d("seed"), type=int, default=None,
                   help=f"sent with every request (default {default('seed')}); a re-ask after a malformed reply uses "
                        "seed+1, ...")
    g.add_argument(f("no-seed"), dest=d("no_seed"), action="store_true",
                   help="leave the seed out (servers that reject it)")
    g.add_argument(f("max-tokens"), dest=d("max_tokens"), type=int, default=None,
                   help=f"reply budget (default {default('max_tokens')}, or more where a prompt needs it)")
    g.add_argument(f("timeout"), dest=d("timeout"), type=float, default=None,
                   help=f"seconds per HTTP request (default {default('timeout'):g})")
    g.add_argument(f("max-attempts"), dest=d("max_attempts"), type=int, default=None,
                   help=f"HTTP requests per call at most: timeouts, 429 and 5xx are retried with backoff "
                        f"(default {default('max_attempts')})")
    g.add_argument(f("max-parse-failures"), dest=d("max_parse_failures"), type=int, default=None,
                   help=f"malformed replies per call before it is recorded as failed "
                        f"(default {default('max_parse_failures')})")
    g.add_argument(f("max-consecutive-failures"), dest=d("max_consecutive_failures"), type=int, default=None,
                   help=f"stop asking after this many calls in a row fail on the endpoint's side "
                        f"(default {default('max_consecutive_failures')})")
    g.add_argument(f("concurrency"), dest=d("concurrency"), type=int, default=concurrency,
                   help=f"requests in flight at most, per process (default {concurrency})")
    g.add_argument(f("extra-body"), dest=d("extra_body"), default=None,
                   help='extra JSON fields for every request, e.g. \'{"options": {"num_ctx": 8192}}\' (Ollama)')
    return g


def config_from_args(args: argparse.Namespace, prefix: str = "", config_cls: type[LLMConfig] = LLMConfig,
                     **overrides: Any) -> LLMConfig:
    """A ``config_cls`` (e.g. :class:`LLMConfig` or a subclass with a role's names and defaults) from the flags
    added by :func:`add_endpoint_args` with the same ``prefix``: flags not given keep the class's defaults;
    ``overrides`` win over both."""
    get = lambda name: getattr(args, _dest(prefix, name))  # noqa: E731
    kw: dict[str, Any] = {}
    if get("extra_body"):
        try:
            extra = json.loads(get("extra_body"))
        except json.JSONDecodeError as e:
            raise LLMConfigError(f"{_flag(prefix, 'extra-body')} is not valid JSON: {e}") from None
        if not isinstance(extra, dict):
            raise LLMConfigError(f"{_flag(prefix, 'extra-body')} must be a JSON object")
        kw["extra_body"] = extra
    for name in ("base_url", "model", "api_key", "temperature", "seed", "max_tokens", "timeout", "max_attempts",
                 "max_parse_failures", "max_consecutive_failures"):
        if get(name) is not None:
            kw[name] = get(name)
    if get("no_seed"):
        kw["seed"] = None
    kw.update(overrides)
    cfg = config_cls(**kw)
    cfg.validate()
    return cfg

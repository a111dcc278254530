"""The one client for OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama's ``/v1``, llama.cpp, a local stub).

Everything in llavidal that asks an LLM goes through here: the description judge, the MCQ reply parser, the TSU
summariser and the curation steps (captions, descriptions, QA).

- :mod:`.config` — :class:`LLMConfig`: where the endpoint is, how it is asked, how long to wait; the command-line
  flags every LLM user shares (:func:`add_endpoint_args`).
- :mod:`.client` — :class:`LLMClient`: one call = send, let the ``openai`` client retry transport failures with its
  own backoff (it honours ``Retry-After``), parse the reply with the caller's parser and re-ask a bounded number of
  times when it is malformed; a circuit breaker; statistics; an optional reply cache. Failures come back as values.
- :mod:`.cache` — :class:`ReplyCache`, a SQLite store of parsed-OK replies shared by processes.
- :mod:`.parsing` — the reply clean-up every parser starts from (``<think>`` blocks, code fences, literals).
- :mod:`.prompts` — :class:`PromptSet`, a named, versioned set of prompts checked against a spec of placeholders.
- :mod:`.concurrency` — :func:`run_bounded`, bounded concurrency with results handed to the calling thread.
"""
from .cache import ReplyCache
from .client import CallResult, LLMClient, LLMStats
from .concurrency import run_bounded
from .config import DEFAULT_OPENAI_BASE_URL, DUMMY_API_KEY, LLMConfig, LLMConfigError, add_endpoint_args
from .parsing import ReplyError
from .prompts import Prompt, PromptSet, PromptSetError, PromptSpec

__all__ = [
    "DEFAULT_OPENAI_BASE_URL", "DUMMY_API_KEY", "CallResult", "LLMClient", "LLMConfig", "LLMConfigError",
    "LLMStats", "Prompt", "PromptSet", "PromptSetError", "PromptSpec", "ReplyCache", "ReplyError",
    "add_endpoint_args", "run_bounded",
]

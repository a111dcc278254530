"""The clean-up every reply parser starts from: reasoning blocks, code fences, Python/JSON literals.

Parsers of particular reply shapes live with their users (``eval.judge.parse_score`` / ``parse_letter``,
``curation.steps.parse_qa_list`` ...); they raise :class:`ReplyError` (a ``ValueError``) for a reply that does not
have the expected shape, which makes the client ask again, a bounded number of times.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["ReplyError", "balanced_spans", "clean_reply", "literal_dicts", "load_literal", "short", "strip_fences",
           "strip_think"]


class ReplyError(ValueError):
    """A reply that does not have the expected shape."""


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?|```")
_BRACED = re.compile(r"\{[^{}]*\}")


def strip_think(text: str) -> str:
    """Without the ``<think>...</think>`` blocks of reasoning models."""
    return _THINK.sub(" ", text)


def strip_fences(text: str) -> str:
    """Without code fences and ``<think>`` blocks, stripped."""
    return _FENCE.sub("\n", strip_think(text)).strip()


def clean_reply(text: str | None) -> str:
    """The reply without ``<think>`` blocks and code fences; :class:`ReplyError` when nothing is left."""
    if text is None or not str(text).strip():
        raise ReplyError("empty reply")
    body = strip_fences(str(text))
    if not body:
        raise ReplyError("empty reply")
    return body


def short(text: Any, n: int = 120) -> str:
    """One line of at most ``n`` characters, for error messages."""
    s = "" if text is None else str(text).replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


def load_literal(text: str) -> Any:
    """``text`` as JSON or as a Python literal (never evaluated as code), or ``None``."""
    for loader in (json.loads, ast.literal_eval):
        try:
            return loader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def literal_dicts(text: str) -> list[dict]:
    """Every ``{...}`` without nesting in ``text`` that reads as a Python literal or JSON object."""
    out = []
    for m in _BRACED.finditer(text):
        obj = load_literal(m.group(0))
        if isinstance(obj, dict):
            out.append(obj)
    return out


def balanced_spans(text: str, opener: str) -> Iterator[str]:
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
                if not (c == "'" and 0 < j < n - 1 and text[j - 1].isalnum() and text[j + 1].isalnum()):
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

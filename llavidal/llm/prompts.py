"""Prompt sets: named, versioned, loadable from JSON, checked against a spec of what each prompt must contain.

A set is a JSON object::

    {"name": "my-judge", "version": "2", "description": "...",
     "prompts": {"<key>": {"system": "...", "user": "... ${placeholder} ...", "max_tokens": 700}, ...}}

Placeholders use :class:`string.Template` syntax (``${name}``), so literal braces (``{'score': N}``, JSON examples)
need no escaping and a value that itself contains ``${...}`` is inserted verbatim. A subclass of :class:`PromptSet`
declares its keys in ``SPECS`` (which placeholders each prompt must use and may use, the kind of reply it asks for,
whether it needs a system message) and its built-in wording in ``default_dict``. ``ident`` (``name@version``) is
recorded beside every result made with the set and is part of cache keys: bump ``version`` whenever the wording
changes.
"""
from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Prompt", "PromptSet", "PromptSetError", "PromptSpec"]


class PromptSetError(ValueError):
    """A prompt set is incomplete or malformed; the message names the file and the prompt."""


@dataclass(frozen=True)
class PromptSpec:
    """What one prompt of a set must look like. ``required``: placeholders its texts must use; ``optional``:
    placeholders they may use besides; ``kind``: the reply it asks for (the owner's label, e.g. ``score``);
    ``system``: whether a non-empty system message is required."""

    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    kind: str = "text"
    system: bool = True

    @property
    def allowed(self) -> frozenset[str]:
        return self.required | self.optional


def _placeholders(text: str, where: str) -> set[str]:
    tpl = string.Template(text)
    if not tpl.is_valid():
        raise PromptSetError(f"{where}: malformed placeholder (use ${{name}}; write $$ for a literal $)")
    return set(tpl.get_identifiers())


@dataclass(frozen=True)
class Prompt:
    key: str
    kind: str
    system: str
    user: str
    max_tokens: int | None = None
    allowed: frozenset[str] = frozenset()

    @property
    def used(self) -> set[str]:
        return set(string.Template(self.system).get_identifiers()) | set(string.Template(self.user).get_identifiers())

    def render(self, **fields: Any) -> list[dict[str, str]]:
        """Chat messages with ``fields`` filled in: every placeholder the texts use must be given, and nothing the
        prompt's spec does not know (``TypeError`` otherwise). A system message only when the prompt has one."""
        missing = sorted(self.used - fields.keys())
        extra = sorted(fields.keys() - self.allowed - self.used)
        if missing or extra:
            raise TypeError(f"prompt {self.key!r}: missing fields {missing}, unexpected fields {extra}")
        values = {k: "" if v is None else str(v) for k, v in fields.items()}
        msgs = []
        if self.system.strip():
            msgs.append({"role": "system", "content": string.Template(self.system).substitute(values)})
        msgs.append({"role": "user", "content": string.Template(self.user).substitute(values)})
        return msgs


@dataclass(frozen=True)
class PromptSet:
    """A validated, versioned set of prompts; subclasses set ``SPECS`` and ``default_dict``."""

    SPECS: ClassVar[Mapping[str, PromptSpec]] = {}

    name: str
    version: str
    prompts: Mapping[str, Prompt]
    description: str = ""
    source: str | None = field(default=None, compare=False)

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"

    def __getitem__(self, key: str) -> Prompt:
        return self.prompts[key]

    # -- the built-in set -----------------------------------------------------------------------------------------
    @classmethod
    def default_dict(cls) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def default(cls) -> PromptSet:
        """The built-in set (built once per class)."""
        cached = cls.__dict__.get("_default")
        if cached is None:
            cached = cls.from_dict(cls.default_dict(), source="builtin")
            cls._default = cached
        return cached

    # -- (de)serialisation ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> PromptSet:
        where = source or f"{cls.__name__} prompt set"
        if not isinstance(data, Mapping):
            raise PromptSetError(f"{where}: expected a JSON object at the top level")
        for k in ("name", "version"):
            if not isinstance(data.get(k), (str, int)) or not str(data.get(k)).strip():
                raise PromptSetError(f"{where}: missing or empty {k!r}")
        raw = data.get("prompts")
        if not isinstance(raw, Mapping):
            raise PromptSetError(f"{where}: missing 'prompts' object")
        missing = [k for k in cls.SPECS if k not in raw]
        if missing:
            raise PromptSetError(f"{where}: missing prompts {missing} (required: {sorted(cls.SPECS)})")
        unknown = sorted(set(raw) - set(cls.SPECS))
        if unknown:
            raise PromptSetError(f"{where}: unknown prompts {unknown}")
        prompts = {key: cls._prompt(key, spec, raw[key], f"{where}: prompts.{key}") for key, spec in cls.SPECS.items()}
        return cls(name=str(data["name"]).strip(), version=str(data["version"]).strip(), prompts=prompts,
                   description=str(data.get("description", "")), source=source)

    @staticmethod
    def _prompt(key: str, spec: PromptSpec, p: Any, at: str) -> Prompt:
        if not isinstance(p, Mapping):
            raise PromptSetError(f"{at}: expected an object with 'system' and 'user'")
        system, user = p.get("system", ""), p.get("user")
        if not isinstance(user, str) or not user.strip():
            raise PromptSetError(f"{at}: missing or empty 'user'")
        if not isinstance(system, str) or (spec.system and not system.strip()):
            raise PromptSetError(f"{at}: missing or empty 'system'")
        kind = p.get("kind", spec.kind)
        if kind != spec.kind:
            raise PromptSetError(f"{at}: kind must be {spec.kind!r}, got {kind!r}")
        used = _placeholders(system, f"{at}.system") | _placeholders(user, f"{at}.user")
        if spec.required - used:
            raise PromptSetError(f"{at}: placeholders missing: {sorted('${' + n + '}' for n in spec.required - used)}")
        if used - spec.allowed:
            raise PromptSetError(f"{at}: unknown placeholders {sorted('${' + n + '}' for n in used - spec.allowed)} "
                                 f"(allowed: {sorted(spec.allowed)})")
        mt = p.get("max_tokens")
        if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
            raise PromptSetError(f"{at}: max_tokens must be a positive integer")
        return Prompt(key=key, kind=kind, system=system, user=user, max_tokens=mt, allowed=spec.allowed)

    def to_dict(self) -> dict[str, Any]:
        prompts = {}
        for k, p in self.prompts.items():
            d: dict[str, Any] = {"kind": p.kind, "system": p.system, "user": p.user}
            if p.max_tokens is not None:
                d["max_tokens"] = p.max_tokens
            prompts[k] = d
        return {"name": self.name, "version": self.version, "description": self.description, "prompts": prompts}

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PromptSet:
        """The set in a JSON file (validated), or the built-in set when ``path`` is ``None``."""
        if path is None:
            return cls.default()
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PromptSetError(f"{p}: no such file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PromptSetError(f"{p}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(p))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the set as JSON (atomically), e.g. to start editing the built-in wording."""
        from ..io_utils import atomic_write_json

        return atomic_write_json(path, self.to_dict())

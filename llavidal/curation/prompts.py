"""Curation prompts (docs/design.md#curation, steps 3-5): a named, versioned set, loadable from JSON.

The default set, ``llavidal-curation@1``, has four prompts, all written for this project:

``caption``     one video frame -> a detailed caption (person, actions, objects, setting); no placeholders.
``describe``    the frame captions of a stitched video (time-stamped, in order) and its action sentence -> one
                150-300-word description (``${captions}``, ``${actions}``, ``${min_words}``, ``${max_words}``).
``qa_summary``  the description -> three question/answer pairs that ask to summarise the video.
``qa_detail``   the description -> three question/answer pairs about details, at least one about the order of
                the actions (both QA prompts: ``${description}``, ``${actions}``, ``${captions}``).

Placeholders use :class:`string.Template` syntax (``${name}``) so that the JSON examples in the prompts need no
escaping. The ident ``name@version`` is recorded beside every result; results made with another ident are never
mixed into an output folder (the step stops and says so). Export the set with ``save_curation_prompts`` to edit
it, then pass ``--prompts FILE`` to the steps; bump ``version`` whenever the wording changes.
"""
from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_NAME", "DEFAULT_VERSION", "REQUIRED_PLACEHOLDERS", "CurationPrompt", "CurationPrompts",
           "PromptError", "default_curation_prompts", "load_curation_prompts", "save_curation_prompts"]

DEFAULT_NAME = "llavidal-curation"
DEFAULT_VERSION = "1"

_QA_FIELDS = frozenset({"description", "actions", "captions"})
#: prompt key -> the placeholders its system + user text may use (``required`` ones must appear)
REQUIRED_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "caption": frozenset(),
    "describe": frozenset({"captions", "actions"}),
    "qa_summary": frozenset({"description"}),
    "qa_detail": frozenset({"description", "actions"}),
}
ALLOWED_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "caption": frozenset(),
    "describe": frozenset({"captions", "actions", "min_words", "max_words"}),
    "qa_summary": _QA_FIELDS,
    "qa_detail": _QA_FIELDS,
}


class PromptError(ValueError):
    """A prompt file is incomplete or malformed; the message names the file and the prompt."""


# ----------------------------------------------------------------------------------------------------------------
# default wording
# ----------------------------------------------------------------------------------------------------------------

_CAPTION = {
    "system": "",
    "user": ("This is one frame of a video of a person doing everyday activities at home. Describe the frame in "
             "detail: what the person is doing (posture, motion, what the hands are doing), the objects the person "
             "holds or touches, the other objects and furniture in view, the setting, and the colours of clothes "
             "and objects. Write plain sentences; give no coordinates or bounding boxes."),
    "max_tokens": 256,
}

_DESCRIBE = {
    "system": (
        "You write descriptions of short videos of a person doing everyday activities at home. You cannot see the "
        "video. You get two sources about it:\n"
        "1. captions of single frames, taken twice a second, with their times; each caption was written from one "
        "still image by an automatic captioner, so captions repeat each other, miss things and sometimes "
        "contradict each other;\n"
        "2. the list of the actions the person performs, in the order they happen. This list is certain.\n\n"
        "Write ONE paragraph that describes the whole video:\n"
        "- tell the actions in the order of the action list; that order is the backbone of the description;\n"
        "- use the captions for the details: the objects the person handles, clothes, furniture, room and colours;\n"
        "- keep what several captions agree on, drop what only one caption claims or what contradicts the action "
        "list, and never repeat yourself;\n"
        "- do not mention captions, frames, images, timestamps or that the text is generated;\n"
        "- between ${min_words} and ${max_words} words: nearer ${min_words} when the sources say little, nearer "
        "${max_words} when they are rich.\n"
        "Reply with the paragraph only: no title, no preamble, no list, no quotes."),
    "user": ("Frame captions, in time order:\n${captions}\n\n"
             "Actions, in order: ${actions}\n\n"
             "Write the description now."),
    "max_tokens": 700,
}

_QA_FORMAT = ("Reply with a JSON list of exactly three objects and nothing else, each with the keys \"Q\" (the "
              "question) and \"A\" (the answer), for example:\n"
              "[{\"Q\": \"first question\", \"A\": \"first answer\"}, {\"Q\": \"second question\", \"A\": \"second "
              "answer\"}, {\"Q\": \"third question\", \"A\": \"third answer\"}]")

_QA_SUMMARY = {
    "system": (
        "You write training data for a video assistant. You get the description of a short video of a person "
        "doing everyday activities at home; treat it as what the video shows. Write three question-answer pairs "
        "in which a user asks for a summary or an overall account of the video and the assistant answers as if "
        "it had watched it.\n"
        "- The three questions ask the same kind of thing in different words (e.g. 'What happens in this "
        "video?', 'Can you summarise the video?', 'Give me an overview of what the person does.').\n"
        "- Each answer is a complete, fluent summary of the description in its own words, giving the actions in "
        "the order they happen and the main objects and setting.\n"
        "- Use only what the description says; do not mention the description, captions or frames.\n" + _QA_FORMAT),
    "user": "Video description:\n${description}\n\nWrite the three summary question-answer pairs now.",
    "max_tokens": 1500,
}

_QA_DETAIL = {
    "system": (
        "You write training data for a video assistant. You get the description of a short video of a person "
        "doing everyday activities at home, and the list of the actions performed, in order; treat both as what "
        "the video shows. Write three question-answer pairs in which a user asks about specific details of the "
        "video and the assistant answers as if it had watched it.\n"
        "- The first question asks about the order of the actions (e.g. 'In what order does the person do "
        "things?', 'What does the person do first, and what comes next?'); its answer gives every action of the "
        "list in that order.\n"
        "- The other two ask about different details: the objects the person uses, the person's appearance or "
        "clothes, the setting, or how one action is carried out.\n"
        "- Answers are specific and use only what the description and the action list say; do not mention the "
        "description, captions or frames.\n" + _QA_FORMAT),
    "user": ("Video description:\n${description}\n\nActions, in order: ${actions}\n\n"
             "Write the three detail question-answer pairs now."),
    "max_tokens": 1500,
}


def _default_dict() -> dict[str, Any]:
    return {"name": DEFAULT_NAME, "version": DEFAULT_VERSION,
            "description": "ADL-X curation prompts: frame caption, weakly supervised description, summary and "
                           "detail QA generation",
            "prompts": {"caption": dict(_CAPTION), "describe": dict(_DESCRIBE), "qa_summary": dict(_QA_SUMMARY),
                        "qa_detail": dict(_QA_DETAIL)}}


# ----------------------------------------------------------------------------------------------------------------
# prompt set
# ----------------------------------------------------------------------------------------------------------------


def _placeholders(text: str, where: str) -> set[str]:
    tpl = string.Template(text)
    if not tpl.is_valid():
        raise PromptError(f"{where}: malformed placeholder (use ${{name}}; write $$ for a literal $)")
    return set(tpl.get_identifiers())


@dataclass(frozen=True)
class CurationPrompt:
    key: str
    system: str
    user: str
    max_tokens: int | None = None

    def render(self, **fields: Any) -> list[dict[str, str]]:
        """Chat messages with ``fields`` filled in (a system message only when the prompt has one)."""
        values = {k: "" if v is None else str(v) for k, v in fields.items()}
        msgs = []
        if self.system.strip():
            msgs.append({"role": "system", "content": string.Template(self.system).substitute(values)})
        msgs.append({"role": "user", "content": string.Template(self.user).substitute(values)})
        return msgs


@dataclass(frozen=True)
class CurationPrompts:
    """A validated, versioned set of the four curation prompts; ``ident`` is ``name@version``."""

    name: str
    version: str
    prompts: Mapping[str, CurationPrompt]
    description: str = ""
    source: str | None = field(default=None, compare=False)

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"

    def __getitem__(self, key: str) -> CurationPrompt:
        return self.prompts[key]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> CurationPrompts:
        where = source or "curation prompts"
        if not isinstance(data, Mapping):
            raise PromptError(f"{where}: expected a JSON object at the top level")
        for k in ("name", "version"):
            if not isinstance(data.get(k), (str, int)) or not str(data.get(k)).strip():
                raise PromptError(f"{where}: missing or empty {k!r}")
        raw = data.get("prompts")
        if not isinstance(raw, Mapping):
            raise PromptError(f"{where}: missing 'prompts' object")
        missing = [k for k in REQUIRED_PLACEHOLDERS if k not in raw]
        unknown = sorted(set(raw) - set(REQUIRED_PLACEHOLDERS))
        if missing or unknown:
            raise PromptError(f"{where}: prompts missing {missing}, unknown {unknown} "
                              f"(expected exactly {sorted(REQUIRED_PLACEHOLDERS)})")
        prompts = {}
        for key in REQUIRED_PLACEHOLDERS:
            p, at = raw[key], f"{where}: prompts.{key}"
            if not isinstance(p, Mapping):
                raise PromptError(f"{at}: expected an object with 'system' and 'user'")
            system, user = p.get("system", ""), p.get("user")
            if not isinstance(system, str) or not isinstance(user, str) or not user.strip():
                raise PromptError(f"{at}: 'user' must be a non-empty string and 'system' a string")
            used = _placeholders(system, f"{at}.system") | _placeholders(user, f"{at}.user")
            if REQUIRED_PLACEHOLDERS[key] - used:
                raise PromptError(f"{at}: placeholders missing: "
                                  f"{sorted('${' + n + '}' for n in REQUIRED_PLACEHOLDERS[key] - used)}")
            unknown_names = used - ALLOWED_PLACEHOLDERS[key]
            if unknown_names:
                raise PromptError(f"{at}: unknown placeholders {sorted('${' + n + '}' for n in unknown_names)} "
                                  f"(allowed: {sorted(ALLOWED_PLACEHOLDERS[key])})")
            mt = p.get("max_tokens")
            if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
                raise PromptError(f"{at}: max_tokens must be a positive integer")
            prompts[key] = CurationPrompt(key, system, user, mt)
        return cls(str(data["name"]).strip(), str(data["version"]).strip(), prompts,
                   str(data.get("description", "")), source)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for k, p in self.prompts.items():
            out[k] = {"system": p.system, "user": p.user}
            if p.max_tokens is not None:
                out[k]["max_tokens"] = p.max_tokens
        return {"name": self.name, "version": self.version, "description": self.description, "prompts": out}


_DEFAULT: CurationPrompts | None = None


def default_curation_prompts() -> CurationPrompts:
    """The built-in ``llavidal-curation@1`` set."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = CurationPrompts.from_dict(_default_dict(), source="builtin")
    return _DEFAULT


def load_curation_prompts(path: str | os.PathLike[str] | None = None) -> CurationPrompts:
    """The set in a JSON file (validated), or the built-in set when ``path`` is ``None``."""
    if path is None:
        return default_curation_prompts()
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptError(f"{p}: no such file") from None
    except json.JSONDecodeError as e:
        raise PromptError(f"{p}: not valid JSON ({e})") from None
    return CurationPrompts.from_dict(data, source=str(p))


def save_curation_prompts(prompts: CurationPrompts, path: str | os.PathLike[str]) -> Path:
    from ..io_utils import atomic_write_json

    return atomic_write_json(path, prompts.to_dict())

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

import os
from pathlib import Path
from typing import Any

from ..llm.prompts import PromptSet, PromptSetError, PromptSpec

__all__ = ["CURATION_SPECS", "DEFAULT_NAME", "DEFAULT_VERSION", "CurationPrompts", "PromptSetError",
           "default_curation_prompts", "load_curation_prompts", "save_curation_prompts"]

DEFAULT_NAME = "llavidal-curation"
DEFAULT_VERSION = "1"

_QA = frozenset({"description", "actions", "captions"})
#: prompt key -> the placeholders it must use and may use (no kind: every reply is free text)
CURATION_SPECS: dict[str, PromptSpec] = {
    "caption": PromptSpec(system=False),
    "describe": PromptSpec(frozenset({"captions", "actions"}), frozenset({"min_words", "max_words"}), system=False),
    "qa_summary": PromptSpec(frozenset({"description"}), _QA - {"description"}, system=False),
    "qa_detail": PromptSpec(frozenset({"description", "actions"}), _QA - {"description", "actions"}, system=False),
}


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


class CurationPrompts(PromptSet):
    """The four curation prompts (``CURATION_SPECS``)."""

    SPECS = CURATION_SPECS

    @classmethod
    def default_dict(cls) -> dict[str, Any]:
        return {"name": DEFAULT_NAME, "version": DEFAULT_VERSION,
                "description": "ADL-X curation prompts: frame caption, weakly supervised description, summary and "
                               "detail QA generation",
                "prompts": {"caption": dict(_CAPTION), "describe": dict(_DESCRIBE), "qa_summary": dict(_QA_SUMMARY),
                            "qa_detail": dict(_QA_DETAIL)}}


def default_curation_prompts() -> CurationPrompts:
    """The built-in ``llavidal-curation@1`` set."""
    return CurationPrompts.default()


def load_curation_prompts(path: str | os.PathLike[str] | None = None) -> CurationPrompts:
    """The set in a JSON file (validated), or the built-in set when ``path`` is ``None``."""
    return CurationPrompts.load(path)


def save_curation_prompts(prompts: CurationPrompts, path: str | os.PathLike[str]) -> Path:
    return prompts.save(path)

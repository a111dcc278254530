"""Loaders for the six ADL-X benchmarks (docs/design.md#benchmarks), in the formats of the published benchmark files.

Every benchmark is read into a list of :class:`EvalItem`, one per record, in file order. A record that cannot be
read (a missing field, an answer that is not one of the options, an ``Options`` string that does not parse ...) is
not fatal: it is skipped and reported as a :class:`Problem` with its position in the file and the reason. A file
that is not the task's format at all (not JSON, a list where a dict was expected, records of another benchmark)
raises :class:`TaskFormatError`, which names the file, the task and what was expected.

Formats (quirks included):

``charades-ar``  list of ``{id, Q, Options, "Ground Truth"}``. ``Options`` is one string
                 ``"1. ['a', 'b'] 2. [...] 3. [...] 4. [...]"``; each bracket group is scanned (quotes respected)
                 and read with :func:`ast.literal_eval`, never ``eval``. An option is a list of action names,
                 rendered as text joined with ", ". The answer is the option equal to ``Ground Truth``.
                 Video ``{id}.mp4``.
``smarthome-ar`` dict ``"0"..`` of ``{video_id, question, choices{"1".."4"}, ground_truth}``; stale output fields
                 (``output``, ``prediction``) are ignored. ``video_id`` is an absolute path of the authors' machine:
                 only its basename is used. The answer is an option's text, mapped to its letter.
``lemma-tc``     dict of ``{video_id, person_id, question, choices{"A".."F"}, answer, start_frame, end_frame, ...}``;
                 video ``{video_id}_{start_frame}_{end_frame}.mp4``.
``tsu-tc``       list of ``{video_path, question, options{"A".."D"}, correct_answer}``; ``video_path`` is relative to
                 the video folder (e.g. ``P17/P17T11C06/clips/clip_1.mp4``).
``charades-desc`` list of ``{video_name, Q, A, cons_Q1, cons_Q2, cons_A}``; video ``{video_name}.mp4``.
``tsu-desc``     dict ``{video_name: description}``. Each long video was cut into 60 s clips
                 ``{video_name}_clip{i}.mp4``; :func:`list_clips` lists them in numeric clip order.

Those are the legacy files. The release's current evaluation reads all four MCQ benchmarks in one **combined**
format, detected from its records: a JSON list of ``{video_filename, question, answer_choices {"A": ...},
ground_truth_letter}`` (other keys are kept in ``extra``); ``video_filename`` is relative to the video folder. An item
keeps its record's position (``index``) and the format it came from (``format``).

Numbered options (Charades-AR, Smarthome-AR) are shown as letters: 1 -> A, 2 -> B, ...; such items carry
``numbered=True`` so that a reply naming the number ("2.", "option 2") can be read as well.

A video path that leaves the video folder (absolute, or with a ``..`` part) is refused with an error naming the
record: no benchmark record can make the program read outside the folders it was given.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------------------------------
# Prompts. Change PROMPT_SET_VERSION whenever any text below changes: scores are only comparable within one set.
# ----------------------------------------------------------------------------------------------------------------
PROMPT_SET_VERSION = "llavidal-adlx-prompts/1"

#: the instruction placed between the question and the choices of a multiple-choice item
MCQ_INSTRUCTION = "Answer with one of the following choices:"
#: how a multiple-choice prompt is put together; ``choices`` is ``(A) text (B) text ...``
MCQ_PROMPT_TEMPLATE = "{question} {instruction} {choices}"

#: TSU-Description has no question in its file: every clip is asked this one
TSU_DESC_QUESTION = ("Describe what the person in the video does: the main actions, in order, and the objects "
                     "the person handles.")
#: the two fixed paraphrases asked for the TSU-Description consistency score
TSU_DESC_CONSISTENCY_QUESTIONS = (
    "Which activities does the person carry out in this video?",
    "Tell me what happens in the scene, action by action.",
)

#: option letters the loaders and the parser support (six: LEMMA-TC has A-F)
LETTERS = "ABCDEF"

#: the five Video-ChatGPT judge criteria (llavidal.eval.prompts.CRITERIA; repeated to keep this module light)
ALL_CRITERIA = ("correctness", "detail", "context", "temporal", "consistency")


@dataclass(frozen=True)
class TaskInfo:
    """What is known about one benchmark."""

    name: str                 # canonical task name, e.g. "charades-ar"
    title: str                # the benchmark's name in the paper, e.g. "Charades-AR"
    kind: str                 # "mcq" or "description"
    num_options: int | None   # options per question (None for description tasks)
    numbered: bool            # options are numbered 1..n in the file (shown as A..)
    container: type           # list or dict: the file's top-level JSON type
    video: str                # how an item's video file is named
    expected: str             # one-line description of the file format, for error messages
    family: str = "adlx"      # adlx | videochatgpt | zeroshot-qa | mvbench (docs/design.md#general-benchmarks)
    criteria: tuple[str, ...] = ()  # description tasks: the judge criteria that make up the score


TASKS: dict[str, TaskInfo] = {
    "smarthome-ar": TaskInfo(
        "smarthome-ar", "Smarthome-AR", "mcq", 4, True, dict, "basename of video_id",
        'a JSON object "0", "1", ... of {video_id, question, choices {"1".."4"}, ground_truth}'),
    "charades-ar": TaskInfo(
        "charades-ar", "Charades-AR", "mcq", 4, True, list, "{id}.mp4",
        'a JSON list of {id, Q, Options, "Ground Truth"} with Options as one string "1. [...] 2. [...] ..."'),
    "lemma-tc": TaskInfo(
        "lemma-tc", "LEMMA-TC", "mcq", 6, False, dict, "{video_id}_{start_frame}_{end_frame}.mp4",
        'a JSON object of {video_id, person_id, question, choices {"A".."F"}, answer, start_frame, end_frame}'),
    "tsu-tc": TaskInfo(
        "tsu-tc", "TSU-TC", "mcq", 4, False, list, "video_path (relative)",
        'a JSON list of {video_path, question, options {"A".."D"}, correct_answer}'),
    "charades-desc": TaskInfo(
        "charades-desc", "Charades-Description", "description", None, False, list, "{video_name}.mp4",
        "a JSON list of {video_name, Q, A, cons_Q1, cons_Q2, cons_A}", criteria=ALL_CRITERIA),
    "tsu-desc": TaskInfo(
        "tsu-desc", "TSU-Description", "description", None, False, dict, "{video_name}_clip{i}.mp4 clips",
        "a JSON object {video_name: description text}", criteria=ALL_CRITERIA),
    # the general video benchmarks (readers in llavidal/eval/general.py)
    "vcgbench-generic": TaskInfo(
        "vcgbench-generic", "Video-ChatGPT generic", "description", None, False, list, "{video_name}.mp4/.avi/.mov/.mkv",
        "a JSON list of {video_name, Q, A} (Video-ChatGPT generic_qa.json)", family="videochatgpt",
        criteria=("correctness", "detail", "context")),
    "vcgbench-temporal": TaskInfo(
        "vcgbench-temporal", "Video-ChatGPT temporal", "description", None, False, list,
        "{video_name}.mp4/.avi/.mov/.mkv", "a JSON list of {video_name, Q, A} (Video-ChatGPT temporal_qa.json)",
        family="videochatgpt", criteria=("temporal",)),
    "vcgbench-consistency": TaskInfo(
        "vcgbench-consistency", "Video-ChatGPT consistency", "description", None, False, list,
        "{video_name}.mp4/.avi/.mov/.mkv", "a JSON list of {video_name, Q1, Q2, A} (Video-ChatGPT consistency_qa.json)",
        family="videochatgpt", criteria=("consistency",)),
    "msvd-qa": TaskInfo(
        "msvd-qa", "MSVD-QA", "openqa", None, False, list, "{clip}.avi via youtube_mapping.txt (vid{video_id})",
        "a JSON list of {question, answer, video_id, id} (test_qa.json), or the pair test_q.json / test_a.json",
        family="zeroshot-qa"),
    "msrvtt-qa": TaskInfo(
        "msrvtt-qa", "MSRVTT-QA", "openqa", None, False, list, "video{video_id}.mp4",
        "a JSON list of {question, answer, video_id, id} (test_qa.json), or the pair test_q.json / test_a.json",
        family="zeroshot-qa"),
    "activitynet-qa": TaskInfo(
        "activitynet-qa", "ActivityNet-QA", "openqa", None, False, list, "{video_name}.mp4 (or v_{video_name}.mp4)",
        "test_q.json, a JSON list of {video_name, question_id, question}, with test_a.json, a JSON list of "
        "{question_id, answer, type}", family="zeroshot-qa"),
    "mvbench": TaskInfo(
        "mvbench", "MVBench", "mcq", None, False, list, "video (relative)",
        "a JSON list of {video, question, candidates [...], answer} (one MVBench task file, e.g. "
        "action_sequence.json)", family="mvbench"),
}

_ALIASES = {
    "videochatgpt-generic": "vcgbench-generic", "videochatgpt-temporal": "vcgbench-temporal",
    "videochatgpt-consistency": "vcgbench-consistency", "msvd": "msvd-qa", "msrvtt": "msrvtt-qa",
    "anet-qa": "activitynet-qa", "activitynetqa": "activitynet-qa",
    "smarthome": "smarthome-ar", "sh-ar": "smarthome-ar", "charades": "charades-ar", "lemma": "lemma-tc",
    "tsu": "tsu-tc", "charades-description": "charades-desc", "charades-descriptions": "charades-desc",
    "tsu-description": "tsu-desc", "tsu-descriptions": "tsu-desc",
}

# keys whose presence makes a record look like a given task (used to tell a wrong file from bad records)
_SIGNATURES: dict[str, frozenset[str]] = {
    "smarthome-ar": frozenset({"video_id", "choices", "ground_truth"}),
    "charades-ar": frozenset({"Options", "Ground Truth"}),
    "lemma-tc": frozenset({"video_id", "choices", "answer", "start_frame", "end_frame"}),
    "tsu-tc": frozenset({"video_path", "options", "correct_answer"}),
    "charades-desc": frozenset({"video_name", "Q", "A"}),
    "vcgbench-generic": frozenset({"video_name", "Q", "A"}),
    "vcgbench-temporal": frozenset({"video_name", "Q", "A"}),
    "vcgbench-consistency": frozenset({"video_name", "Q1", "Q2", "A"}),
    "msvd-qa": frozenset({"question", "answer", "video_id"}),
    "msrvtt-qa": frozenset({"question", "answer", "video_id"}),
    "activitynet-qa": frozenset({"video_name", "question", "question_id"}),
    "mvbench": frozenset({"video", "question", "candidates", "answer"}),
}


#: keys of a record of the combined MCQ format (the release's current evaluation; all four MCQ benchmarks)
COMBINED_KEYS = frozenset({"video_filename", "question", "answer_choices", "ground_truth_letter"})
COMBINED_EXPECTED = ('the combined MCQ format: a JSON list of {video_filename, question, answer_choices {"A": ...}, '
                     'ground_truth_letter}')


class TaskFormatError(ValueError):
    """The file is not a benchmark file of the requested task at all."""


@dataclass
class EvalItem:
    """One benchmark question.

    ``video`` is relative to the benchmark's video folder (for ``tsu-desc`` it is the video name: its clips are
    found with :func:`list_clips`). ``options`` maps letters to option texts (None for description tasks);
    ``answer`` is the correct letter for multiple-choice items and the reference text for description items.
    """

    task: str
    index: int                              # position of the record in the file (0-based)
    id: str                                 # unique within the file
    video: str
    prompt: str                             # the text to ask the model (without the video span)
    question: str                           # the question as written in the file
    options: dict[str, str] | None = None
    answer: str | None = None
    numbered: bool = False                  # the file numbered the options 1..n (1 -> A)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = "legacy"                  # the file's format: "combined" (current MCQ files) or "legacy"
    question_raw: str | None = None         # the question exactly as in the file, when it differs from ``question``
    video_alts: tuple[str, ...] = ()        # other relative names the video may have (tried in order after ``video``)

    @property
    def kind(self) -> str:
        return TASKS[self.task].kind

    @property
    def answer_text(self) -> str | None:
        """The text of the correct option (MCQ) or the reference description."""
        if self.options is None:
            return self.answer
        return self.options.get(self.answer) if self.answer is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "index": self.index, "id": self.id, "video": self.video, "prompt": self.prompt,
                "question": self.question, "options": self.options, "answer": self.answer,
                "numbered": self.numbered, "extra": self.extra, "format": self.format,
                "question_raw": self.question_raw, "video_alts": list(self.video_alts)}

    @property
    def videos(self) -> tuple[str, ...]:
        """Every relative name the item's video may have, in the order they are tried."""
        return (self.video, *self.video_alts)


@dataclass(frozen=True)
class Problem:
    """A record that could not be read; it is skipped (and still counts in the benchmark's denominator)."""

    index: int          # position of the record in the file (0-based)
    key: str | None     # the record's key (dict files) or identifier, when it could be read
    reason: str

    def __str__(self) -> str:
        where = f"record {self.index}" + (f" ({self.key!r})" if self.key is not None else "")
        return f"{where}: {self.reason}"


class _Bad(Exception):
    """Raised inside a record reader: the record is skipped with this reason."""


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------
def task_info(task: str) -> TaskInfo:
    """Canonical :class:`TaskInfo` for a task name (case, "_" and the benchmark titles are accepted)."""
    key = re.sub(r"[\s_]+", "-", str(task).strip().lower())
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise KeyError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def format_choices(options: Mapping[str, str]) -> str:
    """``{"A": "x", "B": "y"}`` -> ``"(A) x (B) y"``."""
    return " ".join(f"({letter}) {text}" for letter, text in options.items())


def build_mcq_prompt(question: str, options: Mapping[str, str]) -> str:
    """The multiple-choice prompt: question, instruction, then ``(A) text (B) text ...``."""
    return MCQ_PROMPT_TEMPLATE.format(question=question.strip(), instruction=MCQ_INSTRUCTION,
                                      choices=format_choices(options))


def _field(rec: Mapping, key: str) -> Any:
    if key not in rec:
        raise _Bad(f"missing field {key!r}")
    return rec[key]


def _text(rec: Mapping, key: str) -> str:
    value = _field(rec, key)
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} should be a string, found {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"field {key!r} is empty")
    return value.strip()


def _ident(rec: Mapping, key: str) -> str:
    value = _field(rec, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"field {key!r} should be a string, found {type(value).__name__}")
    value = str(value).strip()
    if not value:
        raise _Bad(f"field {key!r} is empty")
    return value


def _frame(rec: Mapping, key: str) -> int:
    value = _field(rec, key)
    if isinstance(value, bool):
        raise _Bad(f"field {key!r} should be a frame number, found {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < 0:
        raise _Bad(f"field {key!r} should be a frame number, found {value!r}")
    return value


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _letter_options(rec: Mapping, key: str) -> dict[str, str]:
    raw = _field(rec, key)
    if not isinstance(raw, Mapping):
        raise _Bad(f"field {key!r} should be an object of lettered options, found {type(raw).__name__}")
    options: dict[str, str] = {}
    for k, v in raw.items():
        letter = str(k).strip().upper()
        if len(letter) != 1 or letter not in LETTERS:
            raise _Bad(f"option key {k!r} in {key!r} is not a letter A-{LETTERS[-1]}")
        if not isinstance(v, str) or not v.strip():
            raise _Bad(f"option {k!r} in {key!r} is not a non-empty string")
        options[letter] = v.strip()
    return _check_option_letters(dict(sorted(options.items())), key)


def _check_option_letters(options: dict[str, str], key: str) -> dict[str, str]:
    if len(options) < 2:
        raise _Bad(f"{key!r} has {len(options)} option(s); at least 2 are needed")
    if len(options) > len(LETTERS):
        raise _Bad(f"{key!r} has {len(options)} options; at most {len(LETTERS)} are supported")
    if "".join(options) != LETTERS[:len(options)]:
        raise _Bad(f"options in {key!r} are {', '.join(options)}; expected consecutive letters from A")
    return options


def _answer_letter(rec: Mapping, key: str, options: Mapping[str, str]) -> str:
    value = _field(rec, key)
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} should be an option letter, found {value!r}")
    letter = value.strip().strip("()").strip().upper()
    if letter not in options:
        raise _Bad(f"answer {value!r} is not one of the options {', '.join(options)}")
    return letter


def _matching_bracket(s: str, start: int) -> int:
    """Index of the ``]`` closing the ``[`` at ``start``; quotes (with backslash escapes) are skipped over."""
    depth = 0
    i = start
    while i < len(s):
        c = s[i]
        if c in "'\"":
            j = i + 1
            while j < len(s) and s[j] != c:
                j += 2 if s[j] == "\\" else 1
            if j >= len(s):
                raise ValueError(f"unterminated quote starting at character {i}")
            i = j
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed '[' at character {start}")


_OPTION_HEAD = re.compile(r"\s*(\d+)\s*[.)]\s*")


def parse_numbered_lists(options: str) -> list[tuple[int, list[str]]]:
    """Parse Charades-AR's ``"1. ['a', 'b'] 2. [...]"`` into ``[(1, ['a', 'b']), (2, [...]), ...]``.

    Each bracket group is cut out by scanning (so commas, brackets and the other quote kind inside action names
    are fine) and read with :func:`ast.literal_eval`; it must be a list of strings. Raises ValueError.
    """
    out: list[tuple[int, list[str]]] = []
    pos = 0
    while pos < len(options) and options[pos:].strip():
        head = _OPTION_HEAD.match(options, pos)
        if head is None or head.end() >= len(options) or options[head.end()] != "[":
            raise ValueError(f"expected 'N. [' at character {pos}: {options[pos:pos + 30]!r}")
        start = head.end()
        end = _matching_bracket(options, start)
        try:
            value = ast.literal_eval(options[start:end + 1])
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"option {head.group(1)} is not a list literal: {e}") from None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"option {head.group(1)} should be a non-empty list of action names")
        out.append((int(head.group(1)), [v.strip() for v in value]))
        pos = end + 1
        while pos < len(options) and options[pos] in " \t\r\n,;":
            pos += 1
    return out


def _numbered_to_letters(numbers: Sequence[str | int], key: str) -> list[str]:
    nums = []
    for n in numbers:
        s = str(n).strip()
        if not s.isdigit():
            raise _Bad(f"option key {n!r} in {key!r} is not a number")
        nums.append(int(s))
    if sorted(nums) != list(range(1, len(nums) + 1)):
        raise _Bad(f"options in {key!r} are numbered {', '.join(map(str, nums))}; expected 1..{len(nums)}")
    return [LETTERS[n - 1] if n <= len(LETTERS) else "?" for n in nums]


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


# ----------------------------------------------------------------------------------------------------------------
# Record readers: (index, key, record) -> EvalItem, or raise _Bad
# ----------------------------------------------------------------------------------------------------------------
def _read_charades_ar(index: int, key: str | None, rec: Mapping) -> EvalItem:
    vid = _ident(rec, "id")
    question = _text(rec, "Q")
    raw = _field(rec, "Options")
    if not isinstance(raw, str):
        raise _Bad(f"field 'Options' should be one string \"1. [...] 2. [...]\", found {type(raw).__name__}")
    try:
        groups = parse_numbered_lists(raw)
    except ValueError as e:
        raise _Bad(f"cannot parse 'Options': {e}") from None
    letters = _numbered_to_letters([n for n, _ in groups], "Options")
    parts = dict(sorted(zip(letters, (p for _, p in groups))))
    options = _check_option_letters({k: ", ".join(v) for k, v in parts.items()}, "Options")
    truth = _field(rec, "Ground Truth")
    if isinstance(truth, str):
        truth = [truth]
    if not isinstance(truth, list) or not all(isinstance(t, str) for t in truth):
        raise _Bad("field 'Ground Truth' should be a list of action names")
    truth = [t.strip() for t in truth]
    hits = [k for k, v in parts.items() if v == truth]
    if not hits:  # tolerate case / spacing differences only
        hits = [k for k, v in parts.items() if [_norm(x) for x in v] == [_norm(x) for x in truth]]
    if len(hits) != 1:
        raise _Bad("'Ground Truth' matches " + ("no option" if not hits else f"several options ({', '.join(hits)})"))
    return EvalItem("charades-ar", index, vid, f"{vid}.mp4", build_mcq_prompt(question, options), question,
                    options, hits[0], True, {"option_parts": parts, "ground_truth": truth})


def _read_smarthome_ar(index: int, key: str | None, rec: Mapping) -> EvalItem:
    source = _text(rec, "video_id")
    video = _basename(source)
    if not video:
        raise _Bad(f"field 'video_id' has no file name: {source!r}")
    question = _text(rec, "question")
    raw = _field(rec, "choices")
    if not isinstance(raw, Mapping):
        raise _Bad(f"field 'choices' should be an object \"1\"..\"4\", found {type(raw).__name__}")
    letters = _numbered_to_letters(list(raw), "choices")
    options: dict[str, str] = {}
    for (num, text), letter in zip(raw.items(), letters):
        if not isinstance(text, str) or not text.strip():
            raise _Bad(f"choice {num!r} is not a non-empty string")
        options[letter] = text.strip()
    options = _check_option_letters(dict(sorted(options.items())), "choices")
    truth = _text(rec, "ground_truth")
    hits = [k for k, v in options.items() if v == truth] or [k for k, v in options.items() if _norm(v) == _norm(truth)]
    if len(hits) != 1:
        raise _Bad(f"'ground_truth' {truth!r} matches "
                   + ("no choice" if not hits else f"several choices ({', '.join(hits)})"))
    return EvalItem("smarthome-ar", index, key if key is not None else video, video,
                    build_mcq_prompt(question, options), question, options, hits[0], True,
                    {"source_video": source, "choice_numbers": {l: str(LETTERS.index(l) + 1) for l in options}})


def _read_lemma_tc(index: int, key: str | None, rec: Mapping) -> EvalItem:
    vid = _ident(rec, "video_id")
    start, end = _frame(rec, "start_frame"), _frame(rec, "end_frame")
    if end < start:
        raise _Bad(f"end_frame {end} is before start_frame {start}")
    question = _text(rec, "question")
    options = _letter_options(rec, "choices")
    answer = _answer_letter(rec, "answer", options)
    extra = {"video_id": vid, "start_frame": start, "end_frame": end}
    for k in ("person_id", "start_timestamp", "end_timestamp", "duration"):
        if k in rec:
            extra[k] = rec[k]
    video = f"{vid}_{start}_{end}.mp4"
    return EvalItem("lemma-tc", index, key if key is not None else video, video,
                    build_mcq_prompt(question, options), question, options, answer, False, extra)


def _video_path(rec: Mapping, name: str) -> str:
    """A record's video path with forward slashes and without leading ``./`` (whether it stays inside the video
    folder: :func:`check_relative`)."""
    video = _text(rec, name).replace("\\", "/")
    while video.startswith("./"):
        video = video[2:]
    return video


def _read_tsu_tc(index: int, key: str | None, rec: Mapping) -> EvalItem:
    video = _video_path(rec, "video_path")
    question = _text(rec, "question")
    options = _letter_options(rec, "options")
    answer = _answer_letter(rec, "correct_answer", options)
    return EvalItem("tsu-tc", index, video, video, build_mcq_prompt(question, options), question, options, answer)


def _read_charades_desc(index: int, key: str | None, rec: Mapping) -> EvalItem:
    name = _ident(rec, "video_name")
    question, answer = _text(rec, "Q"), _text(rec, "A")
    extra = {k: _text(rec, k) for k in ("cons_Q1", "cons_Q2", "cons_A")}
    return EvalItem("charades-desc", index, name, f"{name}.mp4", question, question, None, answer, False, extra)


def _read_tsu_desc(index: int, key: str | None, rec: Any) -> EvalItem:
    name = (key or "").strip()
    if not name:
        raise _Bad("empty video name")
    if not isinstance(rec, str):
        raise _Bad(f"the description should be a string, found {type(rec).__name__}")
    if not rec.strip():
        raise _Bad("the description is empty")
    q1, q2 = TSU_DESC_CONSISTENCY_QUESTIONS
    return EvalItem("tsu-desc", index, name, name, TSU_DESC_QUESTION, TSU_DESC_QUESTION, None, rec.strip(), False,
                    {"cons_Q1": q1, "cons_Q2": q2, "cons_A": rec.strip(), "clips": f"{name}_clip{{i}}.mp4"})


def _read_combined(task: str):
    def read(index: int, key: str | None, rec: Mapping) -> EvalItem:
        video = _video_path(rec, "video_filename")
        question = _text(rec, "question")
        options = _letter_options(rec, "answer_choices")
        answer = _answer_letter(rec, "ground_truth_letter", options)
        extra = {k: v for k, v in rec.items() if k not in COMBINED_KEYS and isinstance(v, (str, int, float))}
        return EvalItem(task, index, video, video, build_mcq_prompt(question, options), question, options, answer,
                        False, extra, format="combined")

    return read


_READERS = {
    "smarthome-ar": _read_smarthome_ar, "charades-ar": _read_charades_ar, "lemma-tc": _read_lemma_tc,
    "tsu-tc": _read_tsu_tc, "charades-desc": _read_charades_desc, "tsu-desc": _read_tsu_desc,
}


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def _looks_like(task: str, rec: Any) -> bool:
    if task == "tsu-desc":
        return isinstance(rec, str)
    return isinstance(rec, Mapping) and _SIGNATURES[task] <= set(rec)


def detect_task(data: Any) -> str | None:
    """The benchmark a parsed JSON document looks like (by its container and the keys of its records), or None."""
    records = list(data.values()) if isinstance(data, dict) else data if isinstance(data, list) else []
    for name, info in TASKS.items():
        if isinstance(data, info.container) and records:
            share = sum(_looks_like(name, r) for r in records) / len(records)
            if share >= 0.5:
                return name
    return None


def _wrong_format(source: str, info: TaskInfo, found: str, data: Any) -> TaskFormatError:
    guess = detect_task(data)
    hint = f"; it looks like a {TASKS[guess].title} ({guess}) file" if guess and guess != info.name else ""
    expected = info.expected if info.kind != "mcq" else f"{COMBINED_EXPECTED}, or the legacy {info.expected}"
    return TaskFormatError(f"{source}: not a {info.title} ({info.name}) benchmark file: expected {expected}; "
                           f"found {found}{hint}")


def load_task_data(task: str, data: Any, source: str = "<data>") -> tuple[list[EvalItem], list[Problem]]:
    """Read an already parsed benchmark document. See :func:`load_task`."""
    info = task_info(task)
    if info.family != "adlx":
        from .general import load_general_data

        return load_general_data(info, data, source)
    if info.kind == "mcq" and is_combined(data):
        return _read_records(info, [(None, v) for v in data], _read_combined(info.name), source)
    if not isinstance(data, info.container):
        raise _wrong_format(source, info, f"a JSON {type(data).__name__ if data is not None else 'null'}", data)
    if isinstance(data, dict):
        entries: list[tuple[str | None, Any]] = [(str(k), v) for k, v in data.items()]
    else:
        entries = [(None, v) for v in data]
    if not entries:
        raise TaskFormatError(f"{source}: holds no records (an empty {type(data).__name__}); expected {info.expected}")
    if not any(_looks_like(info.name, rec) for _, rec in entries):
        first = entries[0][1]
        found = (f"records with keys {sorted(first)}" if isinstance(first, Mapping)
                 else f"records of type {type(first).__name__}")
        raise _wrong_format(source, info, found, data)
    return _read_records(info, entries, _READERS[info.name], source)


def is_combined(data: Any) -> bool:
    """Whether a parsed document is in the combined MCQ format (most records carry its four keys)."""
    if not isinstance(data, list) or not data:
        return False
    return sum(isinstance(r, Mapping) and COMBINED_KEYS <= set(r) for r in data) >= 0.5 * len(data)


def check_relative(video: str, where: str) -> str:
    """``video`` if it is a path inside its folder; :class:`TaskFormatError` naming ``where`` otherwise."""
    from ..io_utils import stays_inside

    if not stays_inside(video):
        raise TaskFormatError(f"{where}: video path {video!r} leaves the video folder (absolute, or with a '..' "
                              "part); refusing the file")
    return video


def _read_records(info: TaskInfo, entries: list[tuple[str | None, Any]], reader, source: str
                  ) -> tuple[list[EvalItem], list[Problem]]:
    items: list[EvalItem] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, (key, rec) in enumerate(entries):
        if info.name != "tsu-desc" and not isinstance(rec, Mapping):
            problems.append(Problem(index, key, f"record is a {type(rec).__name__}, not an object"))
            continue
        try:
            item = reader(index, key, rec)
        except _Bad as e:
            problems.append(Problem(index, key if key is not None else _record_name(rec), str(e)))
            continue
        for video in item.videos:
            check_relative(video, f"{source}: record {index}" + (f" ({key!r})" if key is not None else ""))
        raw = rec.get("question", rec.get("Q")) if isinstance(rec, Mapping) else None
        if isinstance(raw, str) and raw != item.question:
            item.question_raw = raw
        if item.id in seen:  # list files have no keys: keep ids unique so that predictions can be keyed by id
            item.extra["duplicate_id"] = item.id
            item.id = f"{item.id}#{index}"
        seen.add(item.id)
        items.append(item)
    return items, problems


def _record_name(rec: Any) -> str | None:
    if isinstance(rec, Mapping):
        for k in ("id", "video_name", "video_path", "video_id"):
            if isinstance(rec.get(k), (str, int)) and not isinstance(rec.get(k), bool):
                return str(rec[k])
    return None


def load_task(task: str, qa_file: str | Path, *, answer_file: str | Path | None = None,
              video_map: str | Path | None = None) -> tuple[list[EvalItem], list[Problem]]:
    """Load a benchmark file: ``(items, problems)``.

    ``items`` are the readable records in file order; ``problems`` lists the unreadable ones (index, key, reason),
    which are skipped. Raises :class:`TaskFormatError` if the file is not JSON or not this task's format,
    ``KeyError`` for an unknown task and ``FileNotFoundError`` for a missing file. ``answer_file`` (the ``*_a.json``
    of a question/answer pair) and ``video_map`` (MSVD's ``youtube_mapping.txt``) serve the zero-shot QA tasks
    (:mod:`llavidal.eval.general`; by default they are looked for beside ``qa_file``).
    """
    info = task_info(task)
    path = Path(qa_file)
    data = read_json_file(path, info)
    if info.family != "adlx":
        from .general import load_general

        return load_general(info, data, path, answer_file=answer_file, video_map=video_map)
    if answer_file is not None or video_map is not None:
        raise ValueError(f"{info.name}: --answer-file and --video-map belong to the zero-shot QA tasks")
    return load_task_data(info.name, data, str(path))


def read_json_file(path: Path, info: TaskInfo) -> Any:
    """The parsed JSON of a benchmark file; :class:`TaskFormatError` naming the file and the task otherwise."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"{path}: not a {info.title} ({info.name}) benchmark file: "
                              f"not UTF-8 text ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"{path}: not a {info.title} ({info.name}) benchmark file: invalid JSON ({e}); "
                              f"expected {info.expected}") from None


# ----------------------------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------------------------
def video_path(item: EvalItem, video_dir: str | Path) -> Path:
    """Where an item's video is expected (for ``tsu-desc`` use :func:`list_clips` instead)."""
    return Path(video_dir) / item.video


def find_video(video_dir: str | Path | None, videos: Sequence[str], suffixes: Sequence[str]) -> Path | None:
    """The raw video file of an item: the first of its relative names (``item.videos``) found under ``video_dir``,
    each tried as written and then with the other video ``suffixes`` (Video-ChatGPT's videos come as .mp4, .avi,
    .mov or .mkv); None when absent."""
    if not video_dir:
        return None
    root = Path(video_dir)
    for rel in videos:
        for candidate in [root / rel] + [root / Path(rel).with_suffix(s) for s in suffixes]:
            if candidate.is_file():
                return candidate
    return None


FEATURE_SUFFIXES = (".pkl", ".pickle", ".npy", ".safetensors", ".pt")


def find_feature(folder: str | Path | None, video: str, by_basename: bool = True) -> Path | None:
    """The cached feature file of ``video`` (a path relative to the video folder; any feature extension) in
    ``folder``, found by that relative path; with ``by_basename``, also by the video's file name alone (a flat
    feature folder). Pass ``by_basename=False`` for a name that several videos of the benchmark share (TSU-TC has a
    ``clip_1.mp4`` in many folders): features are never taken from another video. None when absent."""
    if not folder:
        return None
    folder = Path(folder)
    rel = Path(video)
    stems = [rel.with_suffix("")] + ([Path(rel.with_suffix("").name)] if by_basename else [])
    for stem in stems:
        for suffix in FEATURE_SUFFIXES:
            p = folder / stem.parent / (stem.name + suffix)
            if p.is_file():
                return p
    return None


def shared_basenames(videos: Sequence[str]) -> frozenset[str]:
    """File names that more than one distinct relative video path of a benchmark has (their features can only be
    found by the relative path)."""
    seen: dict[str, set[str]] = {}
    for v in videos:
        seen.setdefault(Path(v).name, set()).add(str(Path(v)))
    return frozenset(name for name, paths in seen.items() if len(paths) > 1)


def clip_number(path: str | Path, video_name: str) -> int | None:
    """The clip index of ``{video_name}_clip{i}.ext`` (``_clip_{i}`` too), or None if the name does not fit."""
    m = re.fullmatch(re.escape(video_name) + r"_clip_?(\d+)", Path(path).stem)
    return int(m.group(1)) if m else None


def list_clips(video_dir: str | Path, video_name: str, suffixes: Sequence[str] = (".mp4",)) -> list[Path]:
    """The 60 s clip files of a TSU-Description video in numeric clip order (clip2 before clip10).

    Only files named ``{video_name}_clip{i}{suffix}`` are taken (another video whose name merely starts with
    ``video_name`` is not). An empty list means the video's clips are missing.
    """
    folder = Path(video_dir)
    if not folder.is_dir():
        return []
    wanted = {s.lower() for s in suffixes}
    found = []
    for p in folder.iterdir():
        if p.suffix.lower() in wanted and p.is_file():
            n = clip_number(p, video_name)
            if n is not None:
                found.append((n, p.name, p))
    return [p for _, _, p in sorted(found)]


# ----------------------------------------------------------------------------------------------------------------
# CLI: llavidal eval prepare --task T --qa-file F
# ----------------------------------------------------------------------------------------------------------------
def build_prepare_parser(prog: str = "llavidal eval prepare") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Read an ADL-X benchmark file and print one JSON line per "
                                "item (id, video, prompt, options, answer); a summary goes to stderr.")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--qa-file", required=True, help="the benchmark's JSON file")
    p.add_argument("--answer-file", help="zero-shot QA question file: its answer file (default: *_a.json beside it)")
    p.add_argument("--video-map", help="msvd-qa: youtube_mapping.txt (default: the one beside --qa-file)")
    p.add_argument("--video-dir", help="also report whether each item's video or its cached features (clips for "
                                       "tsu-desc) are there")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any record is unreadable")
    return p


def prepare_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llavidal eval prepare``. Returns the exit status (0 ok, 1 --strict and problems,
    2 wrong file or task)."""
    args = build_prepare_parser().parse_args(None if argv is None else list(argv))
    try:
        info = task_info(args.task)
        items, problems = load_task(info.name, args.qa_file, answer_file=args.answer_file, video_map=args.video_map)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    missing = 0
    shared = shared_basenames([it.video for it in items])
    for item in items:
        line: dict[str, Any] = {"index": item.index, "id": item.id, "video": item.video, "prompt": item.prompt,
                                "options": item.options, "answer": item.answer, "format": item.format}
        if item.extra.get("cons_Q1") is not None:
            line.update({k: item.extra[k] for k in ("cons_Q1", "cons_Q2", "cons_A")})
        if args.video_dir is not None:
            if info.name == "tsu-desc":
                # raw clips or their cached features, one entry per clip (as `eval run` reads them)
                found = list_clips(args.video_dir, item.video, suffixes=(".mp4",) + FEATURE_SUFFIXES)
                clips = list({c.stem: c for c in reversed(found)}.values())[::-1]
                line["clips"] = [str(c) for c in clips]
                present = bool(clips)
            else:  # the raw video, or its cached features (what `eval run` reads first)
                from ..video.io import VIDEO_SUFFIXES

                feature = next((f for v in item.videos if (f := find_feature(args.video_dir, v,
                                                                              Path(v).name not in shared))), None)
                present = feature is not None or find_video(args.video_dir, item.videos, VIDEO_SUFFIXES) is not None
                if feature is not None:
                    line["features"] = str(feature)
            line["video_found"] = present
            missing += not present
        print(json.dumps(line, ensure_ascii=False))
    summary = f"{info.name}: {len(items)} items, {len(problems)} unreadable records"
    if args.video_dir is not None:
        summary += f", {missing} missing videos"
    print(summary + (":" if problems else ""), file=sys.stderr)
    for prob in problems:
        print(f"  {prob}", file=sys.stderr)
    return 1 if (args.strict and problems) else 0


def to_combined(items: Sequence[EvalItem]) -> list[dict[str, Any]]:
    """Multiple-choice items as records of the combined MCQ format (options as letters A.., the video path relative
    to the video folder)."""
    out = []
    for it in items:
        if it.options is None:
            raise ValueError(f"{it.task} item {it.id}: only multiple-choice items have a combined format")
        out.append({"video_filename": it.video, "question": it.question, "answer_choices": dict(it.options),
                    "ground_truth_letter": it.answer})
    return out


def convert_main(argv: Sequence[str] | None = None) -> int:
    """``llavidal eval convert``: a legacy MCQ benchmark file -> the combined MCQ format."""
    p = argparse.ArgumentParser(prog="llavidal eval convert",
                                description="Write a legacy multiple-choice benchmark file in the combined MCQ format "
                                            "(a JSON list of {video_filename, question, answer_choices, "
                                            "ground_truth_letter}); unreadable records are listed and left out.")
    p.add_argument("--task", required=True,
                   choices=[n for n, t in TASKS.items() if t.kind == "mcq" and t.family == "adlx"])
    p.add_argument("--qa-file", required=True)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(None if argv is None else list(argv))
    items, problems = load_task(args.task, args.qa_file)
    from ..io_utils import atomic_write_json

    atomic_write_json(args.output, to_combined(items), indent=2)
    print(f"{args.output}: {len(items)} records ({len(problems)} unreadable left out)", file=sys.stderr)
    for prob in problems:
        print(f"  {prob}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(prepare_main())

"""Readers of the general video benchmarks the field reports beside ADL-X (docs/design.md#general-benchmarks).

Each reads the benchmark's released files into :class:`~llavidal.eval.tasks.EvalItem` s, like the ADL-X loaders of
:mod:`llavidal.eval.tasks` (unreadable records become :class:`~llavidal.eval.tasks.Problem` s and stay in the
denominator; a file of another format is a :class:`~llavidal.eval.tasks.TaskFormatError`):

``vcgbench-generic`` / ``vcgbench-temporal``  Video-ChatGPT's ``generic_qa.json`` / ``temporal_qa.json``: a list of
        ``{video_name, Q, A}``. The generic file is judged for correctness, detail and context, the temporal file
        for temporal understanding.
``vcgbench-consistency``  ``consistency_qa.json``: a list of ``{video_name, Q1, Q2, A}``; both questions are asked,
        the two replies are judged together against ``A``.
        Videos of all three: ``{video_name}`` with .mp4, .avi, .mov or .mkv in the video folder.
``msvd-qa`` / ``msrvtt-qa``  the released ``test_qa.json``: a list of ``{question, answer, video_id, id}``.
        MSRVTT's video is ``video{video_id}.mp4``; MSVD's ``video_id`` N is the clip that ``youtube_mapping.txt``
        (lines ``<clip name> vid<N>``, looked for beside the file unless given) names, ``{clip}.avi``.
``activitynet-qa``  a question file ``*_q.json`` (list of ``{video_name, question_id, question}``) and its answer
        file ``*_a.json`` (list of ``{question_id, answer, type}``, found beside it by default), joined by
        ``question_id``; video ``{video_name}`` or ``v_{video_name}``. The same pair format is read for MSVD-QA
        and MSRVTT-QA (``video_name`` is then the clip name), and so is a list whose records carry the answer
        themselves.
``mvbench``  one MVBench task file: a list of ``{video, question, candidates [...], answer}`` where ``answer`` is
        the text of one candidate; candidates become options A, B, ... ``start``/``end`` (seconds) are kept in
        ``extra``: features are made from the whole video and the runner counts such items.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .tasks import (
    LETTERS,
    EvalItem,
    Problem,
    TaskFormatError,
    TaskInfo,
    _Bad,
    _field,
    _ident,
    _looks_like,
    _norm,
    _read_records,
    _text,
    _video_path,
    build_mcq_prompt,
    detect_task,
    read_json_file,
)

logger = logging.getLogger(__name__)

#: the file beside an MSVD-QA test_qa.json that maps ``vid<N>`` to clip names
MSVD_MAPPING_FILE = "youtube_mapping.txt"


# ----------------------------------------------------------------------------------------------------------------
# Video-ChatGPT benchmark
# ----------------------------------------------------------------------------------------------------------------
def _read_vcg(task: str):
    def read(index: int, key: str | None, rec: Mapping) -> EvalItem:
        name = _ident(rec, "video_name")
        question, answer = _text(rec, "Q"), _text(rec, "A")
        return EvalItem(task, index, name, f"{name}.mp4", question, question, None, answer)

    return read


def _read_vcg_consistency(index: int, key: str | None, rec: Mapping) -> EvalItem:
    name = _ident(rec, "video_name")
    q1, q2, answer = _text(rec, "Q1"), _text(rec, "Q2"), _text(rec, "A")
    return EvalItem("vcgbench-consistency", index, name, f"{name}.mp4", q1, q1, None, answer, False,
                    {"cons_Q1": q1, "cons_Q2": q2, "cons_A": answer})


# ----------------------------------------------------------------------------------------------------------------
# zero-shot open-ended QA
# ----------------------------------------------------------------------------------------------------------------
def _answer_text(rec: Mapping) -> str:
    value = _field(rec, "answer")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"field 'answer' should be a string, found {type(value).__name__}")
    value = str(value).strip()
    if not value:
        raise _Bad("field 'answer' is empty")
    return value


def _read_open_qa(task: str, mapping: Mapping[str, str] | None):
    suffix = ".avi" if task == "msvd-qa" else ".mp4"

    def read(index: int, key: str | None, rec: Mapping) -> EvalItem:
        question, answer = _text(rec, "question"), _answer_text(rec)
        extra: dict[str, Any] = {k: rec[k] for k in ("type", "video_id") if isinstance(rec.get(k), (str, int))}
        alts: tuple[str, ...] = ()
        if "video_name" in rec:  # the question/answer pair format (ActivityNet-QA's, and converted MSVD/MSRVTT)
            name = _ident(rec, "video_name")
            if task == "activitynet-qa":
                alts = (f"{name[2:]}{suffix}",) if name.startswith("v_") else (f"v_{name}{suffix}",)
        else:  # the released MSVD-QA / MSRVTT-QA test_qa.json
            vid = _ident(rec, "video_id")
            if task == "msrvtt-qa":
                name = f"video{vid}" if vid.isdigit() else vid
            else:
                ref = f"vid{vid}" if vid.isdigit() else vid
                if mapping is not None and ref not in mapping:
                    raise _Bad(f"video_id {vid!r} ({ref}) is not in {MSVD_MAPPING_FILE}")
                name = mapping[ref] if mapping is not None else ref
        qid = rec.get("question_id", rec.get("id"))
        ident = str(qid).strip() if isinstance(qid, (str, int)) and str(qid).strip() else str(index)
        return EvalItem(task, index, ident, f"{name}{suffix}", question, question, None, answer, False, extra,
                        video_alts=alts)

    return read


def _sibling(path: Path, name: str) -> Path | None:
    candidate = path.with_name(name)
    return candidate if candidate != path and candidate.is_file() else None


def _answers_path(qa_file: Path, answer_file: str | Path | None) -> Path | None:
    if answer_file is not None:
        return Path(answer_file)
    stem = qa_file.stem
    if stem.endswith("_q"):
        return _sibling(qa_file, f"{stem[:-2]}_a{qa_file.suffix}")
    return None


def join_answers(info: TaskInfo, questions: Any, qa_file: Path, answer_file: str | Path | None) -> Any:
    """A question file whose records lack ``answer`` joined with its answer file by ``question_id`` (a question
    without an answer is left as it is: its reader reports it). An explicit ``answer_file`` is always joined (its
    answers win); other documents are returned unchanged."""
    if not isinstance(questions, list) or not questions or not all(isinstance(r, Mapping) for r in questions):
        return questions
    needed = any("answer" not in r for r in questions) and any("question_id" in r for r in questions)
    if answer_file is None and not needed:
        return questions
    path = _answers_path(qa_file, answer_file)
    if path is None:
        raise TaskFormatError(f"{qa_file}: {info.title} questions without answers: give the answer file "
                              f"(--answer-file, e.g. test_a.json: a JSON list of {{question_id, answer, type}}); "
                              f"none found beside it")
    answers = read_json_file(path, info)
    if not isinstance(answers, list) or not all(isinstance(a, Mapping) for a in answers):
        raise TaskFormatError(f"{path}: not an answer file of {info.title}: expected a JSON list of "
                              "{question_id, answer, type}")
    by_id: dict[str, Mapping] = {}
    for i, a in enumerate(answers):
        if "question_id" not in a or "answer" not in a:
            raise TaskFormatError(f"{path}: record {i} has no question_id or no answer; expected a JSON list of "
                                  "{question_id, answer, type}")
        qid = str(a["question_id"])
        if qid in by_id:
            raise TaskFormatError(f"{path}: question_id {qid!r} appears twice")
        by_id[qid] = a
    joined = []
    for q in questions:
        a = by_id.get(str(q.get("question_id")))
        joined.append({**q, "answer": a["answer"], **({"type": a["type"]} if "type" in a else {})} if a else dict(q))
    return joined


def read_msvd_mapping(path: Path) -> dict[str, str]:
    """``youtube_mapping.txt``: one ``<clip name> vid<N>`` per line -> ``{"vid<N>": clip name}``."""
    mapping: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("vid"):
            raise TaskFormatError(f"{path}: line {n} is not '<clip name> vid<N>': {line.strip()!r}")
        mapping[parts[1]] = parts[0]
    return mapping


# ----------------------------------------------------------------------------------------------------------------
# MVBench
# ----------------------------------------------------------------------------------------------------------------
def _option_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise _Bad(f"{where} is not a non-empty string")
    return str(value).strip()


def _read_mvbench(index: int, key: str | None, rec: Mapping) -> EvalItem:
    video = _video_path(rec, "video")
    question = _text(rec, "question")
    raw = _field(rec, "candidates")
    if not isinstance(raw, list):
        raise _Bad(f"field 'candidates' should be a list, found {type(raw).__name__}")
    if not 2 <= len(raw) <= len(LETTERS):
        raise _Bad(f"'candidates' has {len(raw)} entries; 2 to {len(LETTERS)} are supported")
    options = {LETTERS[i]: _option_text(c, f"candidate {i}") for i, c in enumerate(raw)}
    truth = _option_text(_field(rec, "answer"), "field 'answer'")
    hits = [k for k, v in options.items() if v == truth] or [k for k, v in options.items() if _norm(v) == _norm(truth)]
    if len(hits) != 1:
        raise _Bad(f"'answer' {truth!r} matches " + ("no candidate" if not hits else f"several ({', '.join(hits)})"))
    extra = {k: rec[k] for k in ("start", "end") if isinstance(rec.get(k), (int, float)) and not isinstance(rec[k], bool)}
    return EvalItem("mvbench", index, Path(video).stem, video, build_mcq_prompt(question, options), question, options,
                    hits[0], False, extra)


# ----------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------
def _reader(info: TaskInfo, mapping: Mapping[str, str] | None):
    if info.name in ("vcgbench-generic", "vcgbench-temporal"):
        return _read_vcg(info.name)
    if info.name == "vcgbench-consistency":
        return _read_vcg_consistency
    if info.family == "zeroshot-qa":
        return _read_open_qa(info.name, mapping)
    if info.name == "mvbench":
        return _read_mvbench
    raise KeyError(f"no reader for {info.name}")


def _looks_open_qa(rec: Any) -> bool:
    return isinstance(rec, Mapping) and "question" in rec and ("video_id" in rec or "video_name" in rec)


def load_general_data(info: TaskInfo, data: Any, source: str = "<data>",
                      mapping: Mapping[str, str] | None = None) -> tuple[list[EvalItem], list[Problem]]:
    """Read an already parsed (and, for question/answer pairs, joined) benchmark document."""
    if not isinstance(data, list):
        found = f"a JSON {type(data).__name__ if data is not None else 'null'}"
        raise TaskFormatError(f"{source}: not a {info.title} ({info.name}) benchmark file: expected {info.expected}; "
                              f"found {found}")
    if not data:
        raise TaskFormatError(f"{source}: holds no records (an empty list); expected {info.expected}")
    looks = _looks_open_qa if info.family == "zeroshot-qa" else (lambda rec: _looks_like(info.name, rec))
    if not any(looks(rec) for rec in data):
        first = data[0]
        guess = detect_task(data)
        hint = f"; it looks like a {guess} file" if guess and guess != info.name else ""
        found = f"records with keys {sorted(first)}" if isinstance(first, Mapping) else \
            f"records of type {type(first).__name__}"
        raise TaskFormatError(f"{source}: not a {info.title} ({info.name}) benchmark file: expected {info.expected}; "
                              f"found {found}{hint}")
    return _read_records(info, [(None, rec) for rec in data], _reader(info, mapping), source)


def load_general(info: TaskInfo, data: Any, qa_file: Path, *, answer_file: str | Path | None = None,
                 video_map: str | Path | None = None) -> tuple[list[EvalItem], list[Problem]]:
    """A general benchmark's file (and, for zero-shot QA, its answer file and MSVD's video mapping)."""
    mapping = None
    if info.family == "zeroshot-qa":
        data = join_answers(info, data, qa_file, answer_file)
        if info.name == "msvd-qa":
            path = Path(video_map) if video_map is not None else _sibling(qa_file, MSVD_MAPPING_FILE)
            if path is not None:
                mapping = read_msvd_mapping(path)
            elif isinstance(data, list) and any(isinstance(r, Mapping) and "video_id" in r and "video_name" not in r
                                                for r in data):
                logger.warning("%s: no %s beside it (--video-map): MSVD videos are looked up as vid<N>.avi",
                               qa_file, MSVD_MAPPING_FILE)
    elif answer_file is not None or video_map is not None:
        raise ValueError(f"{info.name}: --answer-file and --video-map belong to the zero-shot QA tasks")
    return load_general_data(info, data, str(qa_file), mapping)


__all__ = ["MSVD_MAPPING_FILE", "join_answers", "load_general", "load_general_data", "read_msvd_mapping"]

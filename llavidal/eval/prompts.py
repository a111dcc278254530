"""Judge prompts: a named, versioned set, loadable from JSON.

The default set, ``llavidal-judge@1``, follows the Video-ChatGPT protocol used by the LLAVIDAL release
(docs/design.md#benchmarks): five criteria scored 0-5 by an LLM (correctness of information, detail orientation,
contextual understanding, temporal understanding, consistency), one call per criterion, each a system message that
defines the criterion plus a user message carrying the question, the reference answer and the prediction, and asking
for a Python-dict string ``{'score': N}``. Two more prompts serve the other benchmarks: the TSU clip summary (clip
descriptions, in clip order, merged into one ~300-word description) and MCQ letter matching (which option does a
free-form reply express, or ``Z`` for none). The wording is this project's own.

The set is a :class:`llavidal.llm.PromptSet` (``${name}`` placeholders, a JSON file format, validation, ``ident``).
Every prompt key has a fixed kind and a fixed set of placeholders (``JudgePromptSet.SPECS``); :func:`load_prompt_set`
checks a JSON file against them::

    {"name": "my-judge", "version": "2",
     "prompts": {"correctness": {"system": "...", "user": "... ${question} ... ${answer} ... ${prediction} ..."},
                 ...every key of REQUIRED_PLACEHOLDERS...}}

Optional per-prompt ``"max_tokens"``: the reply budget the prompt needs at least (the judge's own ``max_tokens``
applies when larger). Export the default set with ``save_prompt_set(default_prompt_set(), path)``
to start editing; bump ``version`` whenever the wording changes (the judge cache keys on the exact messages in any
case, so a stale cache can never answer for new wording).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..llm.prompts import PromptSet, PromptSetError, PromptSpec
from .judge import KIND_MCQ, KIND_SCORE, KIND_TEXT, KIND_VERDICT, JudgeRequest

__all__ = [
    "CRITERIA", "CRITERION_LABELS", "DEFAULT_PROMPT_SET_NAME", "DEFAULT_PROMPT_SET_VERSION", "JUDGE_SPECS",
    "JudgePromptSet", "OPENQA_PROMPT_SET_NAME", "OpenQAPromptSet", "PromptSetError", "default_prompt_set",
    "format_clip_descriptions", "format_options", "load_prompt_set", "save_prompt_set",
]

DEFAULT_PROMPT_SET_NAME = "llavidal-judge"
DEFAULT_PROMPT_SET_VERSION = "1"

#: the five Video-ChatGPT criteria, in reporting order
CRITERIA = ("correctness", "detail", "context", "temporal", "consistency")
CRITERION_LABELS = {
    "correctness": "Correctness of information",
    "detail": "Detail orientation",
    "context": "Contextual understanding",
    "temporal": "Temporal understanding",
    "consistency": "Consistency",
}

_QAP = frozenset({"question", "answer", "prediction"})
#: prompt key -> its placeholders (exactly these) and the kind of reply it asks for
JUDGE_SPECS: dict[str, PromptSpec] = {
    **{c: PromptSpec(_QAP, kind=KIND_SCORE) for c in CRITERIA[:4]},
    "consistency": PromptSpec(frozenset({"question1", "question2", "answer", "prediction1", "prediction2"}),
                              kind=KIND_SCORE),
    "tsu_summary": PromptSpec(frozenset({"clip_descriptions"}), kind=KIND_TEXT),
    "mcq": PromptSpec(frozenset({"question", "options", "prediction"}), kind=KIND_MCQ),
}

# ----------------------------------------------------------------------------------------------------------------
# default wording
# ----------------------------------------------------------------------------------------------------------------

_ROLE = ("You are a strict, consistent grader of answers written by a video question-answering system. For each "
         "case you get a question about a video, a reference answer that is true of the video, and the system's "
         "prediction. You cannot see the video: treat the reference answer as the ground truth about it.\n\n")

_SCALE = ("\n\nScale (integers only):\n"
          "5 = fully meets the criterion\n"
          "4 = meets it with minor lapses\n"
          "3 = partly meets it; noticeable lapses\n"
          "2 = mostly fails it; a few things right\n"
          "1 = almost entirely fails it\n"
          "0 = fails it completely, or the prediction is empty, off-topic or unrelated to the question")

_REPLY_FORMAT = ("Give your grade as a Python dictionary string and nothing else: no explanation, no code fence. "
                 "Its only key is 'score' and its value is an integer from 0 to 5 (a number, not a string), "
                 "in the form {'score': N}.")

_CASE = ("Grade this case for <criterion>.\n\n"
         "Question: ${question}\n\n"
         "Reference answer: ${answer}\n\n"
         "Predicted answer: ${prediction}\n\n") + _REPLY_FORMAT

_CRITERION_TEXT = {
    "correctness": (
        "Criterion: CORRECTNESS OF INFORMATION. Grade only whether what the prediction says is true according "
        "to the reference answer.\n"
        "- Lower the grade for every statement that contradicts the reference: wrong actions, wrong objects, "
        "wrong people or counts, invented events, a misidentified activity.\n"
        "- Different wording with the same meaning (synonyms, paraphrases) is correct.\n"
        "- Omissions are not errors under this criterion, and length or style earn nothing."),
    "detail": (
        "Criterion: DETAIL ORIENTATION. Grade how completely and how specifically the prediction covers what "
        "the reference answer describes.\n"
        "- Completeness: are the main actions, the objects handled and the people of the reference all present, "
        "or are key parts left out?\n"
        "- Specificity: concrete details (which object, what is done with it, where) rather than generic "
        "statements such as 'a person is doing some activities'.\n"
        "- Paraphrases count as coverage; details that contradict the reference do not."),
    "context": (
        "Criterion: CONTEXTUAL UNDERSTANDING. Grade whether the prediction fits the overall situation of the "
        "video as the reference describes it: the setting, the activity under way and what the person is trying "
        "to do.\n"
        "- Lower the grade for content that belongs to a different scene or activity, or that misreads the "
        "purpose of what happens, even when single words match the reference.\n"
        "- Paraphrases are fine; small factual slips matter less here than a wrong picture of the whole."),
    "temporal": (
        "Criterion: TEMPORAL UNDERSTANDING. Grade whether the prediction gets the order of events right, as "
        "given by the reference answer: which action comes first, what follows what, what happens last.\n"
        "- The right actions in the wrong order deserve a low grade.\n"
        "- Paraphrases count only when the order they describe is the reference's order.\n"
        "- A prediction that gives no order at all (a bare list or a single action for a sequence) cannot "
        "score above 2."),
}


def _criterion_prompt(key: str) -> dict[str, Any]:
    label = CRITERION_LABELS[key].lower()
    return {"system": _ROLE + _CRITERION_TEXT[key] + _SCALE, "user": _CASE.replace("<criterion>", label)}


_CONSISTENCY = {
    "system": (
        "You are a strict, consistent grader of answers written by a video question-answering system. You get "
        "two questions that ask the same thing about one video in different words, one reference answer that is "
        "true of the video and correct for both questions, and the system's answer to each question. You cannot "
        "see the video: treat the reference answer as the ground truth about it.\n\n"
        "Criterion: CONSISTENCY. Grade whether the two predicted answers agree with each other and with the "
        "reference answer.\n"
        "- Lower the grade for any contradiction between the two predictions (different actions, objects, "
        "counts or order of events).\n"
        "- Two predictions that agree with each other but both contradict the reference are not consistent "
        "with it and deserve a low grade.\n"
        "- Different wording with the same meaning counts as agreement." + _SCALE),
    "user": (
        "Grade this case for consistency.\n\n"
        "Question 1: ${question1}\n\n"
        "Question 2: ${question2}\n\n"
        "Reference answer (correct for both): ${answer}\n\n"
        "Predicted answer to question 1: ${prediction1}\n\n"
        "Predicted answer to question 2: ${prediction2}\n\n" + _REPLY_FORMAT),
}

_TSU_SUMMARY = {
    "system": (
        "You write one description of a long video from descriptions of its consecutive one-minute clips. The "
        "clip descriptions come in time order: clip 1 is the start of the video.\n\n"
        "Write a single coherent paragraph of about 300 words that:\n"
        "- follows the order of events given by the clips;\n"
        "- names the actions the person performs, the objects they handle and the setting;\n"
        "- merges what neighbouring clips repeat (an activity often spans several clips) instead of repeating it;\n"
        "- adds nothing that no clip mentions;\n"
        "- does not mention clips, numbering, or that it is a summary."),
    "user": ("Clip descriptions, in time order:\n\n${clip_descriptions}\n\n"
             "Write the description of the whole video now."),
    "max_tokens": 700,
}

_MCQ = {
    "system": (
        "You match a free-form answer to a multiple-choice question with one of the question's options. Decide "
        "which option the free-form answer expresses, whether or not that option is correct. Synonyms and "
        "paraphrases match. If the answer expresses none of the options, names several, or is too vague to "
        "choose, the letter is Z.\n\n"
        "Example:\n"
        "Question: What does the person take from the table?\n"
        "Options: (A) a glass (B) a phone (C) a book (D) a remote control\n"
        "Free-form answer: they pick up their mobile from the table\n"
        "Reply: (B)\n\n"
        "Example:\n"
        "Question: What will the person do next?\n"
        "Options: (A) sit down (B) open the door (C) switch off the light (D) drink water\n"
        "Free-form answer: the person will probably go on cooking at the stove\n"
        "Reply: (Z)"),
    "user": ("Question: ${question}\n"
             "Options: ${options}\n"
             "Free-form answer: ${prediction}\n\n"
             "Which option does the free-form answer express? Reply with its letter in parentheses, e.g. (A), or "
             "(Z) if none, and nothing else."),
}


def _default_dict() -> dict[str, Any]:
    prompts = {k: _criterion_prompt(k) for k in ("correctness", "detail", "context", "temporal")}
    prompts["consistency"] = dict(_CONSISTENCY)
    prompts["tsu_summary"] = dict(_TSU_SUMMARY)
    prompts["mcq"] = dict(_MCQ)
    return {"name": DEFAULT_PROMPT_SET_NAME, "version": DEFAULT_PROMPT_SET_VERSION,
            "description": "LLAVIDAL judge prompts: Video-ChatGPT criteria, TSU clip summary, MCQ letter matching",
            "prompts": prompts}

# ----------------------------------------------------------------------------------------------------------------
# the judge's prompt set
# ----------------------------------------------------------------------------------------------------------------


class JudgePromptSet(PromptSet):
    """The judge's prompts (``SPECS``) and the request builders of each benchmark."""

    SPECS = JUDGE_SPECS

    @classmethod
    def default_dict(cls) -> dict[str, Any]:
        prompts = {k: _criterion_prompt(k) for k in ("correctness", "detail", "context", "temporal")}
        prompts["consistency"] = dict(_CONSISTENCY)
        prompts["tsu_summary"] = dict(_TSU_SUMMARY)
        prompts["mcq"] = dict(_MCQ)
        return {"name": DEFAULT_PROMPT_SET_NAME, "version": DEFAULT_PROMPT_SET_VERSION,
                "description": "LLAVIDAL judge prompts: Video-ChatGPT criteria, TSU clip summary, MCQ letter matching",
                "prompts": prompts}

    # -- request builders -----------------------------------------------------------------------------------------
    def request(self, key: str, *, id: str | None = None, choices: Sequence[str] | None = None,
                **fields: Any) -> JudgeRequest:
        """A judge request from prompt ``key`` filled with ``fields`` (exactly the prompt's placeholders)."""
        if key not in self.prompts:
            raise KeyError(f"no prompt {key!r} in {self.ident}")
        p = self.prompts[key]
        return JudgeRequest(messages=tuple(p.render(**fields)), kind=p.kind, prompt_set=self.ident, prompt_key=key,
                            id=id, choices=tuple(choices) if choices is not None else None, max_tokens=p.max_tokens)

    def score_request(self, criterion: str, question: str, answer: str, prediction: str, *,
                      id: str | None = None) -> JudgeRequest:
        """One of ``correctness``, ``detail``, ``context``, ``temporal``."""
        if criterion not in CRITERIA[:4]:
            raise ValueError(f"criterion must be one of {CRITERIA[:4]} (consistency: consistency_request)")
        return self.request(criterion, id=id, question=question, answer=answer, prediction=prediction)

    def consistency_request(self, question1: str, question2: str, answer: str, prediction1: str, prediction2: str,
                            *, id: str | None = None) -> JudgeRequest:
        return self.request("consistency", id=id, question1=question1, question2=question2, answer=answer,
                            prediction1=prediction1, prediction2=prediction2)

    def description_requests(self, item_id: str, question: str, answer: str, prediction: str,
                             cons_question1: str, cons_question2: str, cons_answer: str,
                             cons_prediction1: str, cons_prediction2: str) -> dict[str, JudgeRequest]:
        """The five judge calls of one description item, keyed by criterion; ids are ``{item_id}/{criterion}``."""
        out = {c: self.score_request(c, question, answer, prediction, id=f"{item_id}/{c}") for c in CRITERIA[:4]}
        out["consistency"] = self.consistency_request(cons_question1, cons_question2, cons_answer, cons_prediction1,
                                                      cons_prediction2, id=f"{item_id}/consistency")
        return out

    def summary_request(self, clip_descriptions: Sequence[str], *, id: str | None = None) -> JudgeRequest:
        """TSU: merge per-clip descriptions (already in clip order: clip 1, 2, ..., 10, not 1, 10, 2) into one."""
        return self.request("tsu_summary", id=id, clip_descriptions=format_clip_descriptions(clip_descriptions))

    def mcq_request(self, question: str, options: Mapping[str, str] | Sequence[str], prediction: str, *,
                    id: str | None = None) -> JudgeRequest:
        """Which option letter a free-form ``prediction`` expresses. ``options``: ``{"A": text, ...}`` or a list
        (lettered A, B, ...). The reply is validated against those letters plus ``Z``."""
        text, letters = format_options(options)
        return self.request("mcq", id=id, choices=letters, question=question, options=text, prediction=prediction)


def format_options(options: Mapping[str, str] | Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``"(A) text (B) text ..."`` and the letters, from a ``{letter: text}`` mapping (letters upper-cased, order
    kept; numbered keys ``"1".."6"`` map to A..F) or a sequence (lettered A, B, ...)."""
    if isinstance(options, Mapping):
        items = []
        for k, v in options.items():
            k = str(k).strip()
            if k.isdigit():
                n = int(k)
                if not 1 <= n <= 25:
                    raise ValueError(f"option number {k} out of range")
                k = chr(ord("A") + n - 1)
            if len(k) != 1 or not k.isalpha() or k.upper() == "Z":
                raise ValueError(f"option key {k!r} is not a single letter A-Y")
            items.append((k.upper(), str(v)))
    else:
        if isinstance(options, str):
            raise TypeError("options must be a mapping or a list of strings, not one string")
        items = [(chr(ord("A") + i), str(v)) for i, v in enumerate(options)]
    if not items:
        raise ValueError("no options")
    letters = tuple(k for k, _ in items)
    if len(set(letters)) != len(letters):
        raise ValueError(f"duplicate option letters {letters}")
    return " ".join(f"({k}) {v}" for k, v in items), letters


def format_clip_descriptions(clip_descriptions: Sequence[str]) -> str:
    if isinstance(clip_descriptions, str):
        raise TypeError("clip_descriptions must be a list of strings (one per clip, in clip order)")
    if not clip_descriptions:
        raise ValueError("no clip descriptions")
    return "\n\n".join(f"Clip {i}: {' '.join(str(d).split())}" for i, d in enumerate(clip_descriptions, 1))


def default_prompt_set() -> JudgePromptSet:
    """The built-in ``llavidal-judge@1`` set."""
    return JudgePromptSet.default()


def load_prompt_set(path: str | os.PathLike[str] | None = None) -> JudgePromptSet:
    """A judge prompt set from a JSON file (validated; :class:`PromptSetError` says what is wrong), or the built-in
    set when ``path`` is ``None``."""
    return JudgePromptSet.load(path)


def save_prompt_set(prompt_set: PromptSet, path: str | os.PathLike[str]) -> Path:
    return prompt_set.save(path)


# ----------------------------------------------------------------------------------------------------------------
# zero-shot open-ended QA (MSVD-QA, MSRVTT-QA, ActivityNet-QA)
# ----------------------------------------------------------------------------------------------------------------
OPENQA_PROMPT_SET_NAME = "llavidal-openqa"

_OPENQA = {
    "system": (
        "You check answers that a video question-answering system gave to short factual questions about videos. "
        "For each case you get the question, the reference answer (usually one or a few words) and the system's "
        "answer, which may be a whole sentence. You cannot see the video: the reference answer is the truth.\n\n"
        "Decide whether the system's answer means the same as the reference answer:\n"
        "- synonyms, paraphrases, singular/plural and more specific wording of the same thing count as the same "
        "(reference 'man', answer 'a young man in a hat' is correct);\n"
        "- an answer that names something else, adds a contradicting detail, or hedges between several answers "
        "is not correct;\n"
        "- for yes/no questions only the polarity counts;\n"
        "- for counts, the number must be the same.\n\n"
        "Then grade how well it matches, as an integer: 5 = same meaning, 4 = same meaning with a small "
        "imprecision, 3 = partly right, 2 = mostly wrong, 1 = wrong but related, 0 = wrong or no answer."),
    "user": (
        "Question: ${question}\n"
        "Reference answer: ${answer}\n"
        "System's answer: ${prediction}\n\n"
        "Reply with a Python dictionary string and nothing else: {'correct': 'yes' or 'no', 'score': N} where N "
        "is an integer from 0 to 5 (a number, not a string), e.g. {'correct': 'no', 'score': 1}."),
}


class OpenQAPromptSet(PromptSet):
    """The judge prompt of the zero-shot open-ended QA benchmarks: is the reply the reference answer (yes/no) and
    how well does it match (0-5). Built-in set ``llavidal-openqa@1``; ``--prompt-set FILE`` loads another."""

    SPECS = {"openqa": PromptSpec(_QAP, kind=KIND_VERDICT)}

    @classmethod
    def default_dict(cls) -> dict[str, Any]:
        return {"name": OPENQA_PROMPT_SET_NAME, "version": "1",
                "description": "LLAVIDAL judge prompt for zero-shot open-ended video QA (yes/no and a 0-5 score)",
                "prompts": {"openqa": dict(_OPENQA)}}

    def openqa_request(self, question: str, answer: str, prediction: str, *, id: str | None = None) -> JudgeRequest:
        p = self.prompts["openqa"]
        return JudgeRequest(messages=tuple(p.render(question=question, answer=answer, prediction=prediction)),
                            kind=p.kind, prompt_set=self.ident, prompt_key="openqa", id=id, max_tokens=p.max_tokens)


def prompt_set_for(kind: str, path: str | os.PathLike[str] | None = None) -> PromptSet:
    """The judge prompt set of a task kind (``openqa``: :class:`OpenQAPromptSet`; otherwise
    :class:`JudgePromptSet`), from ``path`` or built in."""
    return (OpenQAPromptSet if kind == "openqa" else JudgePromptSet).load(path)

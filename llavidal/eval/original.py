"""The wording of the original LLAVIDAL release's evaluation, read at run time from the user's checkout of it.

``--protocol paper`` reproduces what produced the paper's numbers, and that needs the release's exact prompt text:
its system prompt (``llavidal_v1``), the instruction it puts between a question and its choices, the MCQ-parsing
prompt and the answer prefixes it strips, the five judge prompts, the TSU question, paraphrases and summariser
prompts. None of that text is in this repository. :class:`OriginalRelease` parses the release's Python files with
:mod:`ast` (nothing of it is imported or run, so no CUDA is needed) and finds each piece by the place it has in the
code — an assignment in a function, the ``system`` keyword of a conversation template, the ``content`` of a chat
message dict. A piece that cannot be found is an :class:`OriginalReleaseError` that names the file and the place.

Where the text is an f-string, it becomes an :class:`FText`: literal parts and named fields, rendered by
substituting the fields (never with :meth:`str.format`, so literal braces in the text stay as they are).
"""
from __future__ import annotations

import ast
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

__all__ = ["FText", "OriginalRelease", "OriginalReleaseError", "find_original_repo"]

ENV_VAR = "ORIGINAL_REPO"

# where each piece lives in the release (paths relative to its root)
CONVERSATION = "llavidal/video_conversation.py"
EVAL_DIR = "evaluation/ADL-X"
MCQ_SCRIPT = f"{EVAL_DIR}/eval_adlxmcq.py"
MCQ_PARSER = f"{EVAL_DIR}/mcq_parsing_llm.py"
JUDGE = f"{EVAL_DIR}/videochatgpt_scoring.py"
TSU_DESC = f"{EVAL_DIR}/eval_tsu_desc.py"
LEGACY = {
    "charades-ar": f"{EVAL_DIR}/legacy/multiproc_eval_Charades-AR.py",
    "smarthome-ar": f"{EVAL_DIR}/legacy/multiproc_eval_SH-AR.py",
    "lemma-tc": f"{EVAL_DIR}/legacy/multiproc_eval_LEMMA-TC.py",
    "tsu-tc": f"{EVAL_DIR}/legacy/multiproc_eval_TSU-TC.py",
}
#: criterion -> the release's judge function
JUDGE_FUNCTIONS = {
    "correctness": "get_correctness_score",
    "detail": "get_detail_orientation_score",
    "context": "get_context_score",
    "temporal": "get_temporal_score",
    "consistency": "get_consistency_score",
}


class OriginalReleaseError(ValueError):
    """The checkout of the original release lacks a file or a piece the paper protocol needs."""


@dataclass(frozen=True)
class FText:
    """Text with named fields: ``parts`` are literal strings and ``(name,)`` tuples."""

    parts: tuple[str | tuple[str], ...]
    where: str = field(default="", compare=False)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(p[0] for p in self.parts if isinstance(p, tuple))

    def render(self, **values: object) -> str:
        missing = self.names - values.keys()
        if missing:
            raise TypeError(f"{self.where}: fields {sorted(missing)} not given")
        return "".join(p if isinstance(p, str) else str(values[p[0]]) for p in self.parts)

    def literal(self) -> str:
        """The text when it has no fields."""
        if self.names:
            raise OriginalReleaseError(f"{self.where}: expected plain text, found fields {sorted(self.names)}")
        return "".join(self.parts)  # type: ignore[arg-type]


def _ftext(node: ast.AST, where: str) -> FText:
    """A Constant string or an f-string whose fields are bare names."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return FText((node.value,), where)
    if isinstance(node, ast.JoinedStr):
        parts: list[str | tuple[str]] = []
        for v in node.values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                parts.append(v.value)
            elif (isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name) and v.conversion == -1
                  and v.format_spec is None):
                parts.append((v.value.id,))
            else:
                raise OriginalReleaseError(f"{where}: an f-string field that is not a plain name "
                                           f"({ast.unparse(v)})")
        return FText(tuple(parts), where)
    raise OriginalReleaseError(f"{where}: expected a string or an f-string, found {type(node).__name__}")


def _function(tree: ast.Module, name: str, where: str) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise OriginalReleaseError(f"{where}: no function {name}()")


def _assigned(scope: ast.AST, target: str, where: str) -> ast.AST:
    """The value of the first assignment ``target = ...`` in ``scope``."""
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == target for t in node.targets):
            return node.value
    raise OriginalReleaseError(f"{where}: no assignment to {target!r}")


def _message_content(func: ast.FunctionDef, role: str, where: str) -> ast.AST:
    """The ``content`` value of the chat-message dict literal ``{"role": role, "content": ...}`` in ``func``."""
    for node in ast.walk(func):
        if isinstance(node, ast.Dict):
            keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
            if "role" in keys and "content" in keys:
                r = node.values[keys.index("role")]
                if isinstance(r, ast.Constant) and r.value == role:
                    return node.values[keys.index("content")]
    raise OriginalReleaseError(f"{where}: no {{'role': {role!r}, 'content': ...}} message")


def _expect(text: FText, names: set[str]) -> FText:
    if text.names != frozenset(names):
        raise OriginalReleaseError(f"{text.where}: fields {sorted(text.names)}, expected {sorted(names)}")
    return text


def find_original_repo(path: str | os.PathLike | None) -> Path:
    """The checkout given (``--original-repo``), else ``$ORIGINAL_REPO``; a clear error when neither is set."""
    path = path or os.environ.get(ENV_VAR)
    if not path:
        raise OriginalReleaseError(
            "the original release's prompt wording (--protocol paper, the llavidal_v1 template) is read from your "
            "checkout of it, never copied into this project: clone it (git clone https://github.com/ADL-X/LLAVIDAL) "
            f"and pass --original-repo PATH or set ${ENV_VAR}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise OriginalReleaseError(f"--original-repo {root}: no such folder")
    return root


class OriginalRelease:
    """The pieces of the release's evaluation the paper protocol needs, parsed from a checkout at ``root``.

    Pieces are parsed when first used, so a run needs only the files of the tasks it runs; :meth:`check` parses
    everything (a clear error up front)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._trees: dict[str, ast.Module] = {}

    def _tree(self, rel: str) -> ast.Module:
        if rel not in self._trees:
            path = self.root / rel
            try:
                source = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise OriginalReleaseError(f"{path}: not found; is {self.root} a checkout of the original LLAVIDAL "
                                           "release (github.com/ADL-X/LLAVIDAL)?") from None
            try:
                self._trees[rel] = ast.parse(source, filename=str(path))
            except SyntaxError as e:
                raise OriginalReleaseError(f"{path}: not valid Python ({e})") from None
        return self._trees[rel]

    def _in_function(self, rel: str, func: str, target: str) -> FText:
        where = f"{self.root / rel}: {func}()"
        return _ftext(_assigned(_function(self._tree(rel), func, where), target, where), f"{where}: {target}")

    # -- the pieces ---------------------------------------------------------------------------------------------
    @cached_property
    def system_prompt(self) -> str:
        """The ``llavidal_v1`` conversation template's system text (the original's inference system prompt)."""
        where = f"{self.root / CONVERSATION}: conv_llavidal_v1"
        call = _assigned(self._tree(CONVERSATION), "conv_llavidal_v1", where)
        if isinstance(call, ast.Call):
            for kw in call.keywords:
                if kw.arg == "system":
                    return _ftext(kw.value, f"{where}(system=...)").literal()
        raise OriginalReleaseError(f"{where}: not a call with a system= keyword")

    @cached_property
    def mcq_question(self) -> FText:
        """Current MCQ files: the question, the instruction and the choices (``question``, ``choices_str``)."""
        return _expect(self._in_function(MCQ_SCRIPT, "main", "full_question"), {"question", "choices_str"})

    def legacy_question(self, task: str) -> FText:
        """Legacy files: how each legacy script builds the question it asks (``question``, ``choices_str``)."""
        rel = LEGACY[task]
        if task in ("charades-ar", "tsu-tc"):
            return _expect(self._in_function(rel, "run_inference", "full_question"), {"question", "choices_str"})
        # Smarthome-AR and LEMMA-TC (whose question first gets lemma_legacy_suffix appended)
        return _expect(self._in_function(rel, "run_inference", "formatted_question"), {"question", "choices_str"})

    @cached_property
    def lemma_legacy_suffix(self) -> str:
        """Legacy LEMMA-TC appends this text to the question before the choices (and parses with it)."""
        where = f"{self.root / LEGACY['lemma-tc']}: run_inference()"
        func = _function(self._tree(LEGACY["lemma-tc"]), "run_inference", where)
        for node in ast.walk(func):
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "question"
                                                     for t in node.targets)
                    and isinstance(node.value, ast.BinOp) and isinstance(node.value.op, ast.Add)):
                return _ftext(node.value.right, f"{where}: question = ... + <suffix>").literal()
        raise OriginalReleaseError(f"{where}: no assignment question = ... + '<suffix>'")

    @cached_property
    def mcq_parse_prompt(self) -> FText:
        """The prompt that asks an LLM which option a reply names (``question``, ``options``, ``prediction``)."""
        return _expect(self._in_function(MCQ_PARSER, "build_prompt", "prompt"), {"question", "options", "prediction"})

    @cached_property
    def answer_prefixes(self) -> tuple[str, ...]:
        """The prefixes the release's letter extraction removes from the parser's reply, in order."""
        where = f"{self.root / MCQ_PARSER}: extract_characters_regex()"
        value = _assigned(_function(self._tree(MCQ_PARSER), "extract_characters_regex", where), "answer_prefixes",
                          where)
        if not isinstance(value, ast.List):
            raise OriginalReleaseError(f"{where}: answer_prefixes is not a list literal")
        return tuple(_ftext(v, f"{where}: answer_prefixes").literal() for v in value.elts)

    def judge_prompt(self, criterion: str) -> tuple[str, FText]:
        """``(system text, user text)`` of the Video-ChatGPT judge call for ``criterion``."""
        func_name = JUDGE_FUNCTIONS[criterion]
        where = f"{self.root / JUDGE}: {func_name}()"
        func = _function(self._tree(JUDGE), func_name, where)
        system = _ftext(_message_content(func, "system", where), f"{where}: system message").literal()
        user = _ftext(_message_content(func, "user", where), f"{where}: user message")
        names = ({"question1", "question2", "answer", "lvlm_pred1", "lvlm_pred2"} if criterion == "consistency"
                 else {"question", "answer", "lvlm_pred"})
        return system, _expect(user, names)

    @cached_property
    def tsu_questions(self) -> tuple[str, str, str]:
        """TSU-Description: the question asked of every clip, and the two consistency paraphrases."""
        return tuple(self._in_function(TSU_DESC, "main", name).literal()
                     for name in ("desc_question", "question_cons_1", "question_cons_2"))  # type: ignore[return-value]

    @cached_property
    def tsu_summary_prompt(self) -> tuple[str, FText]:
        """``(system text, user text with mega_caption)`` of the TSU clip-description summariser."""
        where = f"{self.root / TSU_DESC}: merge_clip_desc()"
        func = _function(self._tree(TSU_DESC), "merge_clip_desc", where)
        system = _ftext(_message_content(func, "system", where), f"{where}: system message").literal()
        return system, _expect(_ftext(_message_content(func, "user", where), f"{where}: user message"),
                               {"mega_caption"})

    @cached_property
    def commit(self) -> str | None:
        """The checkout's commit (``git rev-parse HEAD``), or ``None`` for a copy without git metadata."""
        try:
            out = subprocess.run(["git", "-C", str(self.root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        sha = out.stdout.strip()
        return sha if out.returncode == 0 and len(sha) == 40 else None

    def check(self, tasks: Mapping[str, str] | None = None) -> None:
        """Parse every piece the given ``{task: file format}`` runs need (all pieces when ``tasks`` is None)."""
        _ = self.system_prompt
        for task, fmt in (tasks or {**{t: "legacy" for t in LEGACY}, "charades-desc": "", "tsu-desc": ""}).items():
            if task in LEGACY:
                _ = self.mcq_parse_prompt, self.answer_prefixes
                if fmt == "combined":
                    _ = self.mcq_question
                else:
                    self.legacy_question(task)
                    if task == "lemma-tc":
                        _ = self.lemma_legacy_suffix
            else:
                for c in JUDGE_FUNCTIONS:
                    self.judge_prompt(c)
                if task == "tsu-desc":
                    _ = self.tsu_questions, self.tsu_summary_prompt

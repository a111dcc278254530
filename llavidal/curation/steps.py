"""The protocol every LLM curation step (captions, describe, qa) follows, and the reply shapes they parse.

The endpoint client is :class:`llavidal.llm.LLMClient` (retries, re-asks of malformed replies, circuit breaker,
statistics); this module adds what a *step* needs around it:

**Parsing.** :func:`parse_text` (a caption), :func:`parse_description` (a paragraph, also out of a ``{"A": ...}``
dict as the original prompts asked for) and :func:`parse_qa_list` (a list of ``{"Q", "A"}`` from JSON, JSON in a
code fence, a Python literal, surrounded by prose, or cut off after the last complete object).

**Bookkeeping.** :class:`StepLog` keeps a step's append-only results (JSON lines; a killed run loses at most the
requests in flight), its ``failures.jsonl`` and its manifest (what was done, reused, skipped and failed, and why;
model, prompt version, temperature and seed). :class:`LLMStep` is the protocol of a step: what its items are, the
request per item and what to keep of the reply, each a small method; its ``run`` does the bounded concurrency, the
progress bar, and the bookkeeping when the breaker opens or the run is interrupted. :func:`exit_code` turns the
manifest into the command's exit code.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..io_utils import append_jsonl, atomic_write_json, read_jsonl
from ..llm import CallResult, LLMClient, LLMConfig, LLMConfigError, ReplyError, add_endpoint_args, run_bounded
from ..llm.client import parse_text
from ..llm.config import config_from_args
from ..llm.parsing import balanced_spans, clean_reply, load_literal, short

logger = logging.getLogger(__name__)

__all__ = [
    "CurationConfig", "ReplyError", "StepError", "StepLog", "add_llm_args", "exit_code", "llm_config_from_args",
    "LLMStep", "load_actions", "parse_description", "parse_qa_list", "parse_text", "print_summary",
    "sum_stats", "word_count",
]

T = TypeVar("T")


class StepError(ValueError):
    """A curation step cannot run (bad input file, bad configuration, results of another model in the output);
    the message names the file and what was expected."""


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurationConfig(LLMConfig):
    """:class:`~llavidal.llm.LLMConfig` with curation's names (``$LLAVIDAL_CURATION_BASE_URL`` / ``_MODEL`` /
    ``_API_KEY``, then ``$OPENAI_*``; bare ``--model`` ... flags) and a 512-token default reply budget."""

    max_tokens: int = 512
    role: str = field(default="curation", compare=False)
    env: str = field(default="LLAVIDAL_CURATION", compare=False)
    flag_prefix: str = field(default="--", compare=False)


def add_llm_args(p: argparse.ArgumentParser, *, temperature: float, required: bool = True,
                 concurrency: int = 8) -> None:
    """The endpoint flags every LLM step shares (``--endpoint``, ``--model``, ... see
    :func:`llavidal.llm.add_endpoint_args`), plus ``--prompts``."""
    g = add_endpoint_args(p, "", CurationConfig, temperature=temperature, concurrency=concurrency,
                          title="LLM endpoint (any OpenAI-compatible chat-completions server)"
                                + (": --model is required" if required else ""))
    g.add_argument("--prompts", default=None, help="curation prompt-set JSON (default: the built-in versioned set)")


def llm_config_from_args(args: argparse.Namespace, **overrides: Any) -> CurationConfig:
    try:
        return config_from_args(args, "", CurationConfig, **overrides)
    except LLMConfigError as e:
        raise StepError(str(e)) from None


# ----------------------------------------------------------------------------------------------------------------
# reply parsing
# ----------------------------------------------------------------------------------------------------------------


_LABEL = re.compile(r"^\s*(?:\*\*)?(?:video\s+)?(?:description|answer|paragraph)(?:\*\*)?\s*:\s*", re.IGNORECASE)
_DESC_KEYS = ("a", "answer", "description", "text", "paragraph")


def parse_description(text: str | None) -> str:
    """One paragraph of description. Accepts the plain paragraph (an optional ``Description:`` label is dropped),
    or a JSON / Python dict with the text under ``A`` / ``answer`` / ``description`` (the shape the original
    prompts asked for). Whitespace runs are collapsed."""
    body = clean_reply(text)
    if body.startswith("{"):
        obj = load_literal(body)
        if isinstance(obj, dict):
            for k, v in obj.items():
                if str(k).strip().lower() in _DESC_KEYS and isinstance(v, str) and v.strip():
                    return " ".join(v.split())
            raise ReplyError(f"a dict without a description field (keys {sorted(map(str, obj))})")
    body = _LABEL.sub("", body)
    body = " ".join(body.split()).strip('"').strip()
    if not body:
        raise ReplyError("empty description")
    return body


def word_count(text: str) -> int:
    return len(text.split())


_Q_KEYS = ("q", "question")
_A_KEYS = ("a", "answer")


def _qa_pair(obj: Any, where: str) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise ReplyError(f"{where} is a {type(obj).__name__}, not an object with Q and A")
    low = {str(k).strip().lower(): v for k, v in obj.items()}
    q = next((low[k] for k in _Q_KEYS if k in low), None)
    a = next((low[k] for k in _A_KEYS if k in low), None)
    if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
        raise ReplyError(f"{where} lacks a non-empty 'Q' and 'A' (keys {sorted(map(str, obj))})")
    return {"Q": " ".join(q.split()), "A": " ".join(a.split())}


def _as_qa_items(obj: Any) -> list | None:
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:  # {"qa": [...]} / {"questions": [...]}
            return lists[0]
        low = {str(k).strip().lower() for k in obj}
        if low & set(_Q_KEYS) and low & set(_A_KEYS):  # one pair alone
            return [obj]
    return None


def parse_qa_list(text: str | None, n: int = 3) -> tuple[list[dict[str, str]], int]:
    """``n`` question-answer pairs ``[{"Q", "A"}, ...]`` from a reply, and how many extra pairs were dropped.

    Tried in order: the whole reply as JSON or a Python literal (code fences and ``<think>`` removed); each
    bracketed list in it; objects listed without brackets (``{...}, {...}``); a list cut off after its last
    complete object (closed for it). Keys are case-insensitive (``Q``/``question``, ``A``/``answer``). Fewer
    than ``n`` pairs is a :class:`ReplyError`; more are accepted, the first ``n`` kept and the rest counted.
    """
    body = clean_reply(text)
    candidates: list[Any] = [load_literal(body)]
    candidates += [load_literal(s) for s in balanced_spans(body, "[")]
    objs = [load_literal(s) for s in balanced_spans(body, "{")]
    if objs and all(isinstance(o, dict) for o in objs):
        candidates.append(objs if len(objs) > 1 else objs[0])
    last_error: ReplyError | None = None
    for cand in candidates:
        items = _as_qa_items(cand)
        if items is None:
            continue
        try:
            pairs = [_qa_pair(x, f"item {i + 1}") for i, x in enumerate(items)]
        except ReplyError as e:
            last_error = e
            continue
        if len(pairs) < n:
            last_error = ReplyError(f"{len(pairs)} question-answer pairs, expected {n}")
            continue
        return pairs[:n], len(pairs) - n
    if last_error is not None:
        raise last_error
    raise ReplyError(f"no list of question-answer pairs in reply {short(text)!r}")


# ----------------------------------------------------------------------------------------------------------------
# the step protocol
# ----------------------------------------------------------------------------------------------------------------


class LLMStep:
    """One LLM curation step over its items (``describe``, ``qa``). A subclass says what the items are and what to
    do with each, in small methods; :meth:`run` does the rest the same way for every step: bounded concurrency until
    done or the endpoint's circuit breaker opens, one progress bar, and — also when interrupted — every item that
    never started recorded as failed (never silently dropped), then the outputs and the manifest written.

    ``plan()`` → the items to do (count reused ones and skips into ``self.log``); ``work(item)`` runs on a worker
    thread and asks the endpoint; ``record(item, result)`` runs on the calling thread (the only one that writes
    files); ``outputs()`` writes the step's output files and returns the manifest's extra fields.
    """

    name = "step"
    unit = "item"

    def __init__(self, client: LLMClient, log: StepLog, *, concurrency: int = 8, progress: bool = True):
        self.client, self.log, self.concurrency, self.progress = client, log, concurrency, progress

    # -- what a step defines --------------------------------------------------------------------------------------
    def plan(self) -> list:
        raise NotImplementedError

    def work(self, item: Any) -> CallResult:
        raise NotImplementedError

    def record(self, item: Any, result: CallResult) -> None:
        raise NotImplementedError

    def outputs(self) -> dict[str, Any]:
        raise NotImplementedError

    def label(self, item: Any) -> str:
        return str(item)

    def attempted(self, item: Any) -> bool:
        raise NotImplementedError

    # -- the run ----------------------------------------------------------------------------------------------------
    def _on_done(self, item: Any, result: Any, error: BaseException | None) -> None:
        if error is not None:  # a bug, not a server problem: recorded for the item all the same
            result = self.failed_result(f"{type(error).__name__}: {error}")
        self.record(item, result)
        if self._bar is not None:
            self._bar.update(1)

    def failed_result(self, error: str) -> Any:
        return CallResult(False, error=error)

    def _finish(self, status: str) -> None:
        extra = {**self.outputs(), "llm": self.client.config.record(), "concurrency": self.concurrency,
                 "llm_stats": self.client.stats.to_dict()}
        if self.client.tripped:
            extra["aborted_because"] = self.client.tripped
        self.log.write_manifest(status, **extra)

    def run(self) -> dict[str, Any]:
        """Run the step; returns the manifest. The status is ``done``, ``aborted`` (the breaker opened) or
        ``interrupted (...)`` (written before the exception propagates)."""
        todo = self.plan()
        self._bar = None
        if self.progress and todo:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(todo), desc=self.name, unit=self.unit, dynamic_ncols=True)
        status = "interrupted"
        try:
            run_bounded(todo, self.work, self._on_done, self.concurrency,
                        should_stop=lambda: self.client.tripped is not None, on_idle=self.log.flush_if_due)
            status = "aborted" if self.client.tripped else "done"
        except BaseException as e:
            status = f"interrupted ({type(e).__name__}: {str(e)[:200]})"
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
            reason = "not attempted in this run (" + (self.client.tripped or "interrupted") + ")"
            for item in todo:
                if not self.attempted(item) and self.label(item) not in self.log.failed:
                    self.log.failed[self.label(item)] = reason
            self._finish(status)
        return read_json(self.log.manifest, "manifest")


# ----------------------------------------------------------------------------------------------------------------
# inputs shared by describe and qa
# ----------------------------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike, what: str) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepError(f"{p}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise StepError(f"{p}: {what} is not valid JSON ({e})") from None


def load_actions(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """``actions.json`` of the stitch step: ``{video: {"actions": [names in order], "sentence": "..."}}``.

    Returns ``(good, bad)``: ``good[video] = {"actions": [...], "sentence": str}`` (a missing sentence is built
    from the actions), ``bad[video]`` = why its entry is unusable (the step skips that video and says so)."""
    data = read_json(path, "actions JSON")
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected an object {{video name: {{'actions': [...], 'sentence': ...}}}}, got "
                        f"{type(data).__name__}")
    good, bad = {}, {}
    for name, entry in data.items():
        acts = entry.get("actions") if isinstance(entry, dict) else None
        if not isinstance(acts, list) or not acts or not all(isinstance(a, str) and a.strip() for a in acts):
            bad[name] = (f"{path}: entry {name!r}: 'actions' must be a non-empty list of action names "
                         f"(got {short(json.dumps(entry, ensure_ascii=False), 80)})")
            continue
        sentence = entry.get("sentence")
        if sentence is not None and not isinstance(sentence, str):
            bad[name] = f"{path}: entry {name!r}: 'sentence' must be a string"
            continue
        acts = [" ".join(a.split()) for a in acts]
        good[name] = {"actions": acts, "sentence": (sentence or "").strip() or default_sentence(acts)}
    return good, bad


def default_sentence(actions: Sequence[str]) -> str:
    if len(actions) == 1:
        return f"The person performs one action: {actions[0]}."
    return "The person performs these actions in order: " + ", then ".join(actions) + "."


def format_actions(entry: Mapping[str, Any]) -> str:
    """The action sentence followed by the numbered list: what the prompts see as ``${actions}``."""
    numbered = "; ".join(f"{i}. {a}" for i, a in enumerate(entry["actions"], 1))
    return f"{entry['sentence']} ({numbered})"


# ----------------------------------------------------------------------------------------------------------------
# step bookkeeping
# ----------------------------------------------------------------------------------------------------------------


def run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f"-{socket.gethostname()}-{os.getpid()}"


class StepLog:
    """Results, failures and manifest of one step run.

    ``results``: append-only JSON lines, one per finished item; an item is done iff it has a record there. Each
    record carries ``identity`` fields (model, prompt version, ...); records made under another identity are an
    error (:meth:`check_identity`), so a rerun with another model never mixes outputs silently.
    ``failures``: append-only ``failures.jsonl``, one line per failed item per run (a rerun asks again).
    ``manifest``: rewritten at the end of every run (also after an interruption).

    Results are written in small batches: a record waits at most ``flush_s`` seconds (or until ``flush_n`` are
    waiting) before it is appended and fsynced, so a fast run does not fsync every reply while a kill loses at
    most the replies of the last ``flush_s`` seconds (besides those in flight). Slow replies go out one by one.
    """

    def __init__(self, step: str, results: Path, failures: Path, manifest: Path, identity: Mapping[str, Any],
                 flush_s: float = 0.2, flush_n: int = 64):
        self.step, self.results, self.failures, self.manifest = step, Path(results), Path(failures), Path(manifest)
        self.identity = dict(identity)
        self.flush_s, self.flush_n = flush_s, flush_n
        self._buf: list[dict] = []
        self._last_flush = time.monotonic()
        self.run = run_id()
        self.t0 = time.time()
        self.counts: Counter = Counter()
        self.skipped: dict[str, dict[str, str]] = {}
        self.failed: dict[str, str] = {}

    def load(self, key: Callable[[dict], Any]) -> dict[Any, dict]:
        """Done records by ``key(record)`` (the first one wins), after the identity check."""
        rows = read_jsonl(self.results)
        self.check_identity(rows, self.results)
        out: dict[Any, dict] = {}
        for r in rows:
            out.setdefault(key(r), r)
        return out

    def check_identity(self, rows: Iterable[dict], where: Path) -> None:
        bad = Counter()
        for r in rows:
            other = tuple((k, r.get(k)) for k in self.identity if r.get(k) != self.identity[k])
            if other:
                bad[other] += 1
        if bad:
            (diff, _), = list(bad.items())[:1]
            found = ", ".join(f"{k}={v!r}" for k, v in diff)
            want = ", ".join(f"{k}={self.identity[k]!r}" for k, _ in diff)
            raise StepError(f"{where}: {sum(bad.values())} results were made with {found}, this run uses {want}; "
                            "results are never mixed: pass another output path, or delete those files to start over")

    def add_result(self, rec: dict) -> None:
        self._buf.append({**rec, **self.identity, "run": self.run})
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if self._buf and (len(self._buf) >= self.flush_n or time.monotonic() - self._last_flush >= self.flush_s):
            self.flush()

    def flush(self) -> None:
        if self._buf:
            append_jsonl(self.results, self._buf)
            self._buf = []
        self._last_flush = time.monotonic()

    def add_failure(self, item: str, error: str, **extra: Any) -> None:
        self.failed[item] = error
        append_jsonl(self.failures, [{"step": self.step, "item": item, "error": error, "run": self.run,
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}])

    def skip(self, item: str, kind: str, reason: str) -> None:
        """``kind``: a short label counted in the manifest (``no_captions``, ``bad_actions`` ...)."""
        self.skipped[item] = {"kind": kind, "reason": reason}

    def write_manifest(self, status: str, **extra: Any) -> Path:
        self.flush()
        skip_kinds = Counter(v["kind"] for v in self.skipped.values())
        manifest = {
            "step": self.step, "status": status, "run": self.run,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.t0)),
            "wall_s": round(time.time() - self.t0, 3), "host": platform.node(),
            "identity": self.identity, "counts": dict(self.counts),
            "skipped": {"count": len(self.skipped), "by_kind": dict(sorted(skip_kinds.items())),
                        "items": dict(sorted(self.skipped.items()))},
            "failed": {"count": len(self.failed), "items": dict(sorted(self.failed.items()))},
            "failures_log": str(self.failures), "results": str(self.results),
            **extra,
        }
        return atomic_write_json(self.manifest, manifest)


def sum_stats(stats: list[dict]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, dict)):
                continue
            if isinstance(v, dict):
                d = total.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                total[k] = total.get(k, 0) + v
    return total


def exit_code(manifest: dict[str, Any], complete: int) -> int:
    """0: every item done. 1: the step ran, some items failed (recorded; a rerun asks again, the next step skips
    them), as ``curate crop`` / ``stitch`` do. 3: the step was aborted (endpoint failing, interrupted) or nothing
    at all succeeded although items failed (an endpoint down, a wrong model name ...): do not go on.
    Skipped items (an earlier step failed for them) do not change the code: they were counted there."""
    failed = manifest["failed"]["count"]
    if manifest["status"] != "done" or (failed and complete == 0):
        return 3
    return 1 if failed else 0


def print_summary(manifest: dict[str, Any], what: str, complete: int, out: str) -> None:
    f, s = manifest["failed"]["count"], manifest["skipped"]["count"]
    print(f"{manifest['step']}: {complete} {what} in {out}; {f} failed, {s} skipped ({manifest['status']}; "
          f"failures: {manifest['failures_log']})")
    if manifest.get("aborted_because"):
        print(f"aborted: {manifest['aborted_because']}")

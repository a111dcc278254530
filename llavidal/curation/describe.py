"""``llavidal curate describe``: weakly supervised video descriptions (docs/design.md#curation, step 4).

An LLM reads the frame captions of a stitched video (time-stamped, in order) together with its action sentence
(the certain part: which actions, in which order) and writes one paragraph of 150-300 words.

**Length policy.** The word count of every description is recorded. A reply outside ``--min-words`` ..
``--max-words`` is asked again once (``--length-retries 1``, with the next seed); the reply kept is the first one
inside the range, else the one nearest to it. It is accepted either way, flagged ``"in_range": false`` and counted
in the manifest (``out_of_range``): a short description of a short video is still useful, and a hard rule would
turn a model's habit into lost videos.

Files, for ``--out descriptions.json``::

    descriptions.json            {video: {"description": text, "word_count": n, "in_range": bool}}
    descriptions.results.jsonl   append-only, one line per described video (the resume state)
    descriptions.failures.jsonl  one line per failed video per run
    descriptions.manifest.json   counts, skips and failures with reasons, model / prompt / temperature / seed

Videos are the union of ``actions.json`` and ``captions.json``: a video without captions (its captions step
failed) or without a usable actions entry is skipped with the reason, never a crash. A rerun reuses every
described video (no request) and asks again for the failed ones.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_json
from ..llm import CallResult, LLMClient
from .prompts import load_curation_prompts
from .steps import (
    LLMStep,
    StepError,
    StepLog,
    add_llm_args,
    exit_code,
    format_actions,
    llm_config_from_args,
    load_actions,
    parse_description,
    print_summary,
    read_json,
    word_count,
)

logger = logging.getLogger(__name__)


def side_paths(out: Path) -> tuple[Path, Path, Path]:
    """``(results, failures, manifest)`` beside ``out``: ``{stem}.results.jsonl`` etc."""
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return (stem.with_name(stem.name + ".results.jsonl"), stem.with_name(stem.name + ".failures.jsonl"),
            stem.with_name(stem.name + ".manifest.json"))


def load_captions(path: Path) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """``captions.json`` -> ``(good, bad)``; ``bad[video]`` says which field of which entry is wrong."""
    data = read_json(path, "captions JSON")
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected an object {{video: [{{'t', 'frame', 'caption'}}, ...]}}, got "
                        f"{type(data).__name__}")
    good, bad = {}, {}
    for name, frames in data.items():
        if not isinstance(frames, list) or not frames:
            bad[name] = f"{path}: video {name!r}: expected a non-empty list of frames"
            continue
        for i, f in enumerate(frames):
            if not (isinstance(f, dict) and isinstance(f.get("caption"), str) and f["caption"].strip()
                    and isinstance(f.get("t"), (int, float))):
                bad[name] = (f"{path}: video {name!r}: frame entry {i} needs a number 't' and a non-empty "
                             f"'caption' (got {str(f)[:80]})")
                break
        else:
            good[name] = sorted(frames, key=lambda f: (f["t"], f.get("frame", 0)))
    return good, bad


def format_captions(frames: list[dict]) -> str:
    """One line per frame: ``[12.5 s] caption``."""
    return "\n".join(f"[{float(f['t']):.1f} s] {' '.join(f['caption'].split())}" for f in frames)


@dataclass
class DescribeOptions:
    min_words: int = 150
    max_words: int = 300
    length_retries: int = 1  # a reply outside the range is asked again this many times, then the nearest is kept
    max_tokens: int | None = None  # default: the prompt's own budget
    limit: int | None = None  # only the first N videos (sorted)

    def validate(self) -> None:
        if not 0 < self.min_words <= self.max_words:
            raise StepError(f"--min-words/--max-words must satisfy 0 < min <= max, got {self.min_words}, "
                            f"{self.max_words}")
        if self.length_retries < 0:
            raise StepError("--length-retries must be >= 0")


class DescribeStep(LLMStep):
    """Per video: captions + actions -> one description in the word range (asked again when outside it)."""

    name, unit = "describe", "video"

    def __init__(self, captions_path: Path, actions_path: Path, out: Path, client: LLMClient,
                 options: DescribeOptions, *, prompts_path: str | None = None, concurrency: int = 8,
                 progress: bool = True):
        options.validate()
        self.prompts = load_curation_prompts(prompts_path)
        self.prompt = self.prompts["describe"]
        results, failures, manifest = side_paths(Path(out))
        log = StepLog("describe", results, failures, manifest, {"model": client.model, "prompt": self.prompts.ident})
        super().__init__(client, log, concurrency=concurrency, progress=progress)
        self.captions_path, self.actions_path, self.out, self.opt = captions_path, actions_path, Path(out), options
        self.budget = options.max_tokens or self.prompt.max_tokens
        self.done = log.load(lambda r: r["video"])
        self.captions, self.bad_captions = load_captions(Path(captions_path))
        self.actions, self.bad_actions = load_actions(actions_path)
        self.names: list[str] = []

    def plan(self) -> list[str]:
        names = sorted(set(self.actions) | set(self.bad_actions) | set(self.captions) | set(self.bad_captions))
        self.names = names[: self.opt.limit] if self.opt.limit else names
        return [name for name in self.names if self._ready(name)]

    def _ready(self, name: str) -> bool:
        """Whether ``name`` is to be described now; reused and skipped videos are counted in the log."""
        log = self.log
        if name in self.done:
            log.counts["reused"] += 1
        elif name in self.bad_actions:
            log.skip(name, "bad_actions", self.bad_actions[name])
        elif name not in self.actions:
            log.skip(name, "no_actions", f"not in {self.actions_path}")
        elif name in self.bad_captions:
            log.skip(name, "bad_captions", self.bad_captions[name])
        elif name not in self.captions:
            log.skip(name, "no_captions", f"no captions in {self.captions_path} (the captions step failed for "
                                          "this video or has not run; see its manifest)")
        else:
            return True
        return False

    def work(self, name: str) -> tuple[CallResult, list[int], int]:
        """The best description of up to ``1 + length_retries`` asks, the word counts seen, the requests made."""
        lo, hi = self.opt.min_words, self.opt.max_words
        msgs = self.prompt.render(captions=format_captions(self.captions[name]),
                                  actions=format_actions(self.actions[name]), min_words=lo, max_words=hi)
        best: CallResult | None = None
        counts: list[int] = []
        requests = 0
        for k in range(self.opt.length_retries + 1):
            r = self.client.call(msgs, parse_description, max_tokens=self.budget, seed_offset=k * 100)
            requests += r.attempts
            if not r.ok:
                if best is None:
                    return r, counts, requests
                break  # keep the out-of-range one we have
            n = word_count(r.value)
            counts.append(n)
            if best is None or _distance(n, lo, hi) < _distance(word_count(best.value), lo, hi):
                best = r
            if lo <= n <= hi:
                break
        return best, counts, requests

    def failed_result(self, error: str) -> tuple[CallResult, list[int], int]:
        return CallResult(False, error=error), [], 0

    def record(self, name: str, result: tuple[CallResult, list[int], int]) -> None:
        r, counts, requests = result
        if not r.ok:
            self.log.add_failure(name, r.error or "unknown", video=name, reply=r.reply, requests=requests)
            return
        n = word_count(r.value)
        rec = {"video": name, "description": r.value, "word_count": n,
               "in_range": self.opt.min_words <= n <= self.opt.max_words, "word_counts_seen": counts,
               "requests": requests, "seed": r.seed, "served_model": r.served_model}
        self.log.add_result(rec)
        self.done[name] = rec
        self.log.counts["described"] += 1

    def attempted(self, name: str) -> bool:
        return name in self.done

    def outputs(self) -> dict[str, Any]:
        output = {name: {k: self.done[name][k] for k in ("description", "word_count", "in_range")}
                  for name in sorted(self.done)}
        atomic_write_json(self.out, output)
        wc = [v["word_count"] for v in output.values()]
        return {
            "inputs": {"captions": str(self.captions_path), "actions": str(self.actions_path),
                       "videos": len(self.names)},
            "outputs": {"descriptions": str(self.out), "videos": len(output)},
            "length": {"min_words": self.opt.min_words, "max_words": self.opt.max_words,
                       "length_retries": self.opt.length_retries,
                       "policy": "a reply outside the range is asked again length_retries times, then the nearest "
                                 "is accepted and flagged in_range=false",
                       "out_of_range": sum(not v["in_range"] for v in output.values()),
                       "word_count_min": min(wc) if wc else None, "word_count_max": max(wc) if wc else None,
                       "word_count_mean": round(sum(wc) / len(wc), 1) if wc else None},
            "prompt_set": self.prompts.ident,
        }


def describe_videos(captions_path: Path, actions_path: Path, out: Path, client: LLMClient, *, concurrency: int = 8,
                    prompts_path: str | None = None, min_words: int = 150, max_words: int = 300,
                    length_retries: int = 1, max_tokens: int | None = None, limit: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Run the step; returns the manifest."""
    options = DescribeOptions(min_words, max_words, length_retries, max_tokens, limit)
    return DescribeStep(captions_path, actions_path, out, client, options, prompts_path=prompts_path,
                        concurrency=concurrency, progress=progress).run()


def _distance(n: int, lo: int, hi: int) -> int:
    return 0 if lo <= n <= hi else (lo - n if n < lo else n - hi)


def cmd_describe(args) -> int:
    cfg = llm_config_from_args(args)
    with LLMClient(cfg) as client:
        manifest = describe_videos(Path(args.captions), Path(args.actions), Path(args.out), client,
                                   concurrency=args.concurrency, prompts_path=args.prompts, min_words=args.min_words,
                                   max_words=args.max_words, length_retries=args.length_retries,
                                   max_tokens=args.max_tokens, limit=args.limit, progress=not args.no_progress)
    n = manifest["outputs"]["videos"]
    print_summary(manifest, "videos described", n, args.out)
    return exit_code(manifest, n)


def register_step(steps) -> None:
    p = steps.add_parser("describe", help="captions + action sentence -> one 150-300-word description per video "
                                          "(an LLM endpoint) -> descriptions.json")
    p.add_argument("--captions", required=True, help="captions.json of the captions step")
    p.add_argument("--actions", required=True, help="actions.json of the stitch step")
    p.add_argument("--out", required=True, help="descriptions JSON to write (results/failures/manifest beside it)")
    p.add_argument("--min-words", type=int, default=150)
    p.add_argument("--max-words", type=int, default=300)
    p.add_argument("--length-retries", type=int, default=1,
                   help="times a description outside the word range is asked again (default 1); then accepted "
                        "and flagged")
    p.add_argument("--limit", type=int, default=None, help="only the first N videos (sorted): a trial run")
    p.add_argument("--no-progress", action="store_true")
    add_llm_args(p, temperature=0.7, concurrency=8)
    p.set_defaults(func=cmd_describe)

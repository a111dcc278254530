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
from pathlib import Path
from typing import Any

from ..llm import CallResult, LLMClient
from .prompts import load_curation_prompts
from .steps import (
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
    run_step_items,
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


def describe_videos(captions_path: Path, actions_path: Path, out: Path, client: LLMClient, *, concurrency: int = 8,
                    prompts_path: str | None = None, min_words: int = 150, max_words: int = 300,
                    length_retries: int = 1, max_tokens: int | None = None, limit: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Run the step; returns the manifest."""
    from ..io_utils import atomic_write_json

    if not 0 < min_words <= max_words:
        raise StepError(f"--min-words/--max-words must satisfy 0 < min <= max, got {min_words}, {max_words}")
    if length_retries < 0:
        raise StepError("--length-retries must be >= 0")
    prompts = load_curation_prompts(prompts_path)
    prompt = prompts["describe"]
    results_path, failures_path, manifest_path = side_paths(Path(out))
    log = StepLog("describe", results_path, failures_path, manifest_path,
                  {"model": client.model, "prompt": prompts.ident})
    done = log.load(lambda r: r["video"])
    captions, bad_captions = load_captions(Path(captions_path))
    actions, bad_actions = load_actions(actions_path)

    names = sorted(set(actions) | set(bad_actions) | set(captions) | set(bad_captions))
    if limit:
        names = names[:limit]
    todo = []
    for name in names:
        if name in done:
            log.counts["reused"] += 1
        elif name in bad_actions:
            log.skip(name, "bad_actions", bad_actions[name])
        elif name not in actions:
            log.skip(name, "no_actions", f"not in {actions_path}")
        elif name in bad_captions:
            log.skip(name, "bad_captions", bad_captions[name])
        elif name not in captions:
            log.skip(name, "no_captions", f"no captions in {captions_path} (the captions step failed for this "
                                          "video or has not run; see its manifest)")
        else:
            todo.append(name)
    budget = max_tokens or prompt.max_tokens

    def work(name: str) -> tuple[CallResult, list[int], int]:
        msgs = prompt.render(captions=format_captions(captions[name]), actions=format_actions(actions[name]),
                             min_words=min_words, max_words=max_words)
        best: CallResult | None = None
        counts: list[int] = []
        requests = 0
        for k in range(length_retries + 1):
            r = client.call(msgs, parse_description, max_tokens=budget, seed_offset=k * 100)
            requests += r.attempts
            if not r.ok:
                if best is None:
                    return r, counts, requests
                break  # keep the out-of-range one we have
            n = word_count(r.value)
            counts.append(n)
            if best is None or _distance(n, min_words, max_words) < _distance(word_count(best.value), min_words,
                                                                               max_words):
                best = r
            if min_words <= n <= max_words:
                break
        return best, counts, requests

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="describe", unit="video", dynamic_ncols=True)

    def on_done(name: str, res, error: BaseException | None) -> None:
        if error is not None:
            res = (CallResult(False, error=f"{type(error).__name__}: {error}"), [], 0)
        r, counts, requests = res
        if r.ok:
            n = word_count(r.value)
            rec = {"video": name, "description": r.value, "word_count": n,
                   "in_range": min_words <= n <= max_words, "word_counts_seen": counts, "requests": requests,
                   "seed": r.seed, "served_model": r.served_model}
            log.add_result(rec)
            done[name] = rec
            log.counts["described"] += 1
        else:
            log.add_failure(name, r.error or "unknown", video=name, reply=r.reply, requests=requests)
        if bar is not None:
            bar.update(1)

    def finish(status: str) -> None:
        output = {}
        for name in sorted(done):
            r = done[name]
            output[name] = {"description": r["description"], "word_count": r["word_count"], "in_range": r["in_range"]}
        atomic_write_json(out, output)
        wc = [v["word_count"] for v in output.values()]
        extra = {
            "inputs": {"captions": str(captions_path), "actions": str(actions_path), "videos": len(names)},
            "outputs": {"descriptions": str(out), "videos": len(output)},
            "length": {"min_words": min_words, "max_words": max_words, "length_retries": length_retries,
                       "policy": "a reply outside the range is asked again length_retries times, then the nearest "
                                 "is accepted and flagged in_range=false",
                       "out_of_range": sum(not v["in_range"] for v in output.values()),
                       "word_count_min": min(wc) if wc else None, "word_count_max": max(wc) if wc else None,
                       "word_count_mean": round(sum(wc) / len(wc), 1) if wc else None},
            "llm": client.config.record(), "prompt_set": prompts.ident, "concurrency": concurrency,
            "llm_stats": client.stats.to_dict(),
        }
        if client.tripped:
            extra["aborted_because"] = client.tripped
        log.write_manifest(status, **extra)

    run_step_items(todo, work, on_done, finish, client=client, log=log, concurrency=concurrency, label=str,
                   attempted=lambda name: name in done, bar=bar)
    return read_json(manifest_path, "manifest")


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

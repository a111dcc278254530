"""``llavidal curate qa``: question-answer generation -> the ADL-X training JSON
(docs/design.md#curation, step 5; the format: docs/design.md#training-data).

Per video, two LLM calls on its description (and its action list): three **summary** QAs and three **detail**
QAs, at least one of them about the order of the actions. Each reply must hold a list of ``{"Q", "A"}`` objects;
:func:`~llavidal.curation.steps.parse_qa_list` reads JSON, JSON in a code fence, Python literals, lists surrounded by
prose and lists cut off after a complete object. A detail reply whose questions never ask about order (no word
such as *order*, *sequence*, *first*, *then*, *after*, *before*, *next*) is treated as malformed. A malformed reply
is asked again with the next seed, at most ``--max-parse-failures`` (3) times; then the call is recorded as failed
and the video left out (a rerun asks again). Extra pairs beyond three are dropped and counted.

Output (``--out adlx_train.json``): the training JSON (docs/design.md#training-data), as ``llavidal train`` reads
it: one record per QA pair, six per video (3 summary then 3 detail), videos sorted by name::

    {"id": "001_video_001", "video": "001_video_001.pkl", "object": "001_video_001_object.pkl",
     "pose": "001_video_001_pose.pkl",
     "conversations": [{"from": "human", "value": "<question>\\n<video><object><human_pose>"},
                       {"from": "gpt", "value": "<answer>"}]}

The placeholders follow the question on even record indices and precede it (then a line break) on odd ones, as in
the release. Feature file names come from ``--video-name``/``--object-name``/``--pose-name`` patterns (``{id}``
is the video name; defaults as the release's QA script wrote them); ``--modalities`` leaves modalities out.
Beside it: ``{stem}.results.jsonl`` (per video and kind, the resume state), ``{stem}.failures.jsonl``,
``{stem}.manifest.json``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..constants import MODALITIES, PUBLISHED_MODALITIES
from ..io_utils import atomic_write_json
from ..llm import CallResult, LLMClient
from .describe import format_captions, side_paths
from .prompts import load_curation_prompts
from .steps import (
    LLMStep,
    ReplyError,
    StepError,
    StepLog,
    add_llm_args,
    exit_code,
    format_actions,
    llm_config_from_args,
    load_actions,
    parse_qa_list,
    print_summary,
    read_json,
)

logger = logging.getLogger(__name__)

KINDS = ("summary", "detail")
QA_PER_KIND = 3
DEFAULT_NAMES = {"video": "{id}.pkl", "object": "{id}_object.pkl", "pose": "{id}_pose.pkl"}
_ORDER_WORDS = re.compile(r"\b(order|ordered|sequence|sequential|sequentially|first|firstly|then|after|afterwards|"
                          r"before|next|follow|follows|followed|following|finally|last|lastly|chronolog\w*|steps?|"
                          r"begin|begins|start|starts|end|ends)\b", re.IGNORECASE)


def is_order_question(q: str) -> bool:
    """Does a question ask about the order of actions? (a word-level heuristic; see the module docstring)"""
    return bool(_ORDER_WORDS.search(q))


def parse_summary(text: str | None) -> dict[str, Any]:
    pairs, extra = parse_qa_list(text, QA_PER_KIND)
    return {"qas": pairs, "dropped_extra": extra}


def parse_detail(text: str | None) -> dict[str, Any]:
    pairs, extra = parse_qa_list(text, QA_PER_KIND)
    if not any(is_order_question(p["Q"]) for p in pairs):
        raise ReplyError("no detail question asks about the order of the actions")
    return {"qas": pairs, "dropped_extra": extra}


PARSERS = {"summary": parse_summary, "detail": parse_detail}


def load_descriptions(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``descriptions.json`` of the describe step -> ``(good, bad)`` (a plain ``{video: text}`` map is accepted
    too)."""
    data = read_json(path, "descriptions JSON")
    if not isinstance(data, dict):
        raise StepError(f"{path}: expected an object {{video: {{'description': ...}}}}, got {type(data).__name__}")
    good, bad = {}, {}
    for name, v in data.items():
        text = v.get("description") if isinstance(v, dict) else v
        if isinstance(text, str) and text.strip():
            good[name] = " ".join(text.split())
        else:
            bad[name] = f"{path}: video {name!r}: needs a non-empty 'description' string"
    return good, bad


def training_records(qas: dict[str, list[dict[str, str]]], modalities: tuple[str, ...] = PUBLISHED_MODALITIES,
                     names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """docs/design.md#training-data records from ``{video: [6 QA pairs in order]}`` (videos sorted by name)."""
    names = {**DEFAULT_NAMES, **(names or {})}
    placeholders = "".join(MODALITIES[m].placeholder for m in PUBLISHED_MODALITIES if m in modalities)
    out: list[dict[str, Any]] = []
    for vid in sorted(qas):
        for qa in qas[vid]:
            rec: dict[str, Any] = {"id": vid}
            for m in PUBLISHED_MODALITIES:
                if m in modalities:
                    rec[m] = names[m].format(id=vid)
            q = qa["Q"]
            if not placeholders:
                human = q
            elif len(out) % 2 == 0:
                human = f"{q}\n{placeholders}"
            else:
                human = f"{placeholders}\n{q}"
            rec["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": qa["A"]}]
            out.append(rec)
    return out


class QAStep(LLMStep):
    """Per video two calls on its description: three summary QAs and three detail QAs (one about the order of the
    actions); the complete videos become the training JSON."""

    name, unit = "qa", "call"

    def __init__(self, descriptions_path: Path, actions_path: Path, out: Path, client: LLMClient, *,
                 concurrency: int = 8, prompts_path: str | None = None, max_tokens: int | None = None,
                 modalities: tuple[str, ...] = PUBLISHED_MODALITIES, names: dict[str, str] | None = None,
                 captions_path: Path | None = None, limit: int | None = None, progress: bool = True):
        unknown = set(modalities) - set(PUBLISHED_MODALITIES)
        if unknown:
            raise StepError(f"--modalities: unknown {sorted(unknown)} (expected some of {', '.join(PUBLISHED_MODALITIES)})")
        for m, pattern in (names or {}).items():
            if "{id}" not in pattern:
                raise StepError(f"--{m}-name {pattern!r} must contain {{id}} (the video name)")
        self.prompts = load_curation_prompts(prompts_path)
        self.captions: dict[str, list[dict]] = {}
        if captions_path is not None:
            from .describe import load_captions

            self.captions, _ = load_captions(Path(captions_path))
        for key in ("qa_summary", "qa_detail"):
            if "captions" in self.prompts[key].used and captions_path is None:
                raise StepError(f"prompt {key} of {self.prompts.ident} uses ${{captions}}: pass --captions "
                                "captions.json")
        results, failures, manifest = side_paths(Path(out))
        log = StepLog("qa", results, failures, manifest, {"model": client.model, "prompt": self.prompts.ident})
        super().__init__(client, log, concurrency=concurrency, progress=progress)
        self.descriptions_path, self.actions_path, self.captions_path = descriptions_path, actions_path, captions_path
        self.out, self.max_tokens, self.modalities, self.names = Path(out), max_tokens, modalities, names
        self.limit = limit
        self.done = log.load(lambda r: (r["video"], r["kind"]))
        self.descriptions, self.bad_desc = load_descriptions(Path(descriptions_path))
        self.actions, self.bad_actions = load_actions(actions_path)
        self.videos: list[str] = []

    def plan(self) -> list[tuple[str, str]]:
        videos = sorted(set(self.descriptions) | set(self.bad_desc) | set(self.actions) | set(self.bad_actions))
        self.videos = videos[: self.limit] if self.limit else videos
        return [(v, k) for v in self.videos if self._ready(v) for k in KINDS if (v, k) not in self.done]

    def _ready(self, v: str) -> bool:
        """Whether video ``v`` has calls to make now; reused and skipped videos are counted in the log."""
        log = self.log
        if all((v, k) in self.done for k in KINDS):
            log.counts["videos_reused"] += 1
        elif v in self.bad_actions:
            log.skip(v, "bad_actions", self.bad_actions[v])
        elif v not in self.actions:
            log.skip(v, "no_actions", f"not in {self.actions_path}")
        elif v in self.bad_desc:
            log.skip(v, "bad_description", self.bad_desc[v])
        elif v not in self.descriptions:
            log.skip(v, "no_description", f"no description in {self.descriptions_path} (the describe step failed "
                                          "for this video or has not run; see its manifest)")
        else:
            return True
        return False

    def work(self, item: tuple[str, str]) -> CallResult:
        v, kind = item
        prompt = self.prompts["qa_" + kind]
        msgs = prompt.render(description=self.descriptions[v], actions=format_actions(self.actions[v]),
                             captions=format_captions(self.captions[v]) if v in self.captions else "")
        return self.client.call(msgs, PARSERS[kind], max_tokens=self.max_tokens or prompt.max_tokens)

    def label(self, item: tuple[str, str]) -> str:
        return f"{item[0]}/{item[1]}"

    def record(self, item: tuple[str, str], r: CallResult) -> None:
        v, kind = item
        if not r.ok:
            self.log.add_failure(self.label(item), r.error or "unknown", video=v, kind=kind, reply=r.reply,
                                 attempts=r.attempts)
            return
        rec = {"video": v, "kind": kind, "qas": r.value["qas"], "dropped_extra": r.value["dropped_extra"],
               "attempts": r.attempts, "parse_failures": r.parse_failures, "seed": r.seed,
               "served_model": r.served_model}
        self.log.add_result(rec)
        self.done[item] = rec
        self.log.counts[f"{kind}_generated"] += 1

    def attempted(self, item: tuple[str, str]) -> bool:
        return item in self.done

    def outputs(self) -> dict[str, Any]:
        done = self.done
        complete = {v: done[(v, "summary")]["qas"] + done[(v, "detail")]["qas"]
                    for v in sorted({v for v, _ in done}) if all((v, k) in done for k in KINDS)}
        records = training_records(complete, self.modalities, self.names)
        atomic_write_json(self.out, records)
        return {
            "inputs": {"descriptions": str(self.descriptions_path), "actions": str(self.actions_path),
                       "captions": None if self.captions_path is None else str(self.captions_path),
                       "videos": len(self.videos)},
            "outputs": {"training_json": str(self.out), "videos": len(complete), "records": len(records),
                        "videos_incomplete": sorted({v for v, _ in done} - set(complete))},
            "format": {"modalities": list(self.modalities), "names": {**DEFAULT_NAMES, **(self.names or {})},
                       "qa_per_video": 2 * QA_PER_KIND,
                       "placeholders": "after the question on even record indices, before it on odd ones"},
            "dropped_extra_pairs": sum(r.get("dropped_extra", 0) for r in done.values()),
            "prompt_set": self.prompts.ident,
        }


def generate_qa(descriptions_path: Path, actions_path: Path, out: Path, client: LLMClient,
                **kw: Any) -> dict[str, Any]:
    """Run the step (keyword options: those of :class:`QAStep`); returns the manifest."""
    return QAStep(descriptions_path, actions_path, out, client, **kw).run()


def cmd_qa(args) -> int:
    cfg = llm_config_from_args(args)
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    names = {m: getattr(args, f"{m}_name") for m in PUBLISHED_MODALITIES if getattr(args, f"{m}_name")}
    with LLMClient(cfg) as client:
        manifest = generate_qa(Path(args.descriptions), Path(args.actions), Path(args.out), client,
                               concurrency=args.concurrency, prompts_path=args.prompts, max_tokens=args.max_tokens,
                               modalities=modalities, names=names,
                               captions_path=Path(args.captions) if args.captions else None, limit=args.limit,
                               progress=not args.no_progress)
    n = manifest["outputs"]["videos"]
    print_summary(manifest, f"videos ({manifest['outputs']['records']} training records)", n, args.out)
    return exit_code(manifest, n)


def register_step(steps) -> None:
    p = steps.add_parser("qa", help="description -> 3 summary + 3 detail QAs per video -> the training JSON that "
                                    "`llavidal train` reads")
    p.add_argument("--descriptions", required=True, help="descriptions.json of the describe step")
    p.add_argument("--actions", required=True, help="actions.json of the stitch step")
    p.add_argument("--out", required=True, help="training JSON to write (results/failures/manifest beside it)")
    p.add_argument("--captions", default=None, help="captions.json, only for prompt sets that use ${captions}")
    p.add_argument("--modalities", default="video,object,pose",
                   help="placeholders and feature keys per record (default video,object,pose)")
    p.add_argument("--video-name", default=None, help=f"video feature file pattern (default {DEFAULT_NAMES['video']})")
    p.add_argument("--object-name", default=None,
                   help=f"object feature file pattern (default {DEFAULT_NAMES['object']})")
    p.add_argument("--pose-name", default=None, help=f"pose feature file pattern (default {DEFAULT_NAMES['pose']})")
    p.add_argument("--limit", type=int, default=None, help="only the first N videos (sorted): a trial run")
    p.add_argument("--no-progress", action="store_true")
    add_llm_args(p, temperature=0.7, concurrency=8)
    p.set_defaults(func=cmd_qa)

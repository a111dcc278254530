"""``llavidal eval run``: one benchmark, one model → append-only predictions, a summary JSON and a Markdown table.

* Items come from :mod:`llavidal.eval.tasks`; the video of an item is read from a feature cache: for
  ``{video}.mp4`` the file ``{video}.pkl`` (or ``.pickle/.npy/.safetensors/.pt``) under ``--feature-dir``, then
  ``--video-dir``, also looked up by basename. With ``--clip``, raw videos without cached features are extracted
  once beforehand (:func:`prepare_raw_videos`). Object and pose features come from ``--object-dir`` and
  ``--pose-dir`` when given (same names; a registered modality's from ``--{name}-dir``). An item without its video
  features is counted as a missing video, never as a wrong answer, and stays in the denominator.
* Replies are generated in batches (greedy by default, seedable) and appended to ``predictions[.rankR].jsonl``
  item by item; a killed run resumes where it stopped. Under torchrun each rank takes every WORLD_SIZE-th item.
* Multiple choice: the reply is parsed by :mod:`llavidal.eval.mcq` (``--mcq-mode generate``) or each option is
  scored by its log-likelihood (``--mcq-mode loglik``, no generation).
* Description tasks: replies to the question and/or to the two consistency paraphrases (as the task's judge
  criteria need) are stored; scoring with a judge and offline metrics is done by :mod:`llavidal.eval.describe`.
* Zero-shot open-ended QA: one reply per question, judged yes/no + 0-5 by :mod:`llavidal.eval.openqa`.
* ``scored.jsonl`` holds every item as scored, with the judge's outcome per criterion where there is a judge.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..constants import MODALITIES
from ..io_utils import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from ..llm import LLMConfig, add_endpoint_args
from ..llm.config import config_from_args
from ..prompting import TEMPLATE_HELP, TEMPLATE_NAMES
from ..video.io import VIDEO_SUFFIXES
from .describe import description_questions
from .judge import JudgeConfig
from .paper import PaperJudgeConfig, SummarizerConfig
from .mcq import parse_item_reply, score_mcq
from .tasks import (  # noqa: F401  (find_feature and FEATURE_SUFFIXES are part of this module's API)
    FEATURE_SUFFIXES, PROMPT_SET_VERSION, TASKS, EvalItem, find_feature, find_video, list_clips, load_task,
    shared_basenames, task_info,
)


@dataclass
class RunConfig:
    task: str
    qa_file: str
    base: str
    output: str
    answer_file: str | None = None  # zero-shot QA: the answer file of a question file (default: found beside it)
    video_map: str | None = None  # MSVD-QA: youtube_mapping.txt (default: found beside the qa file)
    video_dir: str | None = None
    feature_dir: str | None = None
    modality_dirs: dict = field(default_factory=dict)  # {"object": folder, "pose": folder, ...}: same names
    projector: str | None = None
    batch_size: int = 8
    mcq_mode: str = "generate"  # generate | loglik
    mcq_parser: str = "rule"  # rule | llm | fallback (LLM only where the rule parser finds nothing)
    max_new_tokens: int | None = None  # None: 256 (clean protocol), 1024 (paper protocol, as the release)
    temperature: float = 0.0
    seed: int = 0
    template: str | None = None  # None: the model's own (prompting.model_template)
    system: str | None = None
    limit: int | None = None
    device: str | None = None
    dtype: str = "auto"
    attn: str = "sdpa"
    quantization: str | None = None  # "8bit" / "4bit" (bitsandbytes)
    device_map: str | None = None  # "auto": offload what does not fit on the GPU to CPU memory
    max_memory: dict | None = None
    compile: bool | None = None  # torch.compile the decoding step (None: the device's default)
    max_cache_len: int | None = None  # engine KV positions per sequence (None: the model's window, at most 8192)
    backend: str = "engine"  # engine | vllm
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm
    enforce_eager: bool = False  # vllm
    vllm_backbone: str | None = None  # vllm: exported LLaMA folder (default: OUTPUT/vllm_backbone)
    judge: LLMConfig | None = None  # OpenAI-compatible judge (None: offline metrics only, rule-parsed MCQ)
    judge_concurrency: int = 16
    judge_cache: str | None = None  # default: {output}/judge_cache.sqlite
    prompt_set: str | None = None  # a prompt-set JSON file (default: the built-in versioned set)
    embedding: bool | None = None  # embedding metric: None = when installed
    clip: str | None = None  # raw videos: CLIP for the features of videos without cached ones
    extract_workers: int | None = None  # decoding processes for that extraction
    protocol: str = "clean"  # clean (ours) | paper (what produced the paper's numbers; llavidal.eval.paper)
    original_repo: str | None = None  # paper protocol: checkout of the original release (default $ORIGINAL_REPO)
    summarizer: LLMConfig | None = None  # paper protocol, TSU-Description: the clip-description summariser
    tokenization: str | None = None  # clean | original (None: what the weights were trained on)
    allow_untrained_modality: bool = False
    # set by run(): video file names several items share, whose features are only looked up by relative path
    shared_basenames: frozenset = frozenset()

    def record(self) -> dict:
        """The configuration as recorded in ``summary.json``: endpoints by their identity, never an API key."""
        d = asdict(self)
        d.pop("shared_basenames")
        for key in ("judge", "summarizer"):
            d[key] = getattr(self, key).record() if getattr(self, key) is not None else None
        return d


# ==================================================================== features
def item_features(cfg: RunConfig, item: EvalItem, video: str | None = None) -> dict[str, Path] | None:
    """Paths of the item's feature files; None when its video features are missing."""
    for name in ([video] if video else item.videos):
        by_name = Path(name).name not in cfg.shared_basenames
        v = find_feature(cfg.feature_dir, name, by_name) or find_feature(cfg.video_dir, name, by_name)
        if v is not None:
            video = name  # the name the video was found under: the other modalities' files are named alike
            break
    else:
        return None
    feats = {"video": v}
    for m, folder in cfg.modality_dirs.items():
        p = find_feature(folder, video, by_name)
        if p is not None:
            feats[m] = p
    return feats


def prepare_raw_videos(cfg: RunConfig, items: list[EvalItem], config=None) -> dict | None:
    """With ``--clip``: the raw benchmark videos under ``--video-dir`` that have no cached features get them, once,
    through the batched extraction pipeline (:func:`llavidal.video.extract.extract_videos`), into ``--feature-dir``
    (default ``OUTPUT/video_features``, same relative paths). A model that reads pooled per-frame tokens
    (``video_pool`` in its ``config``) gets the per-frame tokens of its kept frames instead (default folder
    ``OUTPUT/video_frames{K}``); a two-token model (docs/design.md#two-token-video) its per-frame ``.npy`` features,
    streamed (:func:`llavidal.video.longvideo.extract_long_folder`; default folder ``OUTPUT/video_two_token``).
    Unreadable videos are listed in that folder's ``failures.jsonl`` and count as missing videos. Returns the
    extraction summary (None without ``--clip``)."""
    if not cfg.clip:
        return None
    if not cfg.video_dir:
        raise ValueError("--clip extracts features from raw videos and needs --video-dir (where the videos are)")
    from ..constants import MODALITIES
    from ..representation import two_token_spec
    from ..video.extract import ExtractConfig, extract_videos
    from ..video.pool import frame_pooling

    pooling = frame_pooling(MODALITIES["video"], config) if config is not None else None
    spec = two_token_spec(config) if config is not None else None
    suffix = ".npy" if spec is not None else ".pkl"
    root = Path(cfg.video_dir)
    # each kind of features in a folder of its own, so that a later run of another model never reads the wrong kind
    default = ("video_two_token" if spec is not None else "video_features" if pooling is None
               else f"video_frames{pooling.frames}")
    cache = Path(cfg.feature_dir or Path(cfg.output) / default)
    cfg.feature_dir = str(cache)
    jobs: dict[Path, Path] = {}
    for it in items:
        # each group is one video under the names it may have (a TSU clip is a video of its own)
        if it.task == "tsu-desc":
            groups = [[c.name] for c in list_clips(root, it.video, suffixes=VIDEO_SUFFIXES)]
        else:
            groups = [list(it.videos)]
        for names in groups:
            if any(find_feature(d, rel, Path(rel).name not in cfg.shared_basenames)
                   for rel in names for d in (cache, root)):
                continue
            for rel in names:
                src = find_video(root, [rel], VIDEO_SUFFIXES)
                if src is None and Path(rel).name not in cfg.shared_basenames and (root / Path(rel).name).is_file():
                    src, rel = root / Path(rel).name, Path(rel).name
                if src is not None:
                    jobs.setdefault(cache / Path(rel).with_suffix(suffix), src)
                    break
    if not jobs:  # every video has its features: CLIP is not even loaded
        return {"written": 0, "failed": 0, "videos": 0}
    rank, _ = _dist()
    if spec is not None:
        from ..video.longvideo import LongVideoConfig, extract_long_folder

        lcfg = LongVideoConfig.for_spec(spec, clip=cfg.clip, device=_device(cfg), progress=rank == 0)
        return extract_long_folder(root, cache / f"extract.rank{rank}", lcfg, jobs=[(v, t) for t, v in jobs.items()])
    ecfg = ExtractConfig(clip=cfg.clip, device=_device(cfg), workers=cfg.extract_workers, progress=rank == 0,
                         output="frames" if pooling is not None else "rows",
                         kept_frames=pooling.frames if pooling is not None else 16)
    return extract_videos([(v, t) for t, v in jobs.items()], cache / (f"extract.rank{rank}"), ecfg,
                          source=str(root))


# ==================================================================== results files
def sha256_of(path: str | Path | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ==================================================================== running
def _dist() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _device(cfg: RunConfig) -> str | None:
    if cfg.device:
        return cfg.device
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return None


def run_items(cfg: RunConfig, model, tokenizer, items: list[EvalItem], out_file: Path, engine=None) -> None:
    """Answer every item not yet in ``out_file``, appending one line per item as soon as it is complete.

    The questions of all items stream through the generation engine (``cfg.batch_size`` sequences decoded at once,
    a finished reply's slot refilled at once), so lines are written in order of completion; each line is a whole
    item, so a killed run resumes from the items already written.
    """
    from ..engine import get_engine
    from ..inference import GenerationOptions, Query, make_request, option_logprobs, reply_text

    done = {r["id"] for r in read_jsonl(out_file)}
    todo = [it for it in items if it.id not in done]
    opts = GenerationOptions(max_new_tokens=cfg.max_new_tokens or 256, temperature=cfg.temperature, seed=cfg.seed,
                             template=cfg.template, system=cfg.system, tokenization=cfg.tokenization)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{cfg.task}", unit="item")
    engine = engine or get_engine(model, tokenizer, max_batch_size=cfg.batch_size)
    waiting: dict[str, tuple[EvalItem, dict, list]] = {}  # item id -> (item, row, replies so far)

    def write(row: dict) -> None:
        append_jsonl(out_file, [row])
        bar.update(1)

    def requests():
        """(item id, question index) -> engine request, for the items that generate; the others are written here."""
        for it in todo:
            base = {"id": it.id, "index": it.index, "video": it.video}
            if it.task == "tsu-desc":
                write(_tsu_desc_row(cfg, model, tokenizer, it, opts, base, engine))
                continue
            feats = item_features(cfg, it)
            if feats is None:
                write({**base, "status": "missing_video"})
                continue
            base["features"] = sorted(feats)  # what the reply saw: counted in the summary against the folders given
            if it.kind == "mcq" and cfg.mcq_mode == "loglik":
                letters = sorted(it.options)
                scores = option_logprobs(model, tokenizer, Query.of(it.question, feats),
                                         [it.options[k] for k in letters], opts)
                best = letters[max(range(len(letters)), key=scores.__getitem__)]
                write({**base, "status": "ok", "letter": best, "method": "loglik",
                       "scores": dict(zip(letters, scores))})
                continue
            questions = description_questions(it) if it.kind == "description" else {"reply": it.prompt}
            waiting[it.id] = (it, {**base, "status": "ok"}, dict.fromkeys(questions))
            for k, (key, q) in enumerate(questions.items()):  # sampling: a seed per question, whatever the batch
                seeded = replace(opts, seed=zlib.crc32(f"{cfg.seed}:{it.id}:{k}".encode()))
                yield (it.id, key), make_request(model, tokenizer, Query.of(q, feats), seeded)

    for (item_id, k), result in engine.imap(requests()):
        it, row, replies = waiting[item_id]
        replies[k] = reply_text(tokenizer, result)
        if any(r is None for r in replies.values()):
            continue
        del waiting[item_id]
        row.update(replies)
        if it.kind == "mcq":
            parsed = parse_item_reply(it, replies["reply"])
            row.update(letter=parsed.letter, method=parsed.method)
        write(row)
    bar.close()


def _tsu_desc_row(cfg, model, tokenizer, it: EvalItem, opts, base: dict, engine) -> dict:
    """TSU-Description: each 60 s clip, in numeric clip order, is described (and asked the two consistency
    questions); the per-video summaries are made at scoring time."""
    from ..inference import Query, make_request, reply_text

    # the clips that exist: the video folder's (raw clips or their features), else the feature folder's; one entry per
    # clip stem, so that a clip whose features are missing is a missing video, never silently left out
    clips: list[Path] = []
    for folder in (cfg.video_dir, cfg.feature_dir):
        if folder and not clips:
            seen: set[str] = set()
            for c in list_clips(folder, it.video, suffixes=FEATURE_SUFFIXES + VIDEO_SUFFIXES):
                if c.stem not in seen:
                    seen.add(c.stem)
                    clips.append(c)
    feats = [item_features(cfg, it, video=c.name) for c in clips]
    if not clips or any(f is None for f in feats):
        return {**base, "status": "missing_video", "clips": [c.name for c in clips]}
    questions = {"clip_replies": it.prompt, "cons_clip_replies1": it.extra.get("cons_Q1"),
                 "cons_clip_replies2": it.extra.get("cons_Q2")}
    row = {**base, "status": "ok", "clips": [c.name for c in clips],
           "features": sorted(set.intersection(*(set(f) for f in feats)))}  # found for every clip
    for key, q in questions.items():
        if q:
            results = engine.generate([make_request(model, tokenizer, Query.of(q, f), opts) for f in feats])
            row[key] = [reply_text(tokenizer, r) for r in results]
    return row


def make_judge(cfg: RunConfig, out: Path):
    """(judge, prompt set) from the run's judge flags, or (None, None) when no judge model is configured."""
    if cfg.judge is None:
        return None, None
    from .judge import Judge
    from .prompts import prompt_set_for

    prompts = prompt_set_for(task_info(cfg.task).kind, cfg.prompt_set)
    return Judge(cfg.judge, cache=cfg.judge_cache or out / "judge_cache.sqlite"), prompts


def llm_parse(cfg: RunConfig, items: list[EvalItem], rows: list[dict], out: Path) -> dict:
    """Ask the judge which option each reply expresses (``--mcq-parser llm``, or ``fallback`` for replies the
    rule parser could not read). A judge failure leaves the reply unparsed; ``Z`` (none) is unparsed too."""
    judge, prompts = make_judge(cfg, out)
    if judge is None:
        raise ValueError(f"--mcq-parser {cfg.mcq_parser} needs a judge: give --judge-model (and --judge-base-url)")
    by_id = {it.id: it for it in items}
    todo = [r for r in rows if r.get("status") == "ok" and "reply" in r
            and (cfg.mcq_parser == "llm" or r.get("letter") is None)]
    reqs = [prompts.mcq_request(by_id[r["id"]].prompt, by_id[r["id"]].options, r["reply"], id=r["id"]) for r in todo]
    results = judge.judge_many(reqs, concurrency=cfg.judge_concurrency, desc="mcq parse") if reqs else []
    failed = 0
    for r, res in zip(todo, results):
        r["rule_letter"], r["letter"] = r.get("letter"), (res.value if res.ok and res.value != "Z" else None)
        r["method"] = "llm" if res.ok else "llm-failed"
        r["judge"] = {"mcq": {"letter": res.value, "reply": res.reply} if res.ok else
                      {"letter": None, "error": res.error, "reply": res.reply}}
        failed += not res.ok
    return {"judge": judge.identity, "judge_prompt_set": f"{prompts.name}@{prompts.version}",
            "llm_parsed": len(todo), "llm_parse_failures": failed, "judge_stats": judge.stats.to_dict()}


def _score_descriptions(cfg: RunConfig, items: list[EvalItem], rows: list[dict], out: Path) -> dict:
    from .describe import score_descriptions

    judge, prompts = make_judge(cfg, out)
    scores = score_descriptions(items, rows, judge, prompts, concurrency=cfg.judge_concurrency,
                                embedding=cfg.embedding, criteria=task_info(cfg.task).criteria)
    _attach(rows, scores.pop("per_item", {}))
    result = {"description_scores": scores}
    if judge is not None:
        result["judge"] = judge.identity
        result["judge_prompt_set"] = f"{prompts.name}@{prompts.version}"
        result["judge_stats"] = judge.stats.to_dict()
        final = (scores.get("judge") or {}).get("final")
        result["score"] = final
    else:
        result["score"] = (scores.get("offline") or {}).get("rouge_l")
        result["score_kind"] = "rouge_l (no judge configured)"
    return result


def _attach(rows: list[dict], per_item: dict[str, dict]) -> None:
    """Each row gets its judge outcomes (``row["judge"]``), for scored.jsonl and the report."""
    for r in rows:
        if r["id"] in per_item:
            r["judge"] = {**r.get("judge", {}), **per_item[r["id"]]}


def _score_openqa(cfg: RunConfig, items: list[EvalItem], rows: list[dict], total: int, out: Path) -> dict:
    from .openqa import score_openqa

    judge, prompts = make_judge(cfg, out)
    scores = score_openqa(items, rows, total, judge, prompts, concurrency=cfg.judge_concurrency)
    per_item = scores.pop("per_item")
    for r in rows:
        if r["id"] in per_item:
            r["match"] = per_item[r["id"]]["match"]
            if judge is not None:
                r["judge"] = {"openqa": per_item[r["id"]]}
    result = {"openqa": scores, "score": scores["accuracy"]}
    if judge is not None:
        result.update(judge=judge.identity, judge_prompt_set=prompts.ident, judge_stats=judge.stats.to_dict())
    else:
        result["score_kind"] = "accuracy by answer-in-reply match (no judge configured)"
    return result


def summarise(cfg: RunConfig, items: list[EvalItem], problems: list, rows: list[dict], meta: dict) -> dict:
    info = task_info(cfg.task)
    missing = [r["id"] for r in rows if r.get("status") == "missing_video"]
    summary = {"task": info.name, "qa_file": cfg.qa_file, "items_in_file": len(items) + len(problems),
               "unreadable_records": [str(p) for p in problems], "missing_videos": len(missing), **meta}
    if info.kind == "mcq":
        preds = {r["id"]: r.get("letter") for r in rows if r.get("status") == "ok"}
        score = score_mcq(items, preds, missing_videos=missing, unreadable=problems, task=info.name)
        summary["mcq"] = score.as_dict()
        summary["score"] = 100 * score.accuracy
    else:
        summary["answered"] = sum(r.get("status") == "ok" for r in rows)
        summary["score"] = None  # filled by description / open-QA scoring (judge or offline metrics)
    answered = [r for r in rows if r.get("status") == "ok" and "features" in r]
    # a folder was given but holds no file for these items: they ran without its modality
    without = {m: n for m in cfg.modality_dirs if (n := sum(m not in r["features"] for r in answered))}
    if without:
        summary["answered_without"] = without
    segments = sum(1 for it in items if "start" in it.extra or "end" in it.extra)
    if info.family == "mvbench" and segments:  # features come from the whole video: say so, with the count
        summary["segments_not_cut"] = segments
    return summary


def markdown_table(summary: dict) -> str:
    lines = [f"### {summary['task']}", "", "| field | value |", "| --- | --- |"]
    keys = ["score", "score_kind", "items_in_file", "missing_videos", "model", "projector_sha256", "judge",
            "prompt_set", "mcq_mode", "seed", "commit"]
    for k in keys:
        if k in summary:
            v = summary[k]
            lines.append(f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |")
    for m, n in (summary.get("answered_without") or {}).items():
        lines.append(f"| answered without {m} features (no file in --{m}-dir) | {n} |")
    if "mcq" in summary:
        m = summary["mcq"]
        lines.append(f"| correct / total | {m['correct']} / {m['total']} |")
        lines.append(f"| wrong / unparsed / missing / unreadable | {m['wrong']} / {m['unparsed']} / "
                     f"{m['missing_video']} / {m['unreadable']} |")
    if "openqa" in summary:
        q = summary["openqa"]
        judged = "n/a" if q["accuracy_judged"] is None else f"{q['accuracy_judged']:.2f}"
        mean = "n/a" if q["mean_score"] is None else f"{q['mean_score']:.2f}"
        lines.append(f"| correct / total | {q['correct']} / {q['total']} |")
        lines.append(f"| accuracy among judged / mean score (0-5) | {judged} / {mean} |")
        lines.append(f"| judge failures / missing videos | {q['judge_failures']} / {q['missing_videos']} |")
    crit = (summary.get("description_scores") or {}).get("judge") or {}
    for name, c in (crit.get("criteria") or {}).items():
        value = "n/a" if c["score"] is None else f"{c['score']:.2f}"
        lines.append(f"| {name} | {value} ({c['n_scored']} judged, {c['n_failed']} failed) |")
    return "\n".join(lines) + "\n"


def _paper_run(cfg: RunConfig, items: list[EvalItem]):
    """The :class:`~llavidal.eval.paper.PaperRun` of ``--protocol paper`` (the release's wording checked now, before
    the model loads), or None for our protocol."""
    if cfg.protocol not in ("clean", "paper"):
        raise ValueError(f"--protocol {cfg.protocol!r}: expected clean or paper")
    if cfg.protocol == "clean":
        return None
    if task_info(cfg.task).family != "adlx":
        raise ValueError(f"--protocol paper reproduces the LLAVIDAL release's evaluation of the six ADL-X tasks; "
                         f"{cfg.task} runs under our protocol only (leave out --protocol paper)")
    from .original import OriginalRelease, find_original_repo
    from .paper import PaperRun

    return PaperRun(cfg, OriginalRelease(find_original_repo(cfg.original_repo)), items)


def run(cfg: RunConfig) -> dict | None:
    """Run one task; returns the summary on rank 0 (None on other ranks)."""
    from ..engine import get_engine
    from ..model import load_pretrained

    if cfg.mcq_mode not in ("generate", "loglik"):
        raise ValueError(f"--mcq-mode {cfg.mcq_mode!r}: expected generate or loglik")
    if cfg.mcq_parser not in ("rule", "llm", "fallback"):
        raise ValueError(f"--mcq-parser {cfg.mcq_parser!r}: expected rule, llm or fallback")
    info = task_info(cfg.task)
    cfg.task = info.name
    items, problems = load_task(info.name, cfg.qa_file, answer_file=cfg.answer_file, video_map=cfg.video_map)
    if not items:  # nothing to score: an error, never an accuracy of 0 with exit status 0
        first = f"; e.g. {problems[0]}" if problems else ""
        raise ValueError(f"{cfg.qa_file}: none of its {len(problems)} records can be read as {info.name} items{first}")
    if cfg.limit is not None:
        items = items[:cfg.limit]
    cfg.shared_basenames = shared_basenames([it.video for it in items])
    paper = _paper_run(cfg, items)
    rank, world = _dist()
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.perf_counter()
    if paper:  # the release's own model placement: plain fp16/fp32 generation, one item at a time
        model, tokenizer = load_pretrained(cfg.base, projector=cfg.projector, device=_device(cfg),
                                           dtype=paper.dtype(_device(cfg)), attn_implementation=cfg.attn)
        engine = None
    elif cfg.backend == "vllm":
        if cfg.mcq_mode == "loglik":
            raise ValueError("--mcq-mode loglik scores options with the model itself: use --backend engine")
        from ..cli import load_vllm_backend

        model, tokenizer, engine = load_vllm_backend(cfg, cfg.batch_size, out / "vllm_backbone")
    else:
        model, tokenizer = load_pretrained(cfg.base, projector=cfg.projector, device=_device(cfg), dtype=cfg.dtype,
                                           attn_implementation=cfg.attn,
                                           allow_untrained_modality=cfg.allow_untrained_modality,
                                           quantization=cfg.quantization, device_map=cfg.device_map,
                                           max_memory=cfg.max_memory)
        engine = get_engine(model, tokenizer, max_batch_size=cfg.batch_size, compile=cfg.compile,
                            max_cache_len=cfg.max_cache_len)
    mine = paper.shard(items, rank, world) if paper else items[rank::world]
    pred_file = out / (f"predictions.rank{rank}.jsonl" if world > 1 else "predictions.jsonl")
    extraction = prepare_raw_videos(cfg, mine, model.config)
    t_gen, done_before = time.perf_counter(), len(read_jsonl(pred_file)) if pred_file.is_file() else 0
    if paper:
        paper.seed_process()
        paper.run_items(model, tokenizer, mine, pred_file)
    else:
        torch.manual_seed(cfg.seed)
        run_items(cfg, model, tokenizer, mine, pred_file, engine)
        if cfg.backend == "vllm":
            engine.close()  # vLLM's engine process
    t_end = time.perf_counter()
    generated = len(read_jsonl(pred_file)) - done_before
    # this process: setup = model loading (+ raw-video features); a resumed run counts only what it generated
    timing = {"setup_s": round(t_gen - t_load, 3), "generate_s": round(t_end - t_gen, 3), "items_generated": generated,
              "items_per_s": round(generated / (t_end - t_gen), 3) if generated else None}
    if world > 1:  # wait for every rank (gloo: a barrier needs no GPU collective)
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        if rank != 0:
            dist.destroy_process_group()
            return None
        dist.destroy_process_group()
    files = [out / f"predictions.rank{r}.jsonl" for r in range(world)] if world > 1 else [pred_file]
    rows = [r for f in files for r in read_jsonl(f)]
    meta = {"model": str(cfg.base), "projector": cfg.projector, "projector_sha256": sha256_of(cfg.projector),
            "prompt_set": PROMPT_SET_VERSION, "mcq_mode": cfg.mcq_mode if info.kind == "mcq" else None,
            "seed": cfg.seed, "temperature": cfg.temperature, "commit": git_commit(), "judge": None,
            "video_features": ({"clip": cfg.clip, "extracted": extraction["written"], "failed": extraction["failed"]}
                               if extraction else None),
            "config": cfg.record(), "protocol": "clean", "timing": timing}
    if paper:
        meta.update(protocol="paper", paper=paper.protocol.record(paper.eos, paper.max_new_tokens, paper.deviations),
                    seed=paper.seed,
                    temperature=paper.temperature, prompt_set=f"the original release ({paper.protocol.release.root})")
        scores = paper.score(items, problems, rows, out)  # letters first: summarise() counts them too
        summary = {**summarise(cfg, items, problems, rows, meta), **scores}
    else:
        if info.kind == "mcq" and cfg.mcq_mode == "generate" and cfg.mcq_parser != "rule":
            meta.update(llm_parse(cfg, items, rows, out))
            meta["mcq_parser"] = cfg.mcq_parser
        summary = summarise(cfg, items, problems, rows, meta)
        if info.kind == "description":
            summary.update(_score_descriptions(cfg, items, rows, out))
        elif info.kind == "openqa":
            summary.update(_score_openqa(cfg, items, rows, len(items) + len(problems), out))
    # per item, as scored (letters after any LLM parsing), with what was asked and the truth (the report reads them)
    by_id = {it.id: it for it in items}
    for r in rows:
        it = by_id.get(r["id"])
        if it is not None:  # what a row already says (the paper protocol's own question) is kept
            for k, v in (("question", it.question), ("options", it.options), ("answer", it.answer),
                         ("video_alts", list(it.video_alts))):
                r.setdefault(k, v)
    atomic_write_text(out / "scored.jsonl",
                      "".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["index"])))
    atomic_write_json(out / "summary.json", summary, indent=2)
    atomic_write_text(out / "summary.md", markdown_table(summary))
    return summary


def build_parser(prog: str = "llavidal eval run") -> argparse.ArgumentParser:
    from ..cli import add_backend_args, add_placement_args

    p = argparse.ArgumentParser(prog=prog, description="Run one benchmark (the ADL-X tasks, the Video-ChatGPT "
                                "benchmark, zero-shot open-ended QA, MVBench) with one model.")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--qa-file", required=True)
    p.add_argument("--answer-file", help="zero-shot QA given as a question file (test_q.json): its answer file "
                                         "(default: the *_a.json beside it)")
    p.add_argument("--video-map", help="msvd-qa: youtube_mapping.txt (default: the one beside --qa-file)")
    p.add_argument("--video-dir", help="folder of the benchmark's videos / their cached features")
    p.add_argument("--feature-dir", help="feature cache (default: --video-dir; with --clip: OUTPUT/video_features)")
    p.add_argument("--clip", help="CLIP folder or hub id: extract features of raw videos that have none cached "
                                  "(docs/design.md#video-features; e.g. openai/clip-vit-large-patch14)")
    p.add_argument("--extract-workers", type=int, help="decoding processes for --clip extraction")
    for name in MODALITIES:
        if name != "video":
            p.add_argument(f"--{name}-dir", help=f"{name} features (same names), optional")
    p.add_argument("--base", required=True)
    p.add_argument("--projector")
    p.add_argument("--output", required=True)
    p.add_argument("--batch-size", type=int, default=8,
                   help="sequences decoded at once (continuous batching: a finished reply's slot is refilled)")
    p.add_argument("--mcq-mode", default="generate", choices=["generate", "loglik"])
    p.add_argument("--mcq-parser", default="rule", choices=["rule", "llm", "fallback"],
                   help="reply -> letter: deterministic rules (default), the judge LLM, or the judge where rules fail")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="reply budget (default 256; --protocol paper: 1024, as the release; a smaller value there is "
                        "recorded as a deviation)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--template", choices=TEMPLATE_NAMES, help=TEMPLATE_HELP)
    p.add_argument("--system")
    p.add_argument("--limit", type=int, help="only the first N items (smoke tests)")
    p.add_argument("--device")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--attn", default="sdpa", help="attention: sdpa (default), eager, flash_attention_2")
    p.add_argument("--tokenization", choices=["clean", "original"],
                   help="ids at span boundaries (default: what the weights were trained on)")
    p.add_argument("--allow-untrained-modality", action="store_true",
                   help="feed object/pose features to weights that never trained that projector")
    add_placement_args(p)
    add_backend_args(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--protocol", default="clean", choices=["clean", "paper"],
                   help="clean (default: ours, docs/design.md#benchmarks) or paper: what produced the paper's "
                        "numbers (llavidal_v1 prompt, the release's question construction, sampling at 0.1 with seed "
                        "127 and 1024 tokens, the original tokenization, LLM answer parsing and judging with the "
                        "release's prompts; its wording is read from --original-repo)")
    g.add_argument("--original-repo", help="--protocol paper: your checkout of the original LLAVIDAL release "
                                           "(git clone https://github.com/ADL-X/LLAVIDAL; default $ORIGINAL_REPO)")
    add_endpoint_args(p, "summarizer", SummarizerConfig, concurrency=16,
                      title="summarizer (--protocol paper, TSU-Description: merges the clip descriptions; default "
                            "gpt-3.5-turbo-0125 at temperature 0.7, 500 tokens, as the release)")
    j = add_endpoint_args(p, "judge", JudgeConfig, concurrency=16,
                          title="judge (description scores, --mcq-parser llm; any OpenAI-compatible endpoint; "
                                "without --judge-model or $LLAVIDAL_JUDGE_MODEL: offline metrics only)")
    j.add_argument("--judge-cache", help="SQLite cache (default: OUTPUT/judge_cache.sqlite)")
    j.add_argument("--prompt-set", help="judge prompt-set JSON (default: the built-in versioned set)")
    j.add_argument("--no-embedding", action="store_true", help="skip the embedding-similarity metric")
    return p


def judge_from_args(args: argparse.Namespace) -> LLMConfig | None:
    """The judge of the ``--judge-*`` flags, or ``None`` when no judge model is named (flag or environment). Under
    ``--protocol paper`` the judge is the release's (llama3.1 through Ollama at its defaults) unless flags say
    otherwise."""
    if args.protocol == "paper":
        return config_from_args(args, "judge", PaperJudgeConfig)
    if not (args.judge_model or os.environ.get(f"{JudgeConfig.env}_MODEL")):
        return None
    return config_from_args(args, "judge", JudgeConfig)


def main(argv: list[str] | None = None) -> int:
    from ..cli import engine_overrides, placement_kwargs

    args = build_parser().parse_args(argv)
    cfg = RunConfig(task=args.task, qa_file=args.qa_file, base=args.base, output=args.output,
                    answer_file=args.answer_file, video_map=args.video_map,
                    video_dir=args.video_dir, feature_dir=args.feature_dir, clip=args.clip,
                    extract_workers=args.extract_workers,
                    modality_dirs={m: d for m in MODALITIES if m != "video" and (d := getattr(args, f"{m}_dir"))},
                    projector=args.projector, batch_size=args.batch_size,
                    mcq_mode=args.mcq_mode, mcq_parser=args.mcq_parser, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature,
                    seed=args.seed, template=args.template, system=args.system, limit=args.limit,
                    device=args.device, dtype=args.dtype, attn=args.attn, **placement_kwargs(args),
                    **engine_overrides(args), backend=args.backend, tensor_parallel_size=args.tensor_parallel_size,
                    gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
                    vllm_backbone=args.vllm_backbone,
                    judge=judge_from_args(args),
                    judge_concurrency=args.judge_concurrency, judge_cache=args.judge_cache,
                    protocol=args.protocol, original_repo=args.original_repo,
                    summarizer=config_from_args(args, "summarizer", SummarizerConfig) if args.protocol == "paper"
                    else None, tokenization=args.tokenization,
                    allow_untrained_modality=args.allow_untrained_modality,
                    prompt_set=args.prompt_set,
                    embedding=False if args.no_embedding else None)
    summary = run(cfg)
    if summary is not None:
        print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``llavidal curate captions``: frame captions of the stitched videos (docs/design.md#curation, step 3).

Each video is sampled at ``--fps`` frames per second (2 by default: the frame nearest to every 0.5 s, its index
and time recorded) and every sampled frame is captioned either by an OpenAI-compatible vision endpoint (chat
completions with the frame as a base64 JPEG data URL in an ``image_url`` content part) or by a local transformers
VLM (``--local-vlm PATH``: ``AutoModelForImageTextToText`` + ``AutoProcessor``). The release used CogVLM; any
instruction-following VLM will do.

Layout of ``--out DIR``::

    captions.shard{i}.jsonl   append-only results of process i: a "plan" line per video (its sampled frames),
                              then one "frame" line per captioned frame
    failures.jsonl            one line per failed frame / unreadable video, per run
    captions.json             {video: [{"t": seconds, "frame": index, "caption": text}, ...]}, rebuilt at the end
                              of every run from all shard files; a video is in it only when EVERY sampled frame
                              has a caption (the others are listed as failed in the manifest, never truncated)
    manifest.json             counts, failures and skips with reasons, model / prompt version / temperature / seed

``--procs N`` runs N processes; process i takes the videos ``sorted[i::N]``, so every video belongs to one
shard (processes are forked for an endpoint, spawned for a local VLM so that each initialises its own GPU). A rerun (with any N) reads every shard file first: finished videos cost nothing, a video cut short asks
only for its missing frames, failed frames and unreadable videos are tried again. Results of another model,
prompt version or frame rate in the folder stop the step (never mixed).
"""
from __future__ import annotations

import collections
import io
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..llm import CallResult, LLMClient, LLMConfig, Prompt, run_bounded
from .prompts import load_curation_prompts
from .steps import (
    StepError,
    StepLog,
    add_llm_args,
    exit_code,
    llm_config_from_args,
    parse_text,
    print_summary,
    read_json,
    sum_stats,
)

logger = logging.getLogger(__name__)

SHARD_GLOB = "captions.shard*.jsonl"
DECODE_AHEAD = 4  # videos decoded ahead of the requests


@dataclass
class CaptionConfig:
    """``llm``: the endpoint (``None`` with ``local_vlm``). ``batch``: frames per local generate call (the endpoint
    sends one frame per request). ``max_side``: shrink frames whose longer side exceeds it before encoding."""

    videos: Path
    out: Path
    fps: float = 2.0
    procs: int = 1
    concurrency: int = 8
    llm: LLMConfig | None = None
    local_vlm: str | None = None
    device: str | None = None
    dtype: str = "auto"
    batch: int = 8
    max_new_tokens: int | None = None
    jpeg_quality: int = 90
    max_side: int | None = None
    prompts: str | None = None
    limit: int | None = None
    decoder: str = "auto"
    progress: bool = True
    start_method: str | None = None  # None: fork for an endpoint on POSIX (no re-import), spawn for a local VLM

    def validate(self) -> None:
        if (self.llm is None) == (self.local_vlm is None):
            raise StepError("give either --endpoint/--model (an OpenAI-compatible vision endpoint) or --local-vlm "
                            "PATH (a transformers image-text-to-text model), not both and not neither")
        if not self.fps > 0:
            raise StepError(f"--fps must be > 0, got {self.fps}")
        if self.procs < 1 or self.concurrency < 1 or self.batch < 1:
            raise StepError("--procs, --concurrency and --batch must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise StepError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")

    def model_name(self) -> str:
        if self.local_vlm is not None:
            p = Path(self.local_vlm)
            return "local:" + (str(p.resolve()) if p.exists() else self.local_vlm)
        return self.llm.resolved_model()


# ----------------------------------------------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------------------------------------------


def plan_frames(total: int, video_fps: float, rate: float) -> list[tuple[int, float]]:
    """``(frame index, time in s)`` of the frames sampled at ``rate`` per second from a video of ``total`` frames
    at ``video_fps``: the frame nearest to each multiple of ``1/rate`` within the video (at least one frame;
    repeated indices dropped). The recorded time is the frame's own, ``index / video_fps``."""
    if total < 1 or not video_fps > 0:
        raise ValueError(f"cannot sample a video of {total} frames at {video_fps} fps")
    duration = total / video_fps
    n = max(1, math.ceil(duration * rate - 1e-9))
    out: list[tuple[int, float]] = []
    seen = set()
    for k in range(n):
        idx = min(total - 1, int(round(k / rate * video_fps)))
        if idx not in seen:
            seen.add(idx)
            out.append((idx, round(idx / video_fps, 3)))
    return out


def encode_jpeg(frame, quality: int = 90, max_side: int | None = None) -> bytes:
    """An RGB uint8 ``[H, W, 3]`` frame as JPEG bytes (shrunk so that its longer side is ``max_side``)."""
    from PIL import Image

    img = Image.fromarray(frame)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_url(jpeg: bytes) -> str:
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


@dataclass
class FrameTask:
    video: str
    frames: list[tuple[int, float]]  # (index, t)
    images: list[Any]  # RGB uint8 [H, W, 3] each


# ----------------------------------------------------------------------------------------------------------------
# captioners
# ----------------------------------------------------------------------------------------------------------------


class EndpointCaptioner:
    """One frame per request to an OpenAI-compatible vision endpoint."""

    def __init__(self, cfg: CaptionConfig, prompt: Prompt):
        self.cfg, self.prompt = cfg, prompt
        self.client = LLMClient(cfg.llm)
        self.max_tokens = cfg.max_new_tokens or prompt.max_tokens or cfg.llm.max_tokens

    def messages(self, jpeg: bytes) -> list[dict[str, Any]]:
        msgs = self.prompt.render()
        user = msgs[-1]
        user["content"] = [{"type": "text", "text": user["content"]},
                           {"type": "image_url", "image_url": {"url": data_url(jpeg)}}]
        return msgs

    def __call__(self, task: FrameTask) -> list[CallResult]:
        out = []
        for img in task.images:
            jpeg = encode_jpeg(img, self.cfg.jpeg_quality, self.cfg.max_side)
            out.append(self.client.call(self.messages(jpeg), parse_text, max_tokens=self.max_tokens))
        return out

    @property
    def tripped(self) -> str | None:
        return self.client.tripped

    def stats(self) -> dict[str, Any]:
        return self.client.stats.to_dict()

    def close(self) -> None:
        self.client.close()


class LocalCaptioner:
    """A transformers VLM on this machine (``AutoModelForImageTextToText`` + ``AutoProcessor``), greedy decoding,
    ``batch`` frames per generate call."""

    max_consecutive_failures = 3  # batches failing in a row (a broken model, out of memory): stop the shard

    def __init__(self, cfg: CaptionConfig, prompt: Prompt, device: str | None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg, self.prompt = cfg, prompt
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype)
        if dtype is None:
            raise StepError(f"--dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
        try:
            self.processor = AutoProcessor.from_pretrained(cfg.local_vlm)
            self.model = AutoModelForImageTextToText.from_pretrained(cfg.local_vlm, dtype=dtype).to(self.device)
        except (OSError, ValueError, KeyError) as e:
            raise StepError(f"--local-vlm {cfg.local_vlm}: cannot be loaded as an image-text-to-text model with "
                            f"AutoModelForImageTextToText + AutoProcessor ({type(e).__name__}: {e})") from None
        self.model.eval()
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # generation continues every row at its end
            if tok.pad_token is None and tok.eos_token is not None:  # batches need padding (LLaMA-style VLMs)
                tok.pad_token = tok.eos_token
        self.max_new_tokens = cfg.max_new_tokens or prompt.max_tokens or 256
        self.n_frames = self.n_calls = self._failed_in_a_row = 0
        self.tripped: str | None = None

    def _prompt_text(self) -> str:
        content = [{"type": "image"}, {"type": "text", "text": self.prompt.user}]
        messages = []
        if self.prompt.system.strip():
            messages.append({"role": "system", "content": [{"type": "text", "text": self.prompt.system}]})
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __call__(self, task: FrameTask) -> list[CallResult]:
        import torch
        from PIL import Image

        t0 = time.perf_counter()
        images = [Image.fromarray(f) for f in task.images]
        try:
            text = self._prompt_text()
            inputs = self.processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
            inputs = inputs.to(self.device)
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1]:]
            replies = self.processor.batch_decode(new, skip_special_tokens=True)
        except Exception as e:  # noqa: BLE001 - one failed batch must not stop the run: recorded per frame
            err = f"local VLM: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= self.max_consecutive_failures:
                self.tripped = f"the local VLM failed {self._failed_in_a_row} batches in a row (last: {err}); stopping"
            return [CallResult(False, error=err, attempts=1) for _ in images]
        self._failed_in_a_row = 0
        self.n_calls += 1
        self.n_frames += len(images)
        dt = time.perf_counter() - t0
        results = []
        for r in replies:
            try:
                results.append(CallResult(True, parse_text(r), reply=r, attempts=1, latency_s=dt))
            except ValueError as e:
                results.append(CallResult(False, error=f"unparsable: {e}", reply=r, attempts=1))
        return results

    def stats(self) -> dict[str, Any]:
        return {"generate_calls": self.n_calls, "frames": self.n_frames, "device": self.device}

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------------
# state on disk
# ----------------------------------------------------------------------------------------------------------------


def list_videos(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """``{name: path}`` of the videos under ``root`` (name = file name without suffix) and the names given by
    more than one file (skipped: which one is meant cannot be known)."""
    from ..video.io import find_videos

    try:
        paths = find_videos(root)
    except FileNotFoundError as e:
        raise StepError(f"--videos {root}: {e}") from None
    by_name: dict[str, list[Path]] = {}
    for p in paths:
        by_name.setdefault(p.stem, []).append(p)
    good = {n: ps[0] for n, ps in by_name.items() if len(ps) == 1}
    dup = {n: f"{len(ps)} files share this name: {', '.join(map(str, ps[:3]))}" for n, ps in by_name.items()
           if len(ps) > 1}
    return dict(sorted(good.items())), dup


@dataclass
class CaptionState:
    """What the shard files hold: plans and captions per video."""

    plans: dict[str, dict] = field(default_factory=dict)
    captions: dict[str, dict[int, dict]] = field(default_factory=dict)  # video -> frame index -> record

    @classmethod
    def read(cls, out: Path, log: StepLog) -> CaptionState:
        from ..io_utils import read_jsonl

        st = cls()
        for p in sorted(out.glob(SHARD_GLOB)):
            rows = read_jsonl(p)
            log.check_identity(rows, p)
            for r in rows:
                if r.get("kind") == "plan":
                    st.plans.setdefault(r["video"], r)
                elif r.get("kind") == "frame" and isinstance(r.get("caption"), str):
                    st.captions.setdefault(r["video"], {}).setdefault(int(r["frame"]), r)
        return st

    def missing(self, video: str) -> list[tuple[int, float]] | None:
        """Planned frames without a caption; ``None`` when the video has no plan yet."""
        plan = self.plans.get(video)
        if plan is None:
            return None
        have = self.captions.get(video, {})
        return [(i, t) for i, t in zip(plan["frames"], plan["times"]) if i not in have]

    def complete(self, video: str) -> bool:
        m = self.missing(video)
        return m is not None and not m


def _identity(cfg: CaptionConfig, prompt_ident: str) -> dict[str, Any]:
    return {"model": cfg.model_name(), "prompt": prompt_ident, "fps": float(cfg.fps)}


def _log(cfg: CaptionConfig, prompt_ident: str, shard: int = 0) -> StepLog:
    out = Path(cfg.out)
    return StepLog("captions", out / f"captions.shard{shard}.jsonl", out / "failures.jsonl", out / "manifest.json",
                   _identity(cfg, prompt_ident))


# ----------------------------------------------------------------------------------------------------------------
# one shard
# ----------------------------------------------------------------------------------------------------------------


class CaptionShard:
    """Captions the videos of shard ``shard`` of ``num_shards``: frames of the next videos are decoded on two
    threads while the requests of the current ones are in flight; every result is recorded on the calling thread."""

    def __init__(self, cfg: CaptionConfig, shard: int, num_shards: int):
        self.cfg, self.shard, self.num_shards = cfg, shard, num_shards
        prompts = load_curation_prompts(cfg.prompts)
        self.log = _log(cfg, prompts.ident, shard)
        self.state = CaptionState.read(Path(cfg.out), self.log)
        self.videos, _ = list_videos(Path(cfg.videos))
        names = list(self.videos)[: cfg.limit] if cfg.limit else list(self.videos)
        self.mine = names[shard::num_shards]
        self.captioner, self.batch, self.concurrency = self._captioner(prompts["caption"])
        self.counts: Counter = Counter()
        self.failed: dict[str, str] = {}
        self.remaining: dict[str, int] = {}  # video -> frames still in flight
        self.frame_fail: Counter = Counter()
        self.bar = None

    def _captioner(self, prompt: Prompt) -> tuple[Any, int, int]:
        """``(captioner, frames per task, tasks in flight)``: a local VLM batches frames on its device (one task
        at a time); an endpoint takes one frame per request, ``concurrency`` at a time."""
        cfg = self.cfg
        if cfg.local_vlm is None:
            return EndpointCaptioner(cfg, prompt), 1, cfg.concurrency
        device = cfg.device
        import torch

        if self.num_shards > 1 and (device or "cuda") == "cuda" and torch.cuda.is_available():
            device = f"cuda:{self.shard % torch.cuda.device_count()}"
        return LocalCaptioner(cfg, prompt, device), cfg.batch, 1

    def prepare(self, name: str) -> tuple[dict | None, list[tuple[int, float]], Any]:
        """Plan (when new) and decode the frames still missing; runs on a decode thread (the decoders release
        the GIL)."""
        from ..video.io import probe, read_frames

        path = self.videos[name]
        plan, missing = None, self.state.missing(name)
        if missing is None:
            info = probe(path)
            missing = plan_frames(info.frames, info.fps, self.cfg.fps)
            plan = {"kind": "plan", "video": name, "frames": [i for i, _ in missing],
                    "times": [t for _, t in missing], "video_fps": info.fps, "total_frames": info.frames,
                    "shard": self.shard}
        images, _ = read_frames(path, indices=[i for i, _ in missing], decoder=self.cfg.decoder)
        return plan, missing, images

    def _video_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def _todo(self) -> list[str]:
        todo = []
        for name in self.mine:
            if self.state.complete(name):
                self.counts["videos_reused"] += 1
                self._video_done()
            else:
                todo.append(name)
        return todo

    def tasks(self) -> Iterator[FrameTask]:
        """Frame tasks of the videos to do, ``DECODE_AHEAD`` videos decoded ahead; an unreadable video is
        recorded and skipped."""
        from ..video.io import VideoReadError

        names = iter(self._todo())
        ahead: collections.deque = collections.deque()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="llavidal-decode") as decoder:
            def fill() -> None:
                while len(ahead) < DECODE_AHEAD and (name := next(names, None)) is not None:
                    ahead.append((name, decoder.submit(self.prepare, name)))

            fill()
            while ahead:
                name, fut = ahead.popleft()
                fill()
                try:
                    plan, missing, images = fut.result()
                except (VideoReadError, ValueError, OSError) as e:
                    self.counts["videos_unreadable"] += 1
                    self.failed[name] = f"unreadable video: {e}"
                    self.log.add_failure(name, self.failed[name], video=name, shard=self.shard)
                    self._video_done()
                    continue
                if plan is not None:
                    self.log.add_result(plan)
                    self.state.plans[name] = plan
                self.remaining[name] = len(missing)
                self.counts["videos_started"] += 1
                for k in range(0, len(missing), self.batch):
                    yield FrameTask(name, missing[k:k + self.batch], list(images[k:k + self.batch]))

    def on_done(self, task: FrameTask, results: list[CallResult] | None, error: BaseException | None) -> None:
        if error is not None:  # a bug in a captioner, not a server problem: recorded per frame all the same
            results = [CallResult(False, error=f"{type(error).__name__}: {error}") for _ in task.frames]
        for (idx, t), r in zip(task.frames, results):
            self._record_frame(task.video, int(idx), float(t), r)
        self.remaining[task.video] -= len(task.frames)
        if self.remaining[task.video] <= 0:
            if self.frame_fail[task.video]:
                self.failed[task.video] = (f"{self.frame_fail[task.video]} of "
                                           f"{len(self.state.plans[task.video]['frames'])} frames have no caption "
                                           "(see failures.jsonl); a rerun asks again")
            else:
                self.counts["videos_completed"] += 1
            self._video_done()

    def _record_frame(self, video: str, idx: int, t: float, r: CallResult) -> None:
        if r.ok:
            rec = {"kind": "frame", "video": video, "frame": idx, "t": t, "caption": r.value, "attempts": r.attempts,
                   "seed": r.seed, "served_model": r.served_model}
            self.log.add_result(rec)
            self.state.captions.setdefault(video, {})[idx] = rec
            self.counts["frames_captioned"] += 1
        else:
            self.counts["frames_failed"] += 1
            self.frame_fail[video] += 1
            self.log.add_failure(f"{video}#frame{idx}", r.error or "unknown", video=video, frame=idx, t=t,
                                 reply=r.reply, attempts=r.attempts, shard=self.shard)

    def run(self) -> dict[str, Any]:
        """Returns a summary: counts, failures, the captioner's statistics, why it stopped early (if it did)."""
        if self.cfg.progress:
            from tqdm.auto import tqdm

            multi = self.num_shards > 1
            self.bar = tqdm(total=len(self.mine), desc=f"captions shard {self.shard}" if multi else "captions",
                            unit="video", dynamic_ncols=True, position=self.shard if multi else None)
        try:
            run_bounded(self.tasks(), self.captioner, self.on_done, self.concurrency,
                        should_stop=lambda: self.captioner.tripped is not None, on_idle=self.log.flush_if_due)
        finally:
            self.log.flush()
            if self.bar is not None:
                self.bar.close()
            self.captioner.close()
        return {"shard": self.shard, "videos": len(self.mine), "counts": dict(self.counts), "failed": self.failed,
                "stats": self.captioner.stats(), "tripped": self.captioner.tripped}


def run_shard(cfg: CaptionConfig, shard: int, num_shards: int) -> dict[str, Any]:
    """Caption the videos of shard ``shard`` of ``num_shards``; returns a summary (counts, failures, stats)."""
    return CaptionShard(cfg, shard, num_shards).run()


def _shard_entry(cfg: CaptionConfig, shard: int, num_shards: int) -> dict[str, Any]:
    """Process entry point (spawned): logging to stderr, then the shard."""
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s shard{shard} %(name)s: %(message)s")
    return run_shard(cfg, shard, num_shards)


# ----------------------------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------------------------


def merge_captions(out: Path, log: StepLog) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """``captions.json`` content from every shard file: complete videos only, frames in time order; plus the
    videos with a plan but missing captions (name -> why)."""
    state = CaptionState.read(out, log)
    merged, incomplete = {}, {}
    for video in sorted(state.plans):
        missing = state.missing(video)
        if missing:
            n = len(state.plans[video]["frames"])
            incomplete[video] = f"{len(missing)} of {n} frames have no caption"
            continue
        have = state.captions[video]
        merged[video] = [{"t": have[i]["t"], "frame": i, "caption": have[i]["caption"]}
                         for i in sorted(state.plans[video]["frames"], key=lambda i: (have[i]["t"], i))]
    return merged, incomplete


def caption_videos(cfg: CaptionConfig) -> dict[str, Any]:
    """Run the step (all shards), merge, write ``captions.json`` and ``manifest.json``; returns the manifest."""
    from ..io_utils import atomic_write_json

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_curation_prompts(cfg.prompts)
    log = _log(cfg, prompts.ident)
    CaptionState.read(out, log)  # identity check before any work
    videos, dup = list_videos(Path(cfg.videos))
    if not videos and not dup:
        raise StepError(f"--videos {cfg.videos}: no video files found")
    for name, why in dup.items():
        log.skip(name, "duplicate_name", why)
    names = list(videos)[: cfg.limit] if cfg.limit else list(videos)
    procs = min(cfg.procs, max(1, len(names)))
    summaries: list[dict] = []
    status, method = "interrupted", None
    try:
        if procs == 1:
            summaries.append(run_shard(cfg, 0, 1))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            method = cfg.start_method or ("spawn" if cfg.local_vlm is not None
                                          or "fork" not in mp.get_all_start_methods() else "fork")
            with ProcessPoolExecutor(max_workers=procs, mp_context=mp.get_context(method)) as pool:
                futs = [pool.submit(_shard_entry, cfg, i, procs) for i in range(procs)]
                for i, f in enumerate(futs):
                    try:
                        summaries.append(f.result())
                    except Exception as e:  # noqa: BLE001 - a crashed shard is reported, the others merged
                        summaries.append({"shard": i, "crashed": f"{type(e).__name__}: {e}", "counts": {},
                                          "failed": {}, "stats": {}})
        status = "done"
    except BaseException as e:
        status = f"interrupted ({type(e).__name__}: {str(e)[:200]})"
        raise
    finally:
        merged, incomplete = merge_captions(out, log)
        atomic_write_json(out / "captions.json", merged)
        for s in summaries:
            log.counts.update(s.get("counts", {}))
        run_failed = {k: v for s in summaries for k, v in s.get("failed", {}).items()}
        for name in names:
            if name in merged:
                continue
            why = run_failed.get(name) or incomplete.get(name) or f"not processed in this run ({status})"
            log.failed[name] = why
        crashed = {str(s["shard"]): s["crashed"] for s in summaries if s.get("crashed")}
        tripped = next((s["tripped"] for s in summaries if s.get("tripped")), None)
        if status == "done" and (crashed or tripped):
            status = "aborted"
        stats = sum_stats([s.get("stats", {}) for s in summaries])
        manifest_extra = {
            "inputs": {"videos": str(cfg.videos), "videos_found": len(videos), "videos_this_run": len(names)},
            "outputs": {"captions": str(out / "captions.json"), "videos_complete": len(merged),
                        "frames_complete": sum(len(v) for v in merged.values())},
            "sampling": {"fps": cfg.fps, "rule": "nearest frame to every 1/fps seconds; t = index / video fps"},
            "backend": ({"kind": "endpoint", **cfg.llm.record()} if cfg.llm is not None else
                        {"kind": "local", "path": str(cfg.local_vlm), "batch": cfg.batch, "do_sample": False}),
            "prompt_set": prompts.ident, "procs": procs, "concurrency": cfg.concurrency,
            "start_method": None if procs == 1 else method,
            "llm_stats": stats, "shards": [{k: v for k, v in s.items() if k not in ("failed",)} for s in summaries],
        }
        if crashed:
            manifest_extra["crashed_shards"] = crashed
        if tripped:
            manifest_extra["aborted_because"] = tripped
        log.write_manifest(status, **manifest_extra)
    return read_json(out / "manifest.json", "manifest")


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def cmd_captions(args) -> int:
    llm = None
    if args.local_vlm is None:
        llm = llm_config_from_args(args)
    elif args.endpoint or args.model:
        raise StepError("give either --endpoint/--model or --local-vlm, not both")
    cfg = CaptionConfig(videos=Path(args.videos), out=Path(args.out), fps=args.fps, procs=args.procs,
                        concurrency=args.concurrency, llm=llm, local_vlm=args.local_vlm, device=args.device,
                        dtype=args.dtype, batch=args.batch, max_new_tokens=args.max_tokens,
                        jpeg_quality=args.jpeg_quality, max_side=args.max_side, prompts=args.prompts,
                        limit=args.limit, decoder=args.decoder, progress=not args.no_progress)
    manifest = caption_videos(cfg)
    n = manifest["outputs"]["videos_complete"]
    print_summary(manifest, "videos captioned", n, str(Path(args.out) / "captions.json"))
    return exit_code(manifest, n)


def register_step(steps) -> None:
    p = steps.add_parser("captions", help="caption 2 frames per second of every stitched video (a vision endpoint "
                                          "or a local VLM) -> captions.json")
    p.add_argument("--videos", required=True, help="folder of stitched videos ({PPP}_video_{NNN}.mp4)")
    p.add_argument("--out", required=True, help="output folder (shards, captions.json, manifest, failures)")
    p.add_argument("--fps", type=float, default=2.0, help="frames captioned per second of video (default 2)")
    p.add_argument("--procs", type=int, default=1, help="processes, each a shard of the videos (default 1)")
    p.add_argument("--limit", type=int, default=None, help="only the first N videos (sorted by name): a trial run")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the frames sent (default 90)")
    p.add_argument("--max-side", type=int, default=None, help="shrink frames to this longer side before sending")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("local VLM (instead of an endpoint)")
    g.add_argument("--local-vlm", default=None,
                   help="transformers model folder or hub id for AutoModelForImageTextToText + AutoProcessor")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available; with --procs "
                                                  "N and several GPUs, shard i uses cuda:i)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    g.add_argument("--batch", type=int, default=8, help="frames per generate call (default 8)")
    add_llm_args(p, temperature=0.0, required=False, concurrency=8)
    p.set_defaults(func=cmd_captions)

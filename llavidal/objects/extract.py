"""``llavidal extract-objects``: videos + detections → one ``<video id>_object.<fmt>`` of shape ``[n, 8, 512]`` each.

Per video: detections (a JSON file/entry, or a detector run on ``detect_frames`` frames sampled with the video-feature
frame rule) → tracks (:mod:`.track`) → 8 frames per kept track → crops → CLIP image embeddings (:mod:`.embed`).
Features are stored as float16 by default (like the video features; ``out_dtype="float32"`` keeps full precision),
rows in rank order (row 0 = the longest, most confident track).

The output folder holds, next to the features:

- ``failures.jsonl``: one line per video that produced no file, with ``stage`` = ``video`` (unreadable),
  ``detections`` (bad or missing detections), ``embed`` (non-finite embeddings) or ``no objects`` (nothing survived
  tracking: never an empty or all-zero file); append-only across runs.
- ``object_manifest.jsonl``: one line per written file: objects, their labels, scores, sampled frames and boxes.
- ``object_summary.json``: the counts of the last run.
- ``detections/<video id>.json``: what a ``--detector`` found (the JSON schema, so a re-run can use it).

Re-running skips videos whose output exists (resumable); outputs are written atomically.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..constants import OBJECT_FRAMES
from ..features import check_feature_file, load_feature
from ..io_utils import append_jsonl, atomic_write_json, remove_stale_temporaries
from ..video.clip import DEFAULT_OBJECT_CLIP
from ..video.io import VideoReadError, find_videos, frame_indices, read_frames
from .detections import DetectionError, DetectionSource, Detector, make_detector, run_detector, to_json, video_id
from .embed import EmbedConfig, ObjectEmbedder, crop_box, sample_positions
from .track import TrackConfig, TrackStats, link_tracks, resolve_matcher, select_tracks

logger = logging.getLogger(__name__)

FORMATS = ("pkl", "npy", "safetensors")
OUT_DTYPES = ("float16", "float32")
SUMMARY_FILE = "object_summary.json"
MANIFEST_FILE = "object_manifest.jsonl"
FAILURES_FILE = "failures.jsonl"


@dataclass
class ObjectExtractConfig:
    clip: str = DEFAULT_OBJECT_CLIP
    fmt: str = "pkl"  # pkl (a pickled array, as the ADL-X downloads), npy or safetensors
    out_dtype: str = "float16"
    device: str | None = None
    dtype: str | None = None  # CLIP compute dtype (default float16 on GPU, float32 on CPU)
    batch: int = 64  # crops per CLIP forward; batches span videos
    workers: int = 2  # threads that decode, track and crop ahead of the model (0: all in the calling thread)
    decoder: str = "auto"
    frames_per_object: int = OBJECT_FRAMES
    context: float = 0.1  # crop margin, a fraction of the box's longer side
    detect_frames: int = 32  # frames a --detector looks at (video-feature frame rule)
    progress: bool = True
    track: TrackConfig = field(default_factory=TrackConfig)


@dataclass
class Outcome:
    """What preparing one video gave: crops to embed (``rows`` [n, F] indexes ``pixel_values``) or a failure."""

    video: Path
    vid: str
    out: Path
    stage: str | None = None  # set on failure: video, detections, embed, no objects
    error: str | None = None
    pixel_values: object = None  # torch [k, 3, S, S]
    rows: np.ndarray | None = None
    objects: list[dict] = field(default_factory=list)
    stats: TrackStats = field(default_factory=TrackStats)


def output_path(out_dir: Path, video: Path, fmt: str) -> Path:
    return out_dir / f"{video_id(video)}_object.{fmt}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Preparer:
    """Everything before the model, for one video; runs in worker threads."""

    def __init__(self, cfg: ObjectExtractConfig, out_dir: Path, root: Path | None, embedder: ObjectEmbedder,
                 source: DetectionSource | None, detector: Detector | None, detector_name: str):
        self.cfg, self.out_dir, self.root, self.embedder = cfg, out_dir, root, embedder
        self.source, self.detector, self.detector_name = source, detector, detector_name
        self.detector_lock = threading.Lock()  # a detector need not be thread-safe

    def __call__(self, video: Path) -> Outcome:
        o = Outcome(video, video_id(video), output_path(self.out_dir, video, self.cfg.fmt))
        try:
            self._prepare(o)
        except DetectionError as e:
            o.stage, o.error = "detections", str(e)
        except VideoReadError as e:
            o.stage, o.error = "video", str(e)
        return o

    def _read(self, video: Path, indices: list[int], source: str) -> tuple[np.ndarray, int]:
        try:
            return read_frames(video, indices=indices, decoder=self.cfg.decoder)
        except VideoReadError as e:
            if "out of range" in str(e):
                raise DetectionError(f"{source}: frame {max(indices)} is beyond the end of the video ({e})") from None
            raise

    def _prepare(self, o: Outcome) -> None:
        cfg = self.cfg
        frames = None  # decoded frames at `have` when a detector ran
        if self.detector is not None:
            frames, total = read_frames(o.video, max_frames=cfg.detect_frames, decoder=cfg.decoder)
            indices = frame_indices(total, cfg.detect_frames).tolist()
            with self.detector_lock:
                dets = run_detector(self.detector, frames, indices, f"{o.video} (detector {self.detector_name})")
            atomic_write_json(self.out_dir / "detections" / f"{o.vid}.json", to_json(dets, o.video.name))
            have = {f: i for i, f in enumerate(indices)}
        else:
            dets = self.source.get(o.video, self.root)
        tracks = select_tracks(link_tracks(dets, cfg.track, o.stats), cfg.track, o.stats)
        if not tracks:
            s = o.stats
            o.stage = "no objects"
            o.error = (f"{dets.source}: no objects: {s.detections} detections in {len(dets.frames)} looked-at frames"
                       f" ({s.low_score} below --min-score, {s.ignored_label} with an ignored label), {s.tracks} "
                       f"tracks, {s.short} shorter than --min-track-length {cfg.track.min_length}")
            return
        picks = []  # (track, frame, box) per object row
        for t in tracks:
            pos = sample_positions(t.length, cfg.frames_per_object)
            picks.append([(int(t.frames[p]), t.boxes[p]) for p in pos])
        if frames is None:
            needed = sorted({f for row in picks for f, _ in row})
            frames, total = self._read(o.video, needed, dets.source)
            have = {f: i for i, f in enumerate(needed)}
            last = max(dets.frames)
            if last >= total:
                raise DetectionError(f"{dets.source}: frames[\"{last}\"]: frame index beyond the video's {total} "
                                     f"frames ({o.video.name})")
        height, width = frames.shape[1:3]
        if (dets.width or width, dets.height or height) != (width, height):
            raise DetectionError(f"{dets.source}: width/height: boxes are for {dets.width or '?'}x"
                                 f"{dets.height or '?'} frames but {o.video.name} decodes to {width}x{height}")
        crops, index, rows = [], {}, np.zeros((len(tracks), cfg.frames_per_object), dtype=np.int64)
        for r, (t, row) in enumerate(zip(tracks, picks)):
            crop_boxes = []
            for j, (f, box) in enumerate(row):
                try:
                    cb = crop_box(box, width, height, cfg.context)
                except ValueError as e:
                    raise DetectionError(f"{dets.source}: frames[\"{f}\"]: track {t.track_id!r} ({t.label}): "
                                         f"{e}") from None
                key = (f, cb)
                if key not in index:
                    x1, y1, x2, y2 = cb
                    index[key] = len(crops)
                    crops.append(frames[have[f], y1:y2, x1:x2])
                rows[r, j] = index[key]
                crop_boxes.append(list(cb))
            o.objects.append({"label": t.label, "score": round(t.mean_score, 4), "length": t.length,
                              "track_id": t.track_id, "frames": [f for f, _ in row],
                              "boxes": [[round(v, 1) for v in b] for _, b in row], "crops": crop_boxes})
        o.rows = rows
        o.pixel_values = self.embedder.preprocess(crops)


def _check_ids(videos: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for v in videos:
        vid = video_id(v)
        if vid in seen:
            raise ValueError(f"videos {seen[vid]} and {v} both have the id {vid!r} (file name up to the first dot), "
                             f"so both would be written to {vid}_object.*; rename one or extract them separately")
        seen[vid] = v


def _iter_prepared(prepare, videos: list[Path], workers: int):
    """Prepared outcomes in input order, at most ``2 * workers`` videos ahead of the consumer."""
    if workers <= 0:
        for v in videos:
            yield prepare(v)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="objects") as pool:
        ahead: deque = deque()
        it = iter(videos)
        for v in it:
            ahead.append(pool.submit(prepare, v))
            if len(ahead) >= 2 * workers:
                break
        while ahead:
            yield ahead.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                ahead.append(pool.submit(prepare, nxt))


def extract_objects(videos: str | Path | list[Path], output: str | Path, cfg: ObjectExtractConfig = None, *,
                    detections: str | Path | None = None, detector: Detector | str | None = None) -> dict:
    """Write object features for every video (a file, a folder searched recursively, or a list); returns the
    summary (also written to ``object_summary.json``). Give exactly one of ``detections`` / ``detector``."""
    cfg = cfg or ObjectExtractConfig()
    if (detections is None) == (detector is None):
        raise ValueError("give exactly one of --detections (JSON files) and --detector")
    if cfg.fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {cfg.fmt!r}")
    if cfg.out_dtype not in OUT_DTYPES:
        raise ValueError(f"--out-dtype must be one of {OUT_DTYPES}, got {cfg.out_dtype!r}")
    for name, value, least in (("--max-objects", cfg.track.max_objects, 1), ("--min-track-length",
                               cfg.track.min_length, 1), ("--batch", cfg.batch, 1), ("--detect-frames",
                               cfg.detect_frames, 1), ("--max-gap", cfg.track.max_gap, 0)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    matcher = resolve_matcher(cfg.track.matcher)
    start = time.time()
    dangling: list[Path] = []  # video-named links whose target is gone: listed as failures, never skipped silently
    if isinstance(videos, (list, tuple)):
        video_list, root = [Path(v) for v in videos], None
    else:
        video_list = find_videos(videos, dangling=dangling)
        root = Path(videos) if Path(videos).is_dir() else None
    _check_ids(video_list)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # half-written files of a run that was killed

    source = DetectionSource(detections) if detections is not None else None
    if source is not None and source.mapping is not None and source.single and len(video_list) > 1:
        raise DetectionError(f"{detections}: holds the detections of one video (a \"frames\" field) but "
                             f"{len(video_list)} videos were given; use a mapping video -> detections or a folder")
    detector_name = None if detector is None else (
        detector if isinstance(detector, str) else getattr(detector, "__name__", type(detector).__name__))
    todo = [v for v in video_list if not _output_done(output_path(out_dir, v, cfg.fmt))]
    summary = {"modality": "object", "videos": len(video_list), "done": 0,
               "skipped_existing": len(video_list) - len(todo), "failed": 0, "no_objects": 0, "objects": 0,
               "shape": f"[n, {cfg.frames_per_object}, D]", "dtype": cfg.out_dtype, "format": cfg.fmt,
               "clip": str(cfg.clip), "matcher": matcher,
               "detections": str(detections) if detections is not None else f"detector {detector_name}",
               "tracking": asdict(cfg.track), "tracks": asdict(TrackStats()), "failed_videos": [],
               "no_object_videos": [], "started": _now()}
    summary["tracks"].pop("matcher")
    for link in dangling:
        _record_failure(out_dir, Outcome(video=link, vid=video_id(link), out=output_path(out_dir, link, cfg.fmt),
                                         stage="input",
                                         error=f"{link}: dangling symbolic link (its target {os.readlink(link)} "
                                               "does not exist)"), summary)

    if todo:
        if isinstance(detector, str):
            detector = make_detector(detector)
        embedder = ObjectEmbedder(EmbedConfig(clip=str(cfg.clip), device=cfg.device, dtype=cfg.dtype,
                                              batch=cfg.batch))
        summary["embedding_dim"] = embedder.dim
        summary["shape"] = f"[n, {cfg.frames_per_object}, {embedder.dim}]"
        prepare = _Preparer(cfg, out_dir, root, embedder, source, detector, detector_name)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="objects", unit="video")
        pending: list[Outcome] = []
        for o in _iter_prepared(prepare, todo, cfg.workers):
            if o.stage in (None, "no objects"):  # videos that failed earlier would only blur the counts
                for k, v in asdict(o.stats).items():
                    if k != "matcher":
                        summary["tracks"][k] += v
            if o.stage is not None:
                _record_failure(out_dir, o, summary)
            else:
                pending.append(o)
                if sum(len(p.pixel_values) for p in pending) >= cfg.batch:
                    _flush(pending, embedder, cfg, out_dir, summary)
                    pending = []
            if bar is not None:
                bar.update(1)
        _flush(pending, embedder, cfg, out_dir, summary)
        if bar is not None:
            bar.close()
    if source is not None and source.unused_keys():
        unused = source.unused_keys()
        summary["unused_detection_entries"] = {"count": len(unused), "first": unused[:20]}
    summary["seconds"] = round(time.time() - start, 2)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _output_done(path: Path) -> bool:
    """An existing output counts as done only when it loads as a finite [n, frames, D] array (a 0-byte or
    truncated file left by a crash or a full disk is redone, with a warning)."""
    if not path.is_file():
        return False
    why = check_feature_file(path)
    if why is None and load_feature(path).ndim != 3:
        why = f"{path}: expected an [n, frames, D] array"
    if why is not None:
        logger.warning("unusable earlier output, redone: %s", why)
    return why is None


def _record_failure(out_dir: Path, o: Outcome, summary: dict) -> None:
    row = {"time": _now(), "modality": "object", "video": str(o.video), "id": o.vid, "stage": o.stage,
           "error": o.error}
    append_jsonl(out_dir / FAILURES_FILE, [row])
    if o.stage == "no objects":
        summary["no_objects"] += 1
        summary["no_object_videos"].append(o.vid)
        logger.warning("%s", o.error)
    else:
        summary["failed"] += 1
        summary["failed_videos"].append(o.vid)
        logger.error("%s", o.error)


def _flush(pending: list[Outcome], embedder: ObjectEmbedder, cfg: ObjectExtractConfig, out_dir: Path,
           summary: dict) -> None:
    """Embed the crops of ``pending`` videos together, then write each video's ``[n, F, D]`` file."""
    if not pending:
        return
    import torch

    from ..features import save_feature

    emb = embedder.embed(torch.cat([o.pixel_values for o in pending]))  # [sum k, D]
    start = 0
    for o in pending:
        k = len(o.pixel_values)
        arr = emb[start:start + k][o.rows].astype(cfg.out_dtype)  # [n, F, D]
        start += k
        if not np.isfinite(arr).all():
            o.stage = "embed"
            o.error = (f"{o.video}: {int((~np.isfinite(arr)).sum())} non-finite values in the {cfg.out_dtype} "
                       "embeddings (try --out-dtype float32)")
            _record_failure(out_dir, o, summary)
            continue
        save_feature(arr, o.out)
        append_jsonl(out_dir / MANIFEST_FILE, [{"time": _now(), "video": str(o.video), "id": o.vid,
                                                "output": o.out.name, "shape": list(arr.shape),
                                                "objects": o.objects}])
        summary["done"] += 1
        summary["objects"] += int(arr.shape[0])
        o.pixel_values = None

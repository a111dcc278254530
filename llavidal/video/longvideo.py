"""Raw video → per-frame features of the two-token representation, streamed: videos of any length in bounded memory.

The representation (docs/design.md#two-token-video, :mod:`llavidal.representation`): frames sampled at ``fps``
(1 by default: the middle frame of each second), each frame's CLIP patch tokens (the penultimate layer, CLS dropped,
as for the default features) average-pooled from the 16 x 16 patch grid to ``grid`` x ``grid`` → a float16 array
``[T, grid², D]`` per video (an hour at 1 fps with grid 4 and ViT-L/14: 3,600 x 16 x 1024, 118 MB).

Streaming: the frame plan comes from the frame count and rate; frames are decoded ``chunk`` at a time with the
decoders of :mod:`llavidal.video.io` (decord's batched seek, or one pass of PyAV), while the next chunk decodes in a
thread the current one goes through CLIP, and each chunk's features are appended to the output ``.npy`` (header first,
then rows; a temporary file renamed at the end). Neither the video's frames nor, when writing files, its features
are ever held whole, so peak memory does not grow with the video's length (bench/bench_longvideo.py measures it).

``llavidal extract-long-video --input DIR --output DIR`` runs it over a folder: outputs named like the default
features (``{file name up to the first dot}.npy``), existing complete outputs skipped (a rerun resumes), unreadable
videos in ``failures.jsonl``, ``extract_summary.json`` with the counts.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..features import check_feature_file, load_feature
from ..io_utils import append_jsonl, atomic_path, atomic_write_json, remove_stale_temporaries
from ..representation import DEFAULT_FPS, DEFAULT_GRID, TwoTokenSpec
from .clip import DEFAULT_VIDEO_CLIP
from .io import DECODERS, VideoReadError, _check_file, frame_indices, resize_nearest, video_id

log = logging.getLogger("llavidal.video")

SUFFIX = ".npy"


@dataclass
class LongVideoConfig:
    clip: str = DEFAULT_VIDEO_CLIP
    fps: float = DEFAULT_FPS  # frames sampled per second of video
    grid: int = DEFAULT_GRID  # the patch grid of each frame is average-pooled to grid x grid
    chunk: int | None = None  # frames decoded and sent through CLIP at a time (default 32 on CPU, 128 on GPU)
    max_frames: int | None = None  # more sampled frames than this are thinned uniformly (counted and reported)
    device: str | None = None
    dtype: str | None = None  # CLIP compute dtype (default float16 on CUDA, float32 elsewhere)
    decoder: str = "auto"
    select_layer: int = -2
    progress: bool = True

    @classmethod
    def for_spec(cls, spec: TwoTokenSpec, **kwargs) -> LongVideoConfig:
        """The extraction a two-token model's features need."""
        return cls(fps=spec.fps, grid=spec.grid, **kwargs)


# ---------------------------------------------------------------- the frame plan
def sample_indices(total: int, video_fps: float, fps: float = DEFAULT_FPS,
                   max_frames: int | None = None) -> np.ndarray:
    """Frames sampled at ``fps`` from a video of ``total`` frames at ``video_fps``: the frame in the middle of each
    1/fps-second window (the last, partial window included), thinned uniformly to ``max_frames``
    (:func:`~llavidal.video.io.frame_indices`) when there are more."""
    if total < 1:
        raise ValueError(f"a video needs at least one frame, got {total}")
    if not video_fps > 0 or not fps > 0:
        raise ValueError(f"frame rates must be positive (video {video_fps}, sampling {fps})")
    step = video_fps / fps  # source frames per sampled frame
    n = max(1, int(np.ceil(total / step - 1e-9)))
    idx = np.minimum(np.floor((np.arange(n) + 0.5) * step).astype(np.int64), total - 1)
    if max_frames is not None and n > max_frames:
        idx = idx[frame_indices(n, max_frames)]
    return idx


def video_meta(path: str | os.PathLike, decoder: str = "auto") -> tuple[int, float]:
    """(frame count, frame rate) of a video without decoding its pixels with decord (its index), else one decoding
    pass of PyAV (the only count that is always right); :class:`VideoReadError` when unreadable or rate-less."""
    from .io import _av_count, _av_open, _decord_reader, _has_decord

    path = Path(path)
    _check_file(path)
    if _use_decord(path, decoder, _has_decord()):
        try:
            vr = _decord_reader(path)
            total, rate = len(vr), float(vr.get_avg_fps() or 0)
            del vr
            if total > 0 and rate > 0:
                return total, rate
        except VideoReadError:
            if decoder == "decord":
                raise
    container = _av_open(path)
    try:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
    finally:
        container.close()
    if not rate > 0:
        raise VideoReadError(f"{path}: the frame rate is unknown, so frames cannot be sampled at a fixed rate")
    return _av_count(path), rate


def _use_decord(path: Path, decoder: str, available: bool) -> bool:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    return decoder == "decord" or (decoder == "auto" and available and path.suffix.lower() != ".gif")


def iter_frame_chunks(path: str | os.PathLike, indices: np.ndarray, chunk: int,
                      decoder: str = "auto") -> Iterator[np.ndarray]:
    """The frames ``indices`` (increasing) of a video as RGB uint8 chunks ``[<= chunk, H, W, 3]``, in order; at
    most one chunk is decoded and held at a time."""
    from .io import _av_frames, _decord_reader, _has_decord

    path = Path(path)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and np.any(np.diff(idx) < 0):
        raise ValueError("frame indices must be increasing")
    if _use_decord(path, decoder, _has_decord()):
        vr = _decord_reader(path)
        if idx.size and idx[-1] >= len(vr):
            raise VideoReadError(f"{path}: frame index out of range (the video has {len(vr)} frames)")
        for start in range(0, len(idx), chunk):
            try:
                yield vr.get_batch(idx[start:start + chunk].tolist()).asnumpy()
            except Exception as e:  # decord's own errors
                raise VideoReadError(f"{path}: decord failed while decoding: {str(e).splitlines()[0][:200]}") from None
        return
    buf: list[np.ndarray] = []
    k = 0
    for i, frame in enumerate(_av_frames(path)):
        while k < len(idx) and idx[k] == i:  # an index asked twice (thinned plans never do) repeats the frame
            buf.append(frame)
            k += 1
        if len(buf) >= chunk:
            yield np.stack(buf)
            buf = []
        if k == len(idx):
            break
    if buf:
        yield np.stack(buf)
    if k < len(idx):
        raise VideoReadError(f"{path}: fewer frames decoded ({k} of the {len(idx)} sampled) than counted")


def _prefetch(it: Iterator, depth: int = 1) -> Iterator:
    """Run ``it`` one step ahead in a thread (decoding overlaps CLIP; at most ``depth`` items wait); errors reach
    the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in it:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer
            put(e)

    thread = threading.Thread(target=run, name="llavidal-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------- CLIP + pooling
def pool_grid(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """``[n, P, D]`` patch tokens of a square ``sqrt(P) x sqrt(P)`` grid → ``[n, grid², D]`` (adaptive average
    pooling; the ViT-L/14 16 x 16 grid to 4 x 4 averages 4 x 4 blocks)."""
    n, p, d = patches.shape
    side = int(round(p ** 0.5))
    if side * side != p:
        raise ValueError(f"{p} patch tokens per frame do not form a square grid")
    if grid == side:
        return patches
    x = patches.transpose(1, 2).reshape(n, d, side, side).float()
    return torch.nn.functional.adaptive_avg_pool2d(x, grid).reshape(n, d, grid * grid).transpose(1, 2)


class LongVideoFeaturizer:
    """Raw video → two-token features ``[T, grid², D]`` float16, in bounded memory (see the module docstring).

    The same interface as :class:`~llavidal.video.extract.VideoFeaturizer` (``fz(path)``, ``fz.cached(path, dir)``,
    ``fz.features_from_frames(frames)``, ``fz.model``), plus :meth:`write` that streams features to a file."""

    streaming = True

    def __init__(self, cfg: LongVideoConfig = LongVideoConfig()):
        from .extract import ClipFeatureModel

        if cfg.grid < 1 or not cfg.fps > 0:
            raise ValueError(f"grid must be >= 1 and fps > 0 (got grid {cfg.grid}, fps {cfg.fps})")
        self.cfg = cfg
        self.model = ClipFeatureModel(cfg.clip, cfg.device, cfg.dtype, cfg.select_layer, max_frames=1)
        self.chunk = cfg.chunk or (128 if self.model.device.type == "cuda" else 32)
        self.spec = TwoTokenSpec(cfg.grid * cfg.grid, cfg.fps)

    @property
    def hidden_size(self) -> int:
        return self.model.hidden_size

    def plan(self, path: str | os.PathLike) -> tuple[np.ndarray, dict]:
        """(frame indices, facts about the video and the plan)."""
        total, rate = video_meta(path, self.cfg.decoder)
        idx = sample_indices(total, rate, self.cfg.fps, self.cfg.max_frames)
        at_rate = len(sample_indices(total, rate, self.cfg.fps))
        return idx, {"frames_in_video": total, "video_fps": rate, "seconds": total / rate, "sampled": len(idx),
                     "thinned_from": at_rate if at_rate != len(idx) else None}

    @torch.inference_mode()
    def features_from_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames ``[n, H, W, 3]`` → ``[n, grid², D]`` float16 (frames resized to the CLIP size first)."""
        frames = resize_nearest(np.asarray(frames, dtype=np.uint8), self.model.stats.size)
        x = torch.from_numpy(np.ascontiguousarray(frames))
        parts = [self._encode(x[i:i + self.chunk]) for i in range(0, len(x), self.chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.patches, self.hidden_size), np.float16)

    def _encode(self, frames: torch.Tensor) -> np.ndarray:
        return pool_grid(self.model.patches(frames), self.cfg.grid).to(torch.float16).cpu().numpy()

    def iter_features(self, path: str | os.PathLike, indices: np.ndarray) -> Iterator[np.ndarray]:
        """Features of the sampled frames, chunk by chunk (decoding one chunk ahead in a thread)."""
        size = self.model.stats.size
        for frames in _prefetch(iter_frame_chunks(path, indices, self.chunk, self.cfg.decoder)):
            yield self._encode(torch.from_numpy(np.ascontiguousarray(resize_nearest(frames, size))))

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        idx, _ = self.plan(path)
        return np.concatenate(list(self.iter_features(path, idx)))

    def write(self, path: str | os.PathLike, target: str | os.PathLike) -> dict:
        """Stream the features of ``path`` into the ``.npy`` file ``target`` (atomic); returns the plan's facts."""
        idx, info = self.plan(path)
        shape = (len(idx), self.spec.patches, self.hidden_size)
        written = 0
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.lib.format.write_array_header_2_0(fh, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                      "shape": shape})
            for feats in self.iter_features(path, idx):
                fh.write(np.ascontiguousarray(feats, dtype=np.float16).tobytes())
                written += len(feats)
            if written != shape[0]:
                raise VideoReadError(f"{path}: {written} frames decoded of the {shape[0]} planned")
        return {**info, "shape": list(shape)}

    def cached(self, path: str | os.PathLike, cache_dir: str | os.PathLike) -> np.ndarray:
        """``{cache_dir}/{name}.npy`` when it holds complete features of this layout, else computed and written."""
        target = Path(cache_dir) / f"{video_id(path)}{SUFFIX}"
        if target.is_file():
            why = finished_reason(target, self.spec.patches, self.hidden_size)
            if why is None:
                return load_feature(target)
            log.warning("unusable cached features, recomputing: %s", why)
        self.write(path, target)
        return load_feature(target)


def finished_reason(target: Path, patches: int, width: int) -> str | None:
    """Why an existing output cannot count as finished (None when it can)."""
    return check_feature_file(target, width=width, patches=patches)


# ---------------------------------------------------------------- folders
def extract_long_folder(input_path: str | os.PathLike, output: str | os.PathLike,
                        cfg: LongVideoConfig = LongVideoConfig(), featurizer: LongVideoFeaturizer | None = None,
                        jobs: list[tuple[Path, Path]] | None = None) -> dict:
    """Two-token features of every video under ``input_path`` (or of the given ``(video, .npy file)`` jobs) into
    ``output``, one video at a time; returns the summary it writes (``extract_summary.json``)."""
    from tqdm import tqdm

    from .extract import plan

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    failures: list[dict] = []
    if jobs is None:
        jobs, failures = plan(input_path, output, SUFFIX)
    found = len(jobs) + len(failures)
    for folder in {output, *(Path(t).parent for _, t in jobs)}:  # half-written files of a killed run
        remove_stale_temporaries(folder)
    fz = featurizer or LongVideoFeaturizer(cfg)
    pending, redone = [], []
    for v, t in jobs:
        why = finished_reason(Path(t), fz.spec.patches, fz.hidden_size) if Path(t).is_file() else "absent"
        if why is not None:
            pending.append((Path(v), Path(t)))
            if why != "absent":
                redone.append({"video": str(v), "output": str(t), "reason": why})
    failures_file = output / "failures.jsonl"
    failures_file.unlink(missing_ok=True)  # the failures of THIS run
    append_jsonl(failures_file, failures)
    written, frames, thinned, seconds = 0, 0, [], 0.0
    desc = f"extract-long-video {fz.cfg.clip}"
    for video, target in tqdm(pending, unit="video", disable=not cfg.progress, desc=desc):
        try:
            info = fz.write(video, target)
        except (VideoReadError, OSError) as e:
            failures.append({"video": str(video), "stage": "decode", "error": str(e)})
            append_jsonl(failures_file, failures[-1:])
            continue
        except Exception as e:  # anything a corrupt file can make a decoder raise: this video fails, the run goes on
            failures.append({"video": str(video), "stage": "decode", "error": f"{video}: {type(e).__name__}: {e}"})
            append_jsonl(failures_file, failures[-1:])
            continue
        written += 1
        frames += info["sampled"]
        seconds += info["seconds"]
        if info["thinned_from"]:
            thinned.append({"video": str(video), "sampled": info["sampled"], "at_rate": info["thinned_from"]})
    if thinned:
        log.warning("%d videos had more than --max-frames %s frames at %g fps and were thinned uniformly, e.g. %s",
                    len(thinned), cfg.max_frames, fz.cfg.fps, thinned[0])
    wall = time.perf_counter() - t0
    summary = {
        "input": str(input_path), "output": str(output), "clip": fz.cfg.clip, "device": str(fz.model.device),
        "representation": fz.spec.to_config(), "videos_found": found,
        "already_done": len(jobs) - len(pending), "written": written, "failed": len(failures),
        "redone_unusable": len(redone), "frames": frames, "video_seconds": round(seconds, 3),
        "thinned": len(thinned), "thinned_examples": thinned[:20], "wall_s": round(wall, 3),
        "frames_per_s": round(frames / wall, 3) if wall > 0 else None, "config": asdict(cfg),
    }
    atomic_write_json(output / "extract_summary.json", summary)
    msg = f"{written} written, {summary['already_done']} already there"
    if failures:
        msg += f", {len(failures)} failed ({failures_file} lists them)"
    print(f"extract-long-video: {msg}; {frames} frames from {seconds / 60:.1f} minutes of video")
    return summary


# ---------------------------------------------------------------- command line
def cmd_extract_long_video(args) -> int:
    cfg = LongVideoConfig(clip=args.clip, fps=args.fps, grid=args.grid, chunk=args.chunk, max_frames=args.max_frames,
                          device=args.device, dtype=args.dtype, decoder=args.decoder, select_layer=args.select_layer,
                          progress=not args.no_progress)
    summary = extract_long_folder(args.input, args.output, cfg)
    return 0 if summary["failed"] == 0 else 1


def register(sub) -> None:
    p = sub.add_parser("extract-long-video",
                       help="raw videos of any length -> per-frame [T, grid^2, D] features at 1 fps (two-token "
                            "representation), streamed in bounded memory")
    p.add_argument("--input", required=True, help="a video file or a folder (searched recursively)")
    p.add_argument("--output", required=True, help="feature folder ({name}.npy, failures.jsonl, summary)")
    p.add_argument("--clip", default=DEFAULT_VIDEO_CLIP,
                   help=f"CLIP folder or hub id (default {DEFAULT_VIDEO_CLIP}; `llavidal make-tiny-clip` for offline)")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames sampled per second of video (default 1)")
    p.add_argument("--grid", type=int, default=DEFAULT_GRID,
                   help="each frame's patch grid is average-pooled to grid x grid (default 4: 16 features per frame)")
    p.add_argument("--chunk", type=int, default=None,
                   help="frames decoded and encoded at a time (default 32 on CPU, 128 on GPU): bounds the memory")
    p.add_argument("--max-frames", type=int, default=None,
                   help="thin longer videos uniformly to this many frames (counted in the summary); default: none")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="CLIP compute dtype (default float16 on GPU, float32 on CPU); features are stored as float16")
    p.add_argument("--decoder", default="auto", choices=list(DECODERS))
    p.add_argument("--select-layer", type=int, default=-2, help="CLIP hidden layer (default -2, the penultimate)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_extract_long_video)


__all__ = ["LongVideoConfig", "LongVideoFeaturizer", "extract_long_folder", "finished_reason", "iter_frame_chunks",
           "pool_grid", "sample_indices", "video_meta"]

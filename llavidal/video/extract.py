"""Raw video → spatio-temporal CLIP features, for a folder of videos or one video at a time.

The features: docs/design.md#video-features.

Pipeline of ``llavidal extract-video`` (and ``scripts/save_spatio_temporal_clip_features.py``):

    worker processes (DataLoader)          main process (model device)
    ─────────────────────────────          ───────────────────────────────────────────────
    decode the frame indices                frame buffer spanning videos → batches of `batch` frames
    nearest-resize to 224×224 (uint8)  ──►  uint8 → device, CLIP normalisation on device
    (errors travel as values)               CLIP tower up to the selected layer → [B, 256, D] patch tokens
                                            per video: pooling → [100 + 256, D] float16 → atomic write

Decoding runs ahead of the model in ``workers`` processes (prefetching), so decode and compute overlap; a batch may
hold the end of one video and the start of the next, so the model always sees full batches. Outputs are named like
the original's (``{file name up to the first dot}.pkl``), written atomically, and skipped when they exist (a
rerun resumes). Every video that cannot be read, or whose output name is already taken by another video, is
recorded in ``failures.jsonl`` with the reason; it never stops the run. ``extract_summary.json`` counts it all.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..features import check_feature_file, save_feature
from ..io_utils import append_jsonl, atomic_write_json, remove_stale_temporaries
from .clip import DEFAULT_VIDEO_CLIP, image_stats, load_clip_vision, normalise_frames, pool_spatio_temporal
from .io import VideoReadError, find_videos, sample_video, video_id

log = logging.getLogger("llavidal.video")

FORMATS = {"pkl": ".pkl", "npy": ".npy", "safetensors": ".safetensors"}


@dataclass
class ExtractConfig:
    clip: str = DEFAULT_VIDEO_CLIP
    batch: int | None = None  # frames per forward (default: 48 on CPU as the original, 256 on GPU)
    workers: int | None = None  # decoding processes (default: min(8, CPUs - 1); 0 decodes in the main process)
    fmt: str = "pkl"
    device: str | None = None
    dtype: str | None = None  # compute dtype (default float16 on CUDA, float32 elsewhere)
    decoder: str = "auto"
    max_frames: int = 100  # frames sampled per video = temporal rows
    select_layer: int = -2
    progress: bool = True


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name:
        return getattr(torch, name)
    return torch.float16 if device.type == "cuda" else torch.float32


class ClipFeatureModel:
    """The CLIP vision tower (cut after the selected layer) on one device, with CLIP normalisation and pooling.

    ``patches(frames)``: uint8 ``[B, S, S, 3]`` → patch tokens ``[B, P, D]`` (CLS dropped) in the compute dtype.
    ``pool(patches)``: ``[N, P, D]`` of one video → ``[max_frames + P, D]`` float32 on the device.
    """

    def __init__(self, clip: str = DEFAULT_VIDEO_CLIP, device: str | None = None, dtype: str | None = None,
                 select_layer: int = -2, max_frames: int = 100):
        self.device = _device(device)
        self.dtype = _dtype(dtype, self.device)
        self.stats = image_stats(clip)
        self.model = load_clip_vision(clip, select_layer=select_layer, device=self.device, dtype=self.dtype)
        self.hidden_size = self.model.config.hidden_size
        self.max_frames = max_frames
        self.rows = max_frames + (self.model.config.image_size // self.model.config.patch_size) ** 2  # output rows
        self.clip = str(clip)

    @torch.inference_mode()
    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.device, non_blocking=True)  # uint8 crosses the bus, not float32
        pixels = normalise_frames(frames, self.stats, self.dtype)  # [B, 3, S, S]
        hidden = self.model(pixel_values=pixels).last_hidden_state  # [B, 1 + P, D]
        return hidden[:, 1:]

    @torch.inference_mode()
    def pool(self, patches: torch.Tensor) -> torch.Tensor:
        return pool_spatio_temporal(patches, self.max_frames)


class VideoFeaturizer:
    """One video at a time (the demo, ``llavidal infer --video``, evaluation on raw videos).

    ``fz(path)`` → float16 ``[max_frames + 256, D]``; raises :class:`VideoReadError` for what cannot be read.
    ``fz.cached(path, cache_dir)`` reads ``{cache_dir}/{name}.pkl`` when present, else computes and writes it.
    """

    def __init__(self, clip: str = DEFAULT_VIDEO_CLIP, device: str | None = None, dtype: str | None = None,
                 max_frames: int = 100, decoder: str = "auto", batch: int | None = None, select_layer: int = -2):
        self.model = ClipFeatureModel(clip, device, dtype, select_layer, max_frames)
        self.decoder = decoder
        self.batch = batch or (256 if self.model.device.type == "cuda" else 48)

    def frames(self, path: str | os.PathLike) -> np.ndarray:
        return sample_video(path, self.model.max_frames, self.model.stats.size, self.decoder)

    def features_from_frames(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames))
        parts = [self.model.patches(x[i:i + self.batch]) for i in range(0, len(x), self.batch)]
        return self.model.pool(torch.cat(parts)).to(torch.float16).cpu().numpy()

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        return self.features_from_frames(self.frames(path))

    def cached(self, path: str | os.PathLike, cache_dir: str | os.PathLike) -> np.ndarray:
        from ..features import load_feature

        target = Path(cache_dir) / f"{video_id(path)}.pkl"
        if target.is_file():
            why = check_feature_file(target, width=self.model.hidden_size)
            if why is None:
                return load_feature(target)
            log.warning("unusable cached features, recomputing: %s", why)
        arr = self(path)
        save_feature(arr, target)
        return arr


# ---------------------------------------------------------------- folder extraction
class _Decoded(torch.utils.data.Dataset):
    """Decodes one video per item in a worker; a failure is returned as a value, never raised."""

    def __init__(self, videos: list[Path], max_frames: int, size: int, decoder: str):
        self.videos, self.max_frames, self.size, self.decoder = videos, max_frames, size, decoder

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        t0 = time.perf_counter()
        try:
            frames = torch.from_numpy(sample_video(self.videos[i], self.max_frames, self.size, self.decoder))
            return {"index": i, "frames": frames, "error": None, "decode_s": time.perf_counter() - t0}
        except VideoReadError as e:
            return {"index": i, "frames": None, "error": str(e), "decode_s": time.perf_counter() - t0}
        except Exception as e:  # anything a corrupt file can make a decoder raise
            return {"index": i, "frames": None, "error": f"{self.videos[i]}: {type(e).__name__}: {e}",
                    "decode_s": time.perf_counter() - t0}


def _worker_init(_):
    torch.set_num_threads(1)


def plan(input_path: str | os.PathLike, output: Path, suffix: str) -> tuple[list[tuple[Path, Path]], list[dict]]:
    """(video, output file) jobs for every video under ``input_path`` (outputs named like the original's), and
    name collisions as failure records."""
    jobs, failures, owner, dangling = [], [], {}, []
    for path in find_videos(input_path, dangling=dangling):
        name = video_id(path)
        if name in owner:
            failures.append({"video": str(path), "stage": "name",
                             "error": f"output name '{name}{suffix}' is already taken by {owner[name]}"})
            continue
        owner[name] = path
        jobs.append((path, output / f"{name}{suffix}"))
    failures += [{"video": str(p), "stage": "input", "error": f"dangling symbolic link: its target {os.readlink(p)} "
                  "does not exist"} for p in dangling]
    return jobs, failures


def extract_folder(input_path: str | os.PathLike, output: str | os.PathLike, cfg: ExtractConfig = ExtractConfig(),
                   model: ClipFeatureModel | None = None) -> dict:
    """Extract features for every video under ``input_path`` into ``output``; returns the summary it writes."""
    if cfg.fmt not in FORMATS:
        raise ValueError(f"--format must be one of {sorted(FORMATS)}, got {cfg.fmt!r}")
    jobs, failures = plan(input_path, Path(output), FORMATS[cfg.fmt])
    return extract_videos(jobs, output, cfg, model=model, failures=failures, source=str(input_path))


def extract_videos(jobs: list[tuple[Path, Path]], output: str | os.PathLike, cfg: ExtractConfig = ExtractConfig(),
                   model: ClipFeatureModel | None = None, failures: list[dict] | None = None,
                   source: str | None = None) -> dict:
    """Extract ``(video, feature file)`` jobs whose feature file does not exist yet; ``output`` receives
    ``failures.jsonl`` and ``extract_summary.json``. Returns the summary."""
    from tqdm import tqdm

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for folder in {output, *(Path(t).parent for _, t in jobs)}:  # half-written files of a killed run
        remove_stale_temporaries(folder)
    t_start = time.perf_counter()
    failures = list(failures or [])
    model = model or ClipFeatureModel(cfg.clip, cfg.device, cfg.dtype, cfg.select_layer, cfg.max_frames)
    pending, redone = [], []
    for v, t in jobs:  # an existing output counts as done only when it loads with the right shape
        why = check_feature_file(t, width=model.hidden_size, rows=model.rows) if Path(t).is_file() else "absent"
        if why is not None:
            pending.append((v, t))
            if why != "absent":
                redone.append({"video": str(v), "output": str(t), "reason": why})
    if redone:
        log.warning("%d existing outputs are unusable and are extracted again, e.g. %s", len(redone),
                    redone[0]["reason"])
    done_before = len(jobs) - len(pending)
    todo = [Path(v) for v, _ in pending]
    targets = [Path(t) for _, t in pending]
    failures_file = output / "failures.jsonl"
    failures_file.unlink(missing_ok=True)  # the failures of THIS run (outputs of earlier runs stay)
    append_jsonl(failures_file, failures)

    batch = cfg.batch or (256 if model.device.type == "cuda" else 48)
    workers = cfg.workers if cfg.workers is not None else max(0, min(8, (os.cpu_count() or 1) - 1))
    workers = min(workers, len(todo))
    loader = torch.utils.data.DataLoader(
        _Decoded(todo, cfg.max_frames, model.stats.size, cfg.decoder), batch_size=None, shuffle=False,
        num_workers=workers, prefetch_factor=4 if workers else None, worker_init_fn=_worker_init if workers else None,
        pin_memory=model.device.type == "cuda", persistent_workers=False)

    stats = {"written": 0, "frames": 0, "decode_s": 0.0, "model_s": 0.0, "write_failed": 0}
    cuda = model.device.type == "cuda"
    # frame buffer spanning videos, already on the device: (video index, uint8 frames not yet through the model)
    buffer: list[tuple[int, torch.Tensor]] = []
    buffered = 0
    outs: dict[int, list[torch.Tensor]] = {}  # patch tokens computed so far per video (on the device)
    remaining: dict[int, int] = {}  # frames of a video not yet through the model
    in_flight: list[tuple[int, torch.Tensor, object]] = []  # pooled features on their way to the host
    writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llavidal-write")
    writes: list[tuple[int, object]] = []

    def run_batch(limit: int) -> list[int]:
        """Send up to ``limit`` buffered frames through the model; returns the videos that became complete."""
        nonlocal buffered
        take, parts, owners = limit, [], []
        while buffer and take > 0:
            i, frames = buffer[0]
            k = min(len(frames), take)
            parts.append(frames[:k])
            owners.append((i, k))
            if k == len(frames):
                buffer.pop(0)
            else:
                buffer[0] = (i, frames[k:])
            take -= k
        buffered -= limit - take
        t0 = time.perf_counter()
        patches = model.patches(parts[0] if len(parts) == 1 else torch.cat(parts))  # [n, P, D], queued on GPU
        stats["model_s"] += time.perf_counter() - t0
        complete, start = [], 0
        for i, k in owners:
            outs.setdefault(i, []).append(patches[start:start + k])
            start += k
            remaining[i] -= k
            if remaining[i] == 0:
                complete.append(i)
        return complete

    def pool(i: int) -> None:
        """Pool a finished video on the device and start its copy to the host without waiting for it."""
        feats = model.pool(torch.cat(outs.pop(i))).to(torch.float16)
        if cuda:
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            in_flight.append((i, host, done))
        else:
            in_flight.append((i, feats, None))

    def drain(wait: bool = False) -> None:
        """Hand the features whose copy has finished to the writer threads (all of them when ``wait``)."""
        while in_flight and (wait or in_flight[0][2] is None or in_flight[0][2].query()):
            i, host, done = in_flight.pop(0)
            if done is not None:
                done.synchronize()
            writes.append((i, writer.submit(save_feature, host.numpy(), targets[i])))
        while writes and (wait or writes[0][1].done()):
            i, fut = writes.pop(0)
            try:
                fut.result()
                stats["written"] += 1
            except Exception as e:  # disk full, permissions: this video fails, the run goes on
                stats["write_failed"] += 1
                append_jsonl(failures_file, [{"video": str(todo[i]), "stage": "write", "error": f"{type(e).__name__}: {e}"}])
            bar.update(1)

    bar = tqdm(total=len(todo), unit="video", disable=not cfg.progress, dynamic_ncols=True,
               desc=f"extract {model.clip}")
    new_failures = 0
    try:
        for item in loader:
            stats["decode_s"] += item["decode_s"]
            i = item["index"]
            if item["error"] is not None:
                append_jsonl(failures_file, [{"video": str(todo[i]), "stage": "decode", "error": item["error"]}])
                new_failures += 1
                bar.update(1)
                continue
            frames = item["frames"].to(model.device, non_blocking=True)  # pinned by the loader on CUDA
            stats["frames"] += len(frames)
            remaining[i] = len(frames)
            buffer.append((i, frames))
            buffered += len(frames)
            while buffered >= batch:
                for j in run_batch(batch):
                    pool(j)
            drain()
        while buffered:
            for j in run_batch(batch):
                pool(j)
        drain(wait=True)
    finally:
        writer.shutdown(wait=True)
        bar.close()
    written, frames_total, decode_s, model_s = stats["written"], stats["frames"], stats["decode_s"], stats["model_s"]
    new_failures += stats["write_failed"]

    wall = time.perf_counter() - t_start
    summary = {
        "input": source, "output": str(output), "clip": model.clip, "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."), "format": cfg.fmt, "batch": batch, "workers": workers,
        "videos_found": len(todo) + done_before + len(failures), "already_done": done_before, "written": written,
        "redone_unusable": len(redone), "redone_examples": redone[:20],
        "failed": len(failures) + new_failures, "frames": frames_total, "wall_s": round(wall, 3),
        "videos_per_s": round(written / wall, 3) if wall > 0 else None,
        "decode_s_sum_over_workers": round(decode_s, 3), "model_launch_s": round(model_s, 3),
        "config": asdict(cfg),
    }
    atomic_write_json(output / "extract_summary.json", summary)
    msg = (f"{written} written, {done_before} already there, {summary['failed']} failed "
           f"({failures_file} lists them)" if summary["failed"] else f"{written} written, {done_before} already there")
    if redone:
        msg += f", {len(redone)} unusable earlier outputs redone"
    log.info(msg)
    print(f"extract-video: {msg}; {summary['videos_per_s']} videos/s")
    return summary

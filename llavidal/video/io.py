"""Reading and writing video files: decord first, PyAV for what decord cannot open (gif, some webm/mkv), and the
frame sampling of docs/design.md#video-features.

All readers return RGB uint8 arrays ``[N, H, W, 3]``. Every failure is a :class:`VideoReadError` whose message
names the file and what went wrong, so that batch jobs can record it and go on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io_utils import atomic_path

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
DECODERS = ("auto", "decord", "pyav")


class VideoReadError(ValueError):
    """A video that cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_id(path: str | os.PathLike) -> str:
    """The name a video's features are stored under, as the original feature script names them: the file name up
    to its first dot (``001_001_video_001.mp4`` → ``001_001_video_001``, ``a.b.mp4`` → ``a``)."""
    return Path(path).name.split(".")[0]


def find_videos(root: str | os.PathLike, dangling: list[Path] | None = None) -> list[Path]:
    """A video file, or every video under a folder (recursively, sorted, hidden files skipped).

    Video-named symbolic links whose target is gone are not videos; pass a list as ``dangling`` to receive them
    (so that a caller can report them instead of skipping them silently)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        if root.is_symlink():
            raise FileNotFoundError(f"{root}: dangling symbolic link (its target {os.readlink(root)} is gone)")
        raise FileNotFoundError(f"{root}: no such file or folder")
    found = []
    for p in sorted(root.rglob("*")):
        if not is_video(p) or p.name.startswith("."):
            continue
        if p.is_file():
            found.append(p)
        elif p.is_symlink() and not p.exists() and dangling is not None:
            dangling.append(p)
    return found


def frame_indices(total: int, max_frames: int = 100) -> np.ndarray:
    """docs/design.md#video-features: N = min(T, max_frames) frames; with seg = (T-1)/N, frame i is
    ``(round(seg*i) + round(seg*(i+1))) // 2`` (rounding half to even, as numpy rounds)."""
    if total < 1:
        raise ValueError(f"a video needs at least one frame, got {total}")
    n = min(total, max_frames)
    seg = (total - 1) / n
    i = np.arange(n, dtype=np.float64)
    return ((np.round(seg * i) + np.round(seg * (i + 1))) // 2).astype(np.int64)


def kept_frame_indices(total: int, max_frames: int = 100, keep: int | None = None) -> np.ndarray:
    """The frames a video's per-frame features keep: ``keep`` of the :func:`frame_indices` sample, picked from it by
    the same rule (``frame_indices(N, keep)`` positions of the N sampled frames); all of them when ``keep`` is None
    or not smaller than N. Extraction with ``--keep-frames`` and on-the-fly featurization keep the same frames."""
    idx = frame_indices(total, max_frames)
    return idx if keep is None or keep >= len(idx) else idx[frame_indices(len(idx), keep)]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")


# ---------------------------------------------------------------- decord
def _decord_reader(path: Path):
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises its own DECORDError and RuntimeError for unreadable input
        raise VideoReadError(f"{path}: decord cannot open it: {str(e).splitlines()[0][:200]}") from None


def _sample(total: int, indices: Sequence[int] | None, max_frames: int | None, keep: int | None) -> np.ndarray:
    if indices is not None:
        return np.asarray(indices, dtype=np.int64)
    return kept_frame_indices(total, max_frames, keep) if max_frames else np.arange(total)


def _decord_read(path: Path, indices: Sequence[int] | None, max_frames: int | None,
                 keep: int | None = None) -> tuple[np.ndarray, int]:
    vr = _decord_reader(path)
    total = len(vr)
    if total < 1:
        raise VideoReadError(f"{path}: no video frames")
    idx = _sample(total, indices, max_frames, keep)
    if idx.size and (idx.min() < 0 or idx.max() >= total):
        raise VideoReadError(f"{path}: frame index out of range (the video has {total} frames)")
    try:
        frames = vr.get_batch(list(map(int, idx))).asnumpy()
    except Exception as e:
        raise VideoReadError(f"{path}: decord failed while decoding: {str(e).splitlines()[0][:200]}") from None
    return frames, total


# ---------------------------------------------------------------- PyAV
def _av_open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* (InvalidDataError, ...), OSError
        raise VideoReadError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: the file has no video stream")
    return container


def _av_frames(path: Path):
    """Yields RGB frames in presentation order."""
    container = _av_open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")
    except VideoReadError:
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def _av_count(path: Path) -> int:
    """Number of decodable frames (decodes without converting to RGB: the only count that is always right)."""
    container = _av_open(path)
    try:
        return sum(1 for _ in container.decode(container.streams.video[0]))
    except Exception as e:
        raise VideoReadError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def _av_read(path: Path, indices: Sequence[int] | None, max_frames: int | None,
             keep: int | None = None) -> tuple[np.ndarray, int]:
    if indices is None and not max_frames:
        frames = list(_av_frames(path))
        if not frames:
            raise VideoReadError(f"{path}: no video frames")
        return np.stack(frames), len(frames)
    total = _av_count(path)
    if total < 1:
        raise VideoReadError(f"{path}: no video frames")
    idx = _sample(total, indices, max_frames, keep)
    if idx.size and (idx.min() < 0 or idx.max() >= total):
        raise VideoReadError(f"{path}: frame index out of range (the video has {total} frames)")
    wanted: dict[int, list[int]] = {}
    for pos, i in enumerate(idx.tolist()):
        wanted.setdefault(i, []).append(pos)
    out: list[np.ndarray | None] = [None] * len(idx)
    last = int(idx.max()) if idx.size else -1
    for i, frame in enumerate(_av_frames(path)):
        for pos in wanted.get(i, ()):
            out[pos] = frame
        if i >= last:
            break
    if any(f is None for f in out):
        raise VideoReadError(f"{path}: fewer frames decoded than counted")
    return np.stack(out), total


def read_frames(path: str | os.PathLike, indices: Sequence[int] | None = None, max_frames: int | None = None,
                decoder: str = "auto", keep: int | None = None) -> tuple[np.ndarray, int]:
    """Frames of a video as RGB uint8 ``[N, H, W, 3]`` plus the video's frame count.

    ``indices``: exactly these frames; ``max_frames``: the uniform sample of at most that many
    (docs/design.md#video-features), of which only ``keep`` when given (:func:`kept_frame_indices`); neither: all.
    ``decoder``: ``decord``, ``pyav`` or ``auto`` (decord, then PyAV for what decord cannot read).
    """
    path = Path(path)
    _check_file(path)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "pyav" or (decoder == "auto" and (path.suffix.lower() == ".gif" or not _has_decord())):
        return _av_read(path, indices, max_frames, keep)
    try:
        return _decord_read(path, indices, max_frames, keep)
    except VideoReadError as first:
        if decoder == "decord":
            raise
        try:
            return _av_read(path, indices, max_frames, keep)
        except VideoReadError as second:
            raise VideoReadError(f"{second} (decord: {str(first).removeprefix(str(path) + ': ')})") from None


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def resize_nearest(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 → ``[N, size, size, 3]`` by nearest-neighbour sampling, aspect not kept (the original's
    ``torch.nn.functional.interpolate`` default; docs/design.md#video-features); frames already that size are returned
    as they are."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="nearest")
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def sample_video(path: str | os.PathLike, max_frames: int = 100, size: int = 224,
                 decoder: str = "auto", keep: int | None = None) -> np.ndarray:
    """The frames video features are computed from: the sampled indices, nearest-resized to ``size`` → uint8
    ``[min(T, max_frames), size, size, 3]`` (only the ``keep`` kept frames when given: per-frame features)."""
    frames, _ = read_frames(path, max_frames=max_frames, decoder=decoder, keep=keep)
    return resize_nearest(frames, size)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count (decoded, not the header's guess), frame rate and size."""
    path = Path(path)
    _check_file(path)
    container = _av_open(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
    finally:
        container.close()
    return VideoInfo(_av_count(path), fps, width, height)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 30.0, codec: str | None = None,
                pix_fmt: str | None = None) -> Path:
    """Encode RGB uint8 frames ``[N, H, W, 3]`` with PyAV (FFmpeg); the codec defaults by container (h264 for
    .mp4/.mkv/.mov, vp9 for .webm, mpeg4 for .avi, gif for .gif). Written to a temporary name, then renamed."""
    from fractions import Fraction

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    codec = codec or {".webm": "libvpx-vp9", ".avi": "mpeg4", ".gif": "gif"}.get(suffix, "libx264")
    pix_fmt = pix_fmt or ("rgb8" if codec == "gif" else "yuv420p")
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: frames must be a non-empty [N, H, W, 3] uint8 array, got {frames.shape}")
    h, w = frames.shape[1:3]
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):  # 4:2:0 needs even sizes: pad one black row/column
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h, w = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, suffix) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

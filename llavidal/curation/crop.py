"""``llavidal curate crop``: person-augmented clips (docs/design.md#curation, step 1).

For every NTU clip ``rgb/<stem>_rgb.avi`` with a skeleton ``skeletons/<stem>.skeleton.npy`` (or the raw
``.skeleton`` text), each frame is cropped to the box around all joints of all tracked bodies, grown by ``slack``
pixels on every side, black-padded where the box leaves the frame, and resized to ``size`` x ``size`` (aspect not
kept, as in the release; ``--square`` grows the shorter side instead). Written next to each other in ``--out``:

- ``<stem>_rgb.avi``: MPEG-4 Part 2 in AVI at a fixed quantiser (``--quality``, 3 ≈ visually lossless) — the
  container and codec of the NTU originals and of the released crops, so the released stitching map, which names
  ``<stem>_rgb.avi`` files, points at our crops unchanged; it also encodes ~2x faster than H.264.
  ``--format mp4`` writes H.264 ``<stem>_rgb.mp4`` instead (smaller files; the stitching step accepts both).
- ``<stem>_keypoints.npy``: float32 ``[frames, bodies, 25, 2]``, the RGB joint coordinates in crop pixels (NaN
  where a body is not tracked in a frame: 0 would be a valid crop position).
- ``<stem>_boxes.npy``: int32 ``[frames, 4]``, the crop box ``x0, y0, x1, y1`` (half-open) in source pixels.

Geometry (pixel centres at integer coordinates, as Kinect colour coordinates and FFmpeg's scaler use):
``x0 = floor(min x) - slack``, ``x1 = ceil(max x) + slack + 1`` (same for y), then rounded outward to even
coordinates (so that the crop is cut from the decoded 4:2:0 planes directly, without a full-frame RGB conversion:
the costliest step otherwise); a crop pixel ``u`` samples the box at
``x0 + (u + 0.5) * (x1 - x0) / size - 0.5``, so a keypoint maps to ``(x - x0 + 0.5) * size / (x1 - x0) - 0.5``.
The release grew the box by ``slack`` in total (half per side): ``--slack 32`` reproduces its boxes.

Counted and reported, never silent: clips whose video and skeleton frame counts differ (the first
``min(video, skeleton)`` frames are written), frames without a tracked body (they reuse the nearest frame's box),
boxes clamped because a joint lay absurdly far outside the frame. A clip that fails is recorded in
``failures.jsonl`` and the run goes on; outputs are written atomically (keypoints and boxes first, the video last),
so a clip whose video exists is finished and a second run skips it. ``crop_manifest.json`` summarises all runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..io_utils import (append_jsonl, atomic_write_bytes, atomic_write_json, commit, discard, read_jsonl,
                        remove_stale_temporaries, temp_path_for)

MANIFEST = "crop_manifest.json"
FAILURES = "failures.jsonl"
RECORDS = "crop_records.jsonl"
FORMATS = ("avi", "mp4")


@dataclass
class CropConfig:
    slack: int = 64                          # pixels added on every side of the joints' box
    size: int = 224                          # output frames are size x size
    square: bool = False                     # grow the box's shorter side to a square first (keeps the aspect)
    fmt: str = "avi"                         # avi: MPEG-4 Part 2 (as NTU); mp4: H.264
    quality: int | None = None               # avi: qscale 1-31 (default 3); mp4: crf 0-51 (default 18)
    coord_size: tuple[int, int] | None = None  # (w, h) the skeleton's RGB coordinates refer to (default: the video's)
    workers: int = 1
    progress: bool = True


# ---------------------------------------------------------------------------------------------------- geometry
def joint_boxes(rgb: np.ndarray, present: np.ndarray, slack: int, square: bool = False,
                frame_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-frame crop boxes from joints.

    ``rgb`` float ``[T, B, 25, 2]`` pixel coordinates, ``present`` bool ``[T, B]``. Returns int64 boxes ``[T, 4]``
    (``x0, y0, x1, y1``, half-open, even coordinates), bool ``[T]`` marking frames that had no tracked body (or only NaN joints) and
    took the box of the nearest frame that had one (the earlier one on a tie), and the number of boxes clamped to
    ``frame_size`` grown by its own width/height on every side (a guard against absurd coordinates). Raises
    ValueError when no frame has a tracked body.
    """
    t = rgb.shape[0]
    boxes = np.zeros((t, 4), dtype=np.int64)
    have = np.zeros(t, dtype=bool)
    for f in range(t):
        pts = rgb[f][present[f]].reshape(-1, 2)
        pts = pts[np.isfinite(pts).all(axis=1)]
        if len(pts) == 0:
            continue
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        x0, y0 = math.floor(lo[0]) - slack, math.floor(lo[1]) - slack
        x1, y1 = math.ceil(hi[0]) + slack + 1, math.ceil(hi[1]) + slack + 1
        x0, y0, x1, y1 = x0 - x0 % 2, y0 - y0 % 2, x1 + x1 % 2, y1 + y1 % 2  # outward to even (4:2:0 chroma)
        if square:
            w, h = x1 - x0, y1 - y0  # both even
            if w < h:
                x0 -= ((h - w) // 2) + ((h - w) // 2) % 2
                x1 = x0 + h
            elif h < w:
                y0 -= ((w - h) // 2) + ((w - h) // 2) % 2
                y1 = y0 + w
        boxes[f] = (x0, y0, x1, y1)
        have[f] = True
    if not have.any():
        raise ValueError("no frame has a tracked body")
    missing = ~have
    if missing.any():
        idx = np.flatnonzero(have)
        for f in np.flatnonzero(missing):
            k = np.searchsorted(idx, f)
            cands = [idx[k - 1]] if k > 0 else []
            if k < len(idx):
                cands.append(idx[k])
            boxes[f] = boxes[min(cands, key=lambda c: (abs(c - f), c))]
    clamped = 0
    if frame_size is not None:
        w, h = frame_size
        lim = np.array([-w, -h, 2 * w, 2 * h])
        lim -= lim % 2
        new = boxes.copy()
        new[:, 0:2] = np.clip(new[:, 0:2], lim[0:2], lim[2:4] - 2)
        new[:, 2:4] = np.clip(new[:, 2:4], new[:, 0:2] + 2, lim[2:4])
        clamped = int((new != boxes).any(axis=1).sum())
        boxes = new
    return boxes, missing, clamped


def pad_crop(frame: np.ndarray, box) -> np.ndarray:
    """The box's pixels of ``frame`` ``[H, W, 3]``, black where the box leaves the frame → ``[y1-y0, x1-x0, 3]``
    (a view of the frame when the box lies inside it)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = frame.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return frame[y0:y1, x0:x1]
    out = np.zeros((y1 - y0, x1 - x0, frame.shape[2]), dtype=frame.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return out


YUV420 = ("yuv420p", "yuvj420p")


def crop_yuv420(frame, box, size: int):
    """Crop + pad + scale a decoded 4:2:0 ``av.VideoFrame`` without converting the whole frame to RGB: the box
    (even coordinates) is cut from the Y, U and V planes (views of the decoder's buffers; only the box is copied),
    padded with black (Y = 16, or 0 for full-range ``yuvj420p``; U = V = 128) and scaled by FFmpeg → yuv420p
    ``av.VideoFrame`` of ``size`` x ``size``."""
    import av

    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = frame.width, frame.height
    bw, bh = x1 - x0, y1 - y0
    black_y = 0 if frame.format.name == "yuvj420p" else 16
    buf = np.empty(bw * bh * 3 // 2, dtype=np.uint8)
    ys = buf[:bw * bh].reshape(bh, bw)
    us = buf[bw * bh:bw * bh * 5 // 4].reshape(bh // 2, bw // 2)
    vs = buf[bw * bh * 5 // 4:].reshape(bh // 2, bw // 2)
    for k, (dst, fill, div) in enumerate(((ys, black_y, 1), (us, 128, 2), (vs, 128, 2))):
        plane = frame.planes[k]
        src = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[:(h + div - 1) // div,
                                                                                 :(w + div - 1) // div]
        bx0, by0, bx1, by1 = x0 // div, y0 // div, x1 // div, y1 // div
        sx0, sy0 = max(bx0, 0), max(by0, 0)
        sx1, sy1 = min(bx1, src.shape[1]), min(by1, src.shape[0])
        if sx0 > bx0 or sy0 > by0 or sx1 < bx1 or sy1 < by1:
            dst.fill(fill)
        if sx1 > sx0 and sy1 > sy0:
            dst[sy0 - by0:sy1 - by0, sx0 - bx0:sx1 - bx0] = src[sy0:sy1, sx0:sx1]
    small = av.VideoFrame.from_ndarray(buf.reshape(bh * 3 // 2, bw), format="yuv420p")
    if frame.format.name == "yuvj420p":
        small.color_range = 2  # full range, as decoded (JPEG)
    return small.reformat(width=size, height=size, format="yuv420p", interpolation="BILINEAR")


def resize_rgb(img: np.ndarray, size: int):
    """RGB ``[h, w, 3]`` → an ``av.VideoFrame`` of ``size`` x ``size`` (FFmpeg's bilinear scaler, which widens its
    filter when shrinking: no aliasing), in yuv420p ready for the encoder."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    return frame.reformat(width=size, height=size, format="yuv420p", interpolation="BILINEAR")


def crop_frame(frame: np.ndarray, box, size: int) -> np.ndarray:
    """uint8 ``[size, size, 3]``: the padded box of ``frame`` resized (what the clip's frames are)."""
    import av

    small = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_crop(frame, box)), format="rgb24")
    return small.reformat(width=size, height=size, format="rgb24", interpolation="BILINEAR").to_ndarray()


def transform_keypoints(kpts: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Source pixel coordinates ``[T, ..., 2]`` → crop pixel coordinates with per-frame boxes ``[T, 4]``."""
    kpts = np.asarray(kpts, dtype=np.float64)
    b = np.asarray(boxes, dtype=np.float64).reshape((len(boxes),) + (1,) * (kpts.ndim - 2) + (4,))
    origin = b[..., 0:2]
    scale = size / (b[..., 2:4] - b[..., 0:2])
    return (kpts - origin + 0.5) * scale - 0.5


# ---------------------------------------------------------------------------------------------------- video I/O
class VideoWriter:
    """Streams frames into a video file with PyAV: written under a temporary name, renamed by :meth:`close`
    (``abort`` removes it), so a killed job never leaves a file that looks finished.

    ``codec``: ``mpeg4`` (fixed quantiser ``quality``, default 3) or ``libx264`` (crf ``quality``, default 18,
    preset ``preset``; ``bframes=False`` turns B-frames off). Frames: RGB uint8 arrays or ``av.VideoFrame`` of the right size.
    """

    def __init__(self, path, width: int, height: int, fps: float = 30.0, codec: str | None = None,
                 quality: int | None = None, preset: str = "veryfast", bframes: bool = True):
        import av

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        self.codec = codec or ("mpeg4" if suffix == ".avi" else "libx264")
        self.tmp = temp_path_for(self.path, suffix)
        self.width, self.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        self.frames = 0
        self.container = av.open(str(self.tmp), mode="w")
        rate = Fraction(fps if fps and fps > 0 else 30.0).limit_denominator(1001)
        self.time_base = 1 / rate
        if self.codec == "libx264":
            opts = {"crf": str(18 if quality is None else quality), "preset": preset}
            if not bframes:  # no frame reordering: clips can later be joined by copying packets
                opts["bf"] = "0"
            self.stream = self.container.add_stream(self.codec, rate=rate, options=opts)
        else:
            self.stream = self.container.add_stream(self.codec, rate=rate)
            if self.codec == "mpeg4":
                self.stream.codec_context.qscale = True
                self.stream.codec_context.global_quality = (3 if quality is None else quality) * 118  # FF_QP2LAMBDA
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"

    def write(self, frame) -> None:
        import av

        if isinstance(frame, np.ndarray):
            if frame.shape[0] != self.height or frame.shape[1] != self.width:
                frame = np.pad(frame, ((0, self.height - frame.shape[0]), (0, self.width - frame.shape[1]), (0, 0)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        frame.pts, frame.time_base = self.frames, self.time_base  # numbered here: inputs come from any source
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return commit(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001, S110 - the temporary file is deleted anyway
            pass
        discard(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def open_video(path):
    """(container, stream, fps, width, height) of a readable video; VideoReadError names the file otherwise."""
    from ..video.io import VideoReadError, _av_open, _check_file

    path = Path(path)
    _check_file(path)
    container = _av_open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
    w, h = stream.codec_context.width, stream.codec_context.height
    if not w or not h:
        container.close()
        raise VideoReadError(f"{path}: the video stream has no frame size")
    return container, stream, fps, w, h


# ---------------------------------------------------------------------------------------------------- one clip
def output_paths(out_dir, stem: str, fmt: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"video": out_dir / f"{stem}_rgb.{fmt}", "keypoints": out_dir / f"{stem}_keypoints.npy",
            "boxes": out_dir / f"{stem}_boxes.npy"}


def _save_npy(arr: np.ndarray, path: Path) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def crop_clip(video, skeleton, out_dir, cfg: CropConfig) -> dict:
    """Crop one clip; returns its record (frame counts, mismatch, reused boxes). Raises on failure (the message
    names the file)."""
    from ..video.io import VideoReadError
    from .ntu import body_present, load_skeleton, rgb_array

    video, skeleton = Path(video), Path(skeleton)
    stem = video.name[:20]
    paths = output_paths(out_dir, stem, cfg.fmt)
    d = load_skeleton(skeleton)
    rgb, present = rgb_array(d), body_present(d)  # [T, B, 25, 2], [T, B]
    t_skel = rgb.shape[0]
    if t_skel == 0 or not present.any():
        raise ValueError(f"{skeleton}: no tracked body in any of its {t_skel} frames")
    container, stream, fps, w, h = open_video(video)
    try:
        if cfg.coord_size is not None and tuple(cfg.coord_size) != (w, h):
            rgb = rgb * (np.array([w, h]) / np.array(cfg.coord_size))
        try:
            boxes, reused, clamped = joint_boxes(rgb, present, cfg.slack, cfg.square, (w, h))
        except ValueError as e:
            raise ValueError(f"{skeleton}: {e}") from None
        written = extra = 0
        codec = "mpeg4" if cfg.fmt == "avi" else "libx264"
        with VideoWriter(paths["video"], cfg.size, cfg.size, fps, codec, cfg.quality, bframes=False) as writer:
            try:
                for frame in container.decode(stream):
                    if written >= t_skel:
                        extra += 1  # counted, not converted: the clip ends with its skeleton
                        continue
                    if frame.format.name in YUV420:
                        writer.write(crop_yuv420(frame, boxes[written], cfg.size))
                    else:  # other pixel formats: through RGB
                        img = frame.to_ndarray(format="rgb24")
                        writer.write(resize_rgb(pad_crop(img, boxes[written]), cfg.size))
                    written += 1
            except Exception as e:  # noqa: BLE001 - av errors mid-stream, reported with the file
                raise VideoReadError(f"{video}: decoding failed at frame {written + extra} "
                                     f"({type(e).__name__}: {e})") from None
            if written == 0:
                raise VideoReadError(f"{video}: no video frames")
            kpts = transform_keypoints(rgb[:written], boxes[:written], cfg.size)
            kpts[~present[:written]] = np.nan
            _save_npy(kpts.astype(np.float32), paths["keypoints"])
            _save_npy(boxes[:written].astype(np.int32), paths["boxes"])
    finally:
        container.close()
    video_frames = written + extra
    return {"stem": stem, "video": str(video), "skeleton": str(skeleton), "output": paths["video"].name,
            "video_frames": video_frames, "skeleton_frames": t_skel, "frames_written": written,
            "frame_mismatch": video_frames != t_skel, "frames_without_skeleton": int(reused[:written].sum()),
            "boxes_clamped": clamped, "bodies": int(present.shape[1]), "fps": fps, "source_size": [w, h]}


# ---------------------------------------------------------------------------------------------------- dataset
def find_skeleton(skel_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}.skeleton.npy", f"{stem}.skeleton"):
        if (skel_dir / name).is_file():
            return skel_dir / name
    return None


def list_clips(ntu_root) -> tuple[list[tuple[str, Path, Path | None]], list[str]]:
    """``[(stem, video, skeleton or None)]`` sorted by stem, and the files of ``rgb/`` whose names are not NTU
    names (ignored, reported)."""
    from ..video.io import is_video
    from .ntu import NTUName

    root = Path(ntu_root)
    rgb_dir, skel_dir = root / "rgb", root / "skeletons"
    if not rgb_dir.is_dir():
        raise FileNotFoundError(f"{rgb_dir}: no such folder (an NTU root holds rgb/ and skeletons/)")
    if not skel_dir.is_dir():
        raise FileNotFoundError(f"{skel_dir}: no such folder (an NTU root holds rgb/ and skeletons/)")
    clips, ignored = [], []
    for p in sorted(rgb_dir.iterdir()):
        if not p.is_file() or p.name.startswith(".") or not is_video(p):
            continue
        try:
            stem = NTUName.parse(p).stem
        except ValueError:
            ignored.append(p.name)
            continue
        if clips and clips[-1][0] == stem:  # e.g. both _rgb.avi and _rgb.mp4: the first (sorted) one is used
            ignored.append(f"{p.name} (another video of {stem} is used)")
            continue
        clips.append((stem, p, find_skeleton(skel_dir, stem)))
    return clips, ignored


def _work(args):
    stem, video, skeleton, out_dir, cfg = args
    t0 = time.perf_counter()
    try:
        rec = crop_clip(video, skeleton, out_dir, cfg)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        return True, rec
    except Exception as e:  # noqa: BLE001 - recorded per clip; the run goes on
        msg = str(e) if str(video) in str(e) or str(skeleton) in str(e) else f"{video}: {e}"
        return False, {"stem": stem, "video": str(video), "skeleton": str(skeleton),
                       "error": f"{type(e).__name__}: {msg}"}


def crop_dataset(ntu_root, out_dir, cfg: CropConfig | None = None) -> dict:
    """Crop every clip of an NTU root into ``out_dir`` (resumable); returns the manifest."""
    cfg = cfg or CropConfig()
    if cfg.fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {cfg.fmt!r}")
    if cfg.size < 2 or cfg.slack < 0:
        raise ValueError(f"size must be >= 2 and slack >= 0, got size={cfg.size} slack={cfg.slack}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # half-written clips of a run that was killed
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    clips, ignored = list_clips(ntu_root)
    todo, skipped, failures = [], 0, []
    for stem, video, skel in clips:
        if output_paths(out_dir, stem, cfg.fmt)["video"].is_file():
            skipped += 1
        elif skel is None:
            failures.append({"stem": stem, "video": str(video), "skeleton": None,
                             "error": f"no skeleton: neither {stem}.skeleton.npy nor {stem}.skeleton in "
                                      f"{Path(ntu_root) / 'skeletons'}"})
        else:
            todo.append((stem, video, skel, out_dir, cfg))
    if failures:
        append_jsonl(out_dir / FAILURES, [dict(f, run=started) for f in failures])
    bar = None
    if cfg.progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="crop", unit="clip")
    done = 0

    def handle(ok, rec):
        nonlocal done
        if ok:
            append_jsonl(out_dir / RECORDS, [rec])
            done += 1
        else:
            append_jsonl(out_dir / FAILURES, [dict(rec, run=started)])
            failures.append(rec)
        if bar is not None:
            bar.update(1)

    if cfg.workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            for ok, rec in pool.map(_work, todo, chunksize=1):
                handle(ok, rec)
    else:
        for item in todo:
            handle(*_work(item))
    if bar is not None:
        bar.close()
    manifest = summarise(out_dir, cfg, ntu_root, started, time.perf_counter() - t0, len(clips), done, skipped,
                         failures, ignored)
    return manifest


def summarise(out_dir: Path, cfg: CropConfig, ntu_root, started: str, seconds: float, clips: int, done: int,
              skipped: int, failures: list[dict], ignored: list[str]) -> dict:
    """Write ``crop_manifest.json`` from all records so far (this run and earlier ones)."""
    records = {}
    for r in read_jsonl(out_dir / RECORDS):
        if output_paths(out_dir, r["stem"], cfg.fmt)["video"].is_file():
            records[r["stem"]] = r  # the latest record of a clip whose output exists
    # a run killed between writing a video and recording it: finished, but its counts are unknown
    unrecorded = sorted(p.name for p in out_dir.glob(f"*_rgb.{cfg.fmt}") if p.name[:20] not in records)
    mism = [{k: r[k] for k in ("stem", "video_frames", "skeleton_frames", "frames_written")}
            for r in records.values() if r["frame_mismatch"]]
    manifest = {
        "step": "crop", "source": str(ntu_root), "output": str(out_dir), "last_run": started,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "this_run": {"clips_found": clips, "cropped": done, "skipped_existing": skipped,
                     "failed": len(failures), "seconds": round(seconds, 2),
                     "clips_per_second": round(done / seconds, 3) if seconds > 0 and done else None},
        "totals": {"clips_done": len(records) + len(unrecorded),
                   "frames_written": sum(r["frames_written"] for r in records.values()),
                   "clips_with_frame_mismatch": len(mism),
                   "frames_without_skeleton": sum(r["frames_without_skeleton"] for r in records.values()),
                   "clips_with_frames_without_skeleton": sum(1 for r in records.values()
                                                             if r["frames_without_skeleton"]),
                   "boxes_clamped": sum(r["boxes_clamped"] for r in records.values()),
                   "outputs_without_record": len(unrecorded)},
        "frame_mismatches": mism,
        "outputs_without_record": unrecorded,
        "failures_this_run": failures,
        "ignored_files": ignored,
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------- CLI
def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --coord-size expects WIDTHxHEIGHT (e.g. 1920x1080), got {text!r}") from None
    return w, h


def cmd_crop(args) -> int:
    cfg = CropConfig(slack=args.slack, size=args.size, square=args.square, fmt=args.format, quality=args.quality,
                     coord_size=_parse_size(args.coord_size) if args.coord_size else None,
                     workers=args.workers, progress=not args.no_progress)
    m = crop_dataset(args.ntu_root, args.out, cfg)
    run, tot = m["this_run"], m["totals"]
    print(f"crop: {run['cropped']} cropped, {run['skipped_existing']} already done, {run['failed']} failed "
          f"({run['seconds']} s); in {args.out}: {tot['clips_done']} clips, {tot['clips_with_frame_mismatch']} "
          f"with video/skeleton frame-count mismatch, {tot['frames_without_skeleton']} frames without skeleton "
          f"(nearest box reused), {tot['boxes_clamped']} boxes clamped")
    if m["ignored_files"]:
        print(f"crop: ignored {len(m['ignored_files'])} files without an NTU name in rgb/ (see {MANIFEST})")
    for f in m["failures_this_run"][:10]:
        print(f"  failed: {f['error']}")
    print(f"manifest: {Path(args.out) / MANIFEST}" + (f"; failures: {Path(args.out) / FAILURES}"
                                                      if run["failed"] else ""))
    return 0 if run["failed"] == 0 else 1


def register_step(steps) -> None:
    p = steps.add_parser("crop", help="person-augmented crops of NTU clips (box of all joints + slack, "
                                      "black-padded, resized; keypoints transformed alike)")
    p.add_argument("--ntu-root", required=True, help="NTU RGB+D 120 folder holding rgb/ and skeletons/")
    p.add_argument("--out", required=True, help="output folder (<stem>_rgb.avi, _keypoints.npy, _boxes.npy, "
                                                "crop_manifest.json, failures.jsonl)")
    p.add_argument("--slack", type=int, default=64, help="pixels added on every side of the joints' box (64; "
                                                         "the release added 64 in total: --slack 32)")
    p.add_argument("--size", type=int, default=224, help="output frame size (224)")
    p.add_argument("--square", action="store_true", help="square the box before resizing (keeps the aspect)")
    p.add_argument("--format", default="avi", choices=FORMATS,
                   help="avi: MPEG-4 Part 2 like NTU (default); mp4: H.264")
    p.add_argument("--quality", type=int, default=None, help="avi: quantiser 1-31 (3); mp4: crf 0-51 (18)")
    p.add_argument("--coord-size", default=None,
                   help="WxH the skeleton's RGB coordinates refer to when the videos were resized (e.g. 1920x1080)")
    p.add_argument("--workers", type=int, default=1, help="processes (clips in parallel)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_crop)

"""Object detections: the JSON schema ``extract-objects`` reads, and pluggable detectors.

One video's detections (a ``.json`` file per video, or one entry of a mapping file)::

    {
      "video": "001_001_video_001.mp4",      # optional: checked against the video it is paired with
      "width": 1920, "height": 1080,         # optional: the frame size the boxes refer to (checked)
      "box_format": "xyxy",                  # optional: "xyxy" (default) or "xywh" (x, y, width, height)
      "frames": {                            # decoded frame index (0-based) -> detections in that frame
        "0":  [{"box": [x1, y1, x2, y2], "label": "cup", "score": 0.91, "track_id": 3}],
        "5":  [],                            # looked at, nothing found
        ...
      }
    }

Boxes are in pixels of the decoded frame. ``label`` (default ``"object"``), ``score`` (0..1, default 1) and
``track_id`` (int or string; when given on every detection the tracker is skipped) are optional. A frame missing
from ``frames`` was not looked at; a frame with ``[]`` was looked at and held nothing (the tracker counts a gap over
looked-at frames, so detections made at a stride link as well as per-frame ones).

A detector instead of files: any callable ``frames [N, H, W, 3] uint8 RGB -> one list of detections per frame``
(:class:`Detection` objects or dicts of the schema above). ``--detector NAME[:ARG]`` picks a registered one
(:func:`register_detector`; ``ultralytics:yolov8n.pt`` is built in when the ``ultralytics`` package is installed),
or ``--detector package.module:factory`` imports ``factory()`` from your own code.
"""
from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..video.io import video_id  # the one naming rule of feature files

BOX_FORMATS = ("xyxy", "xywh")
DETECTION_KEYS = {"box", "label", "score", "track_id"}


class DetectionError(ValueError):
    """A detection file or entry that cannot be used; the message names the file, the field and what was expected."""


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    label: str = "object"
    score: float = 1.0
    track_id: int | str | None = None


@dataclass
class VideoDetections:
    """Detections of one video: ``frames`` maps looked-at frame indices (sorted) to their detections."""

    source: str  # file (and key) for messages
    frames: dict[int, list[Detection]] = field(default_factory=dict)
    video: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def n_detections(self) -> int:
        return sum(len(d) for d in self.frames.values())


# ---------------------------------------------------------------- parsing and validation
def _number(value, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DetectionError(f"{where}: expected {what}, got {value!r}")
    return float(value)


def parse_detection(obj: Any, where: str, box_format: str = "xyxy") -> Detection:
    """One detection dict (or :class:`Detection`) → a validated :class:`Detection` with an ``xyxy`` box."""
    if isinstance(obj, Detection):
        obj = {"box": list(obj.box), "label": obj.label, "score": obj.score, "track_id": obj.track_id}
        box_format = "xyxy"
    if not isinstance(obj, dict):
        raise DetectionError(f"{where}: expected an object {{\"box\": [x1, y1, x2, y2], \"label\", \"score\"}}, "
                             f"got {type(obj).__name__}")
    unknown = set(obj) - DETECTION_KEYS
    if unknown:
        raise DetectionError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(DETECTION_KEYS)}")
    if "box" not in obj:
        raise DetectionError(f"{where}.box: missing (expected [x1, y1, x2, y2] in pixels)")
    box = obj["box"]
    want = "[x1, y1, x2, y2]" if box_format == "xyxy" else "[x, y, width, height]"
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise DetectionError(f"{where}.box: expected 4 numbers {want} in pixels, got {box!r}")
    b = [_number(v, f"{where}.box", f"4 finite numbers {want}") for v in box]
    if box_format == "xywh":
        b = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
    if not (b[2] > b[0] and b[3] > b[1]):
        raise DetectionError(f"{where}.box: expected {want} with a positive width and height, got {list(box)}")
    label = obj.get("label", "object")
    if not isinstance(label, str) or not label:
        raise DetectionError(f"{where}.label: expected a non-empty string, got {label!r}")
    score = _number(obj.get("score", 1.0), f"{where}.score", "a number in [0, 1]")
    if not 0.0 <= score <= 1.0:
        raise DetectionError(f"{where}.score: expected a number in [0, 1], got {score}")
    tid = obj.get("track_id")
    if tid is not None and (isinstance(tid, bool) or not isinstance(tid, (int, str))):
        raise DetectionError(f"{where}.track_id: expected an integer or a string, got {tid!r}")
    return Detection((b[0], b[1], b[2], b[3]), label, score, tid)


def _frame_index(key: Any, where: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        idx = key
    elif isinstance(key, str) and key.strip().isdigit():
        idx = int(key)
    else:
        raise DetectionError(f"{where}: frame key {key!r} is not a frame index (a non-negative integer)")
    if idx < 0:
        raise DetectionError(f"{where}: frame index {idx} is negative")
    return idx


def parse_video_detections(doc: Any, source: str) -> VideoDetections:
    """A per-video detection document (the schema in the module docstring) → :class:`VideoDetections`."""
    if not isinstance(doc, dict):
        raise DetectionError(f"{source}: expected a JSON object with a \"frames\" field, got {type(doc).__name__}")
    if "frames" not in doc:
        raise DetectionError(f"{source}: missing field \"frames\" (a mapping frame index -> list of detections)")
    box_format = doc.get("box_format", "xyxy")
    if box_format not in BOX_FORMATS:
        raise DetectionError(f"{source}.box_format: expected one of {list(BOX_FORMATS)}, got {box_format!r}")
    size = {}
    for key in ("width", "height"):
        v = doc.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise DetectionError(f"{source}.{key}: expected a positive integer (pixels), got {v!r}")
        size[key] = v
    video = doc.get("video")
    if video is not None and not isinstance(video, str):
        raise DetectionError(f"{source}.video: expected a string (the video's file name), got {video!r}")
    frames_doc = doc["frames"]
    if not isinstance(frames_doc, dict):
        raise DetectionError(f"{source}.frames: expected an object mapping frame index -> list of detections, "
                             f"got {type(frames_doc).__name__}")
    frames: dict[int, list[Detection]] = {}
    for key, dets in frames_doc.items():
        where = f"{source}: frames[{json.dumps(key)}]"
        idx = _frame_index(key, where)
        if idx in frames:
            raise DetectionError(f"{where}: frame {idx} is given twice")
        if not isinstance(dets, list):
            raise DetectionError(f"{where}: expected a list of detections, got {type(dets).__name__}")
        frames[idx] = [parse_detection(d, f"{where}[{j}]", box_format) for j, d in enumerate(dets)]
    out = VideoDetections(source, dict(sorted(frames.items())), video, size["width"], size["height"])
    check_track_ids(out)
    return out


def check_track_ids(dets: VideoDetections) -> None:
    """``track_id`` must be given on every detection of a video or on none, and at most once per frame."""
    with_id = sum(d.track_id is not None for ds in dets.frames.values() for d in ds)
    if 0 < with_id < dets.n_detections:
        raise DetectionError(f"{dets.source}: track_id is given on {with_id} of {dets.n_detections} detections; "
                             "give it on every detection (tracks as given) or on none (tracks are linked)")
    for idx, ds in dets.frames.items():
        ids = [d.track_id for d in ds if d.track_id is not None]
        if len(ids) != len(set(ids)):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DetectionError(f"{dets.source}: frames[\"{idx}\"]: track_id {dup!r} appears twice in one frame")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DetectionError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise DetectionError(f"{path}: not UTF-8 text ({e})") from None


class DetectionSource:
    """Where the detections of each video come from: a folder of ``<video id>.json`` files, or one JSON file that
    is either a mapping ``{video: detections}`` (keys: video id, file name or path relative to the videos root) or,
    for a single video, one detection document."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.mapping: dict[str, Any] | None = None
        self.used: set[str] = set()
        if self.path.is_dir():
            return
        if not self.path.is_file():
            raise FileNotFoundError(f"--detections {self.path}: no such file or folder")
        doc = _read_json(self.path)
        if not isinstance(doc, dict):
            raise DetectionError(f"{self.path}: expected a JSON object (one video's detections with \"frames\", or "
                                 f"a mapping video -> detections), got {type(doc).__name__}")
        self.single = "frames" in doc
        self.mapping = {"": doc} if self.single else doc

    def get(self, video: Path, root: Path | None = None) -> VideoDetections:
        vid = video_id(video)
        if self.mapping is None:
            f = self.path / f"{vid}.json"
            if not f.is_file():
                raise DetectionError(f"{f}: no detection file for video {video.name} (expected <video id>.json in "
                                     f"{self.path})")
            dets = parse_video_detections(_read_json(f), str(f))
        else:
            if self.single:
                key = ""
                src = str(self.path)
            else:
                keys = [vid, video.name, str(video)]
                if root is not None and root.is_dir():
                    keys.insert(2, video.relative_to(root).as_posix())
                key = next((k for k in keys if k in self.mapping), None)
                if key is None:
                    raise DetectionError(f"{self.path}: no entry for video {video.name} (looked up keys "
                                         f"{keys[:3]})")
                src = f"{self.path}[{json.dumps(key)}]"
            self.used.add(key)
            dets = parse_video_detections(self.mapping[key], src)
        if dets.video is not None and video_id(dets.video) != vid:
            raise DetectionError(f"{dets.source}.video: names {dets.video!r}, but it was paired with {video.name}")
        return dets

    def unused_keys(self) -> list[str]:
        """Mapping entries no video asked for (usually a naming mismatch worth reporting)."""
        if self.mapping is None or self.single:
            return []
        return sorted(set(self.mapping) - self.used)


# ---------------------------------------------------------------- pluggable detectors
class Detector(Protocol):
    """What ``--detector`` plugs in: frames ``[N, H, W, 3]`` uint8 RGB → one list of detections per frame."""

    def __call__(self, frames: np.ndarray) -> Sequence[Sequence[Detection | dict]]: ...


DetectorFactory = Callable[[str | None], Detector]  # the text after "NAME:" (or None) → a detector
_REGISTRY: dict[str, DetectorFactory] = {}


def register_detector(name: str, factory: DetectorFactory) -> None:
    """Make ``--detector NAME[:ARG]`` build ``factory(ARG)``."""
    if not name or ":" in name:
        raise ValueError(f"detector name {name!r}: must be non-empty and without ':'")
    _REGISTRY[name] = factory


def registered_detectors() -> list[str]:
    return sorted(_REGISTRY)


def make_detector(spec: str) -> Detector:
    """``NAME[:ARG]`` of a registered detector, or ``package.module:factory`` (``factory()`` is called)."""
    name, _, arg = spec.partition(":")
    if name in _REGISTRY:
        return _REGISTRY[name](arg or None)
    if "." in name and arg:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise DetectionError(f"--detector {spec}: cannot import module {name!r}: {e}") from None
        factory = getattr(module, arg, None)
        if not callable(factory):
            raise DetectionError(f"--detector {spec}: module {name!r} has no callable {arg!r}")
        return factory()
    raise DetectionError(f"--detector {spec}: unknown detector {name!r}; registered: {registered_detectors()} "
                         "(or package.module:factory for your own)")


def run_detector(detector: Detector, frames: np.ndarray, indices: Iterable[int], source: str) -> VideoDetections:
    """Run ``detector`` on ``frames`` (decoded frames ``indices``) and validate what it returns."""
    indices = [int(i) for i in indices]
    result = detector(frames)
    if not isinstance(result, (list, tuple)) or len(result) != len(indices):
        n = len(result) if isinstance(result, (list, tuple)) else type(result).__name__
        raise DetectionError(f"{source}: the detector returned {n} results for {len(indices)} frames; expected one "
                             "list of detections per frame")
    frames_out = {}
    for idx, dets in zip(indices, result):
        where = f"{source}: frames[\"{idx}\"]"
        if not isinstance(dets, (list, tuple)):
            raise DetectionError(f"{where}: the detector returned {type(dets).__name__}, expected a list")
        frames_out[idx] = [parse_detection(d, f"{where}[{j}]") for j, d in enumerate(dets)]
    out = VideoDetections(source, frames_out, width=int(frames.shape[2]), height=int(frames.shape[1]))
    check_track_ids(out)
    return out


def to_json(dets: VideoDetections, video: str | None = None) -> dict:
    """A :class:`VideoDetections` as a document of the schema (to save what a detector found)."""
    def one(d: Detection) -> dict:
        row = {"box": [round(v, 2) for v in d.box], "label": d.label, "score": round(d.score, 4)}
        if d.track_id is not None:
            row["track_id"] = d.track_id
        return row

    doc: dict[str, Any] = {"video": video or dets.video}
    if dets.width and dets.height:
        doc.update(width=dets.width, height=dets.height)
    doc["frames"] = {str(i): [one(d) for d in ds] for i, ds in dets.frames.items()}
    return doc


def ultralytics_detector(weights: str | None = None, conf: float = 0.25, batch: int = 16) -> Detector:
    """A YOLO detector from the ``ultralytics`` package (optional dependency). Named weights such as
    ``yolov8n.pt`` are downloaded by ultralytics on first use; pass a local ``.pt`` path to stay offline."""
    try:
        from ultralytics import YOLO
    except ImportError:
        raise DetectionError("--detector ultralytics: the 'ultralytics' package is not installed "
                             "(pip install ultralytics), or give --detections with detection JSON files") from None
    model = YOLO(weights or "yolov8n.pt")

    def detect(frames: np.ndarray) -> list[list[Detection]]:
        out: list[list[Detection]] = []
        for s in range(0, len(frames), batch):
            chunk = [np.ascontiguousarray(f[..., ::-1]) for f in frames[s:s + batch]]  # ultralytics wants BGR
            for r in model.predict(chunk, conf=conf, verbose=False):
                xyxy = r.boxes.xyxy.cpu().numpy()
                scores = r.boxes.conf.cpu().numpy()
                classes = r.boxes.cls.cpu().numpy().astype(int)
                out.append([Detection(tuple(map(float, b)), str(r.names[c]), float(min(max(s_, 0.0), 1.0)))
                            for b, s_, c in zip(xyxy, scores, classes) if b[2] > b[0] and b[3] > b[1]])
        return out

    return detect


register_detector("ultralytics", ultralytics_detector)

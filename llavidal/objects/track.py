"""Linking per-frame detections into object tracks, and choosing which tracks become object features.

Detections without ``track_id`` are linked frame by frame (the looked-at frames, in order): each live track predicts
its box in the new frame (constant velocity from its last two boxes, so that two objects crossing paths keep their
identities), and detections are assigned to tracks by IoU with that prediction — same label only (unless
``match_labels`` is off) and IoU >= ``iou_threshold``. The assignment is optimal (Hungarian,
``scipy.optimize.linear_sum_assignment``) when scipy is installed and greedy (best IoU first) otherwise. A track
survives ``max_gap`` looked-at frames without a detection; unmatched detections start new tracks.

Then tracks shorter than ``min_length`` detections are dropped, the rest ranked by length × mean score, and at most
``max_objects`` kept (both counted in :class:`TrackStats`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .detections import Detection, VideoDetections

MATCHERS = ("auto", "hungarian", "greedy")


@dataclass
class TrackConfig:
    iou_threshold: float = 0.3  # least IoU between a track's predicted box and a detection to link them
    max_gap: int = 2  # looked-at frames a track may miss and still be continued
    match_labels: bool = True  # link only detections of the same label
    min_length: int = 3  # tracks with fewer detections are noise (dropped, counted)
    # 8 objects x 8 frames = 64 object tokens: a fifth of the 356 video tokens, and more than the salient objects of
    # an NTU / ADL scene (the person's hands hold one or two; a room holds a few pieces of furniture).
    max_objects: int = 8
    min_score: float = 0.0  # detections below this score are ignored (counted)
    ignore_labels: tuple[str, ...] = ()  # e.g. ("person",) to keep only the objects around the actor
    matcher: str = "auto"  # auto | hungarian | greedy


@dataclass
class Track:
    track_id: int | str
    frames: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    last_pos: int = -1  # position of the last looked-at frame with a detection (for gaps)

    def add(self, frame: int, pos: int, det: Detection) -> None:
        self.frames.append(frame)
        self.boxes.append(det.box)
        self.scores.append(det.score)
        self.labels.append(det.label)
        self.last_pos = pos

    @property
    def length(self) -> int:
        return len(self.frames)

    @property
    def label(self) -> str:
        """Most common label (first seen wins ties)."""
        return Counter(self.labels).most_common(1)[0][0]

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.scores))

    @property
    def rank(self) -> float:
        return self.length * self.mean_score

    def predict(self, frame: int) -> np.ndarray:
        """Box expected at ``frame``: constant velocity from the last two boxes (the last box when only one)."""
        last = np.asarray(self.boxes[-1], dtype=np.float64)
        if len(self.boxes) < 2:
            return last
        prev = np.asarray(self.boxes[-2], dtype=np.float64)
        dt = self.frames[-1] - self.frames[-2]
        return last + (last - prev) / dt * (frame - self.frames[-1])


@dataclass
class TrackStats:
    detections: int = 0  # detections read
    low_score: int = 0  # below min_score (ignored)
    ignored_label: int = 0  # label in ignore_labels (ignored)
    tracks: int = 0  # tracks formed
    short: int = 0  # dropped: fewer than min_length detections
    over_max: int = 0  # dropped: beyond max_objects
    kept: int = 0
    matcher: str = ""


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` [A, 4] and ``b`` [B, 4] (x1, y1, x2, y2) → [A, B]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def resolve_matcher(matcher: str = "auto") -> str:
    """``hungarian`` when scipy is importable (``auto``), else ``greedy``; asking for hungarian without scipy is an
    error."""
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    if matcher == "greedy":
        return "greedy"
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        if matcher == "hungarian":
            raise ValueError("matcher 'hungarian' needs scipy (pip install scipy); use 'greedy' or 'auto'") from None
        return "greedy"
    return "hungarian"


def match(score: np.ndarray, allowed: np.ndarray, matcher: str) -> list[tuple[int, int]]:
    """Pairs (row, col) maximising the summed ``score`` over ``allowed`` pairs, each row and column used once."""
    if score.size == 0 or not allowed.any():
        return []
    if matcher == "hungarian":
        from scipy.optimize import linear_sum_assignment

        cost = np.where(allowed, -score, 1e6)  # a disallowed pair is never worth taking
        rows, cols = linear_sum_assignment(cost)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]
    pairs = sorted(zip(*np.nonzero(allowed)), key=lambda rc: (-score[rc], rc[0], rc[1]))
    used_r, used_c, out = set(), set(), []
    for r, c in pairs:
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            out.append((int(r), int(c)))
    return sorted(out)


def _filter(dets: list[Detection], cfg: TrackConfig, stats: TrackStats) -> list[Detection]:
    out = []
    for d in dets:
        stats.detections += 1
        if d.score < cfg.min_score:
            stats.low_score += 1
        elif d.label in cfg.ignore_labels:
            stats.ignored_label += 1
        else:
            out.append(d)
    return out


def link_tracks(video: VideoDetections, cfg: TrackConfig | None = None,
                stats: TrackStats | None = None) -> list[Track]:
    """Tracks of one video: as given by ``track_id``, else linked as the module docstring says. Ordered by first
    frame."""
    cfg = cfg or TrackConfig()
    stats = stats if stats is not None else TrackStats()
    matcher = resolve_matcher(cfg.matcher)
    given = any(d.track_id is not None for ds in video.frames.values() for d in ds)
    stats.matcher = "given track_id" if given else matcher
    tracks: list[Track] = []
    if given:
        by_id: dict = {}
        for pos, (frame, dets) in enumerate(video.frames.items()):
            for d in _filter(dets, cfg, stats):
                by_id.setdefault(d.track_id, Track(d.track_id)).add(frame, pos, d)
        tracks = list(by_id.values())
    else:
        live: list[Track] = []
        for pos, (frame, dets) in enumerate(video.frames.items()):
            dets = _filter(dets, cfg, stats)
            live = [t for t in live if pos - t.last_pos <= cfg.max_gap + 1]
            pairs: list[tuple[int, int]] = []
            if live and dets:
                iou = iou_matrix(np.stack([t.predict(frame) for t in live]), np.array([d.box for d in dets]))
                allowed = iou >= cfg.iou_threshold
                allowed &= iou > 0
                if cfg.match_labels:
                    allowed &= np.array([[t.labels[-1] == d.label for d in dets] for t in live])
                pairs = match(iou, allowed, matcher)
            taken = set()
            for r, c in pairs:
                live[r].add(frame, pos, dets[c])
                taken.add(c)
            for c, d in enumerate(dets):
                if c not in taken:
                    t = Track(len(tracks))
                    t.add(frame, pos, d)
                    tracks.append(t)
                    live.append(t)
    stats.tracks += len(tracks)
    return sorted(tracks, key=lambda t: (t.frames[0], str(t.track_id)))


def select_tracks(tracks: list[Track], cfg: TrackConfig | None = None,
                  stats: TrackStats | None = None) -> list[Track]:
    """Drop tracks shorter than ``min_length``, rank by length × mean score (ties: earlier first), keep the best
    ``max_objects``; returned in rank order (row 0 of the features is the most salient object)."""
    cfg = cfg or TrackConfig()
    stats = stats if stats is not None else TrackStats()
    long_enough = [t for t in tracks if t.length >= cfg.min_length]
    stats.short += len(tracks) - len(long_enough)
    ranked = sorted(long_enough, key=lambda t: (-t.rank, t.frames[0], str(t.track_id)))
    kept = ranked[:cfg.max_objects]
    stats.over_max += len(ranked) - len(kept)
    stats.kept += len(kept)
    return kept

"""NTU RGB+D skeleton folders for pose training: finding the files, the evaluation splits, and a Dataset.

Files: ``*.skeleton.npy`` (NTU's official txt2npy dict) and raw ``*.skeleton`` text, anywhere under the folder,
read by :mod:`llavidal.curation.ntu`. A stem present in both formats is read from the ``.npy`` (the other file is
counted as a duplicate, not as a skip); files whose names are not NTU names, and files that cannot be read or hold no tracked
body, are skipped, counted and reported with the reason — never silently.

Splits (NTU RGB+D 120 protocols):

- ``xsub`` cross-subject: performers in :data:`XSUB_TRAIN_SUBJECTS` (the 53 official training subjects) train,
  the other 53 test.
- ``xset`` cross-setup: even setup ids train, odd ones test.
- ``zeroshot``: the unseen classes are held out entirely: every sample of a seen class trains, every sample of an
  unseen class tests. Training logits cover the seen classes only (unseen prompts are never used in training, not
  even as negatives); test accuracy is measured against the unseen class prompts only (the ZSL protocol), and
  additionally against all class prompts (``gzsl_*`` metrics).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Official NTU RGB+D 120 cross-subject training subjects (performer ids).
XSUB_TRAIN_SUBJECTS: frozenset[int] = frozenset((
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49, 50, 52, 53, 54, 55, 56,
    57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103))
SPLITS = ("xsub", "xset", "zeroshot")
PROMPT_TEMPLATE = "a photo of a {}."
SKELETON_SUFFIXES = (".skeleton.npy", ".skeleton")


@dataclass(frozen=True)
class SkeletonItem:
    path: Path
    stem: str  # SsssCcccPpppRrrrAaaa
    setup: int
    performer: int
    action: int  # 1-based NTU action id


def skeleton_stem(path: str | os.PathLike) -> str | None:
    """``X`` of ``X.skeleton.npy`` / ``X.skeleton``; None for other files."""
    name = Path(path).name
    for suffix in SKELETON_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def find_skeleton_files(root: str | os.PathLike) -> tuple[dict[str, Path], list[dict]]:
    """``{stem: path}`` of the skeleton files under ``root`` (or ``root`` itself when it is a file), ``.npy``
    preferred, and the duplicates that were not used (``{"file", "reason"}`` records)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: skeleton folder or file not found")
    if root.is_file():
        stem = skeleton_stem(root)
        if stem is None:
            raise ValueError(f"{root}: not a skeleton file (expected a name ending in .skeleton.npy or .skeleton)")
        return {stem: root}, []
    found: dict[str, Path] = {}
    duplicates: list[dict] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and skeleton_stem(p) is not None):
        stem = skeleton_stem(path)
        if stem in found:
            keep, drop = (path, found[stem]) if path.name.endswith(".npy") else (found[stem], path)
            found[stem] = keep
            duplicates.append({"file": str(drop), "reason": f"duplicate of {keep} (the .skeleton.npy is used)"})
        else:
            found[stem] = path
    return found, duplicates


def scan_ntu(root: str | os.PathLike) -> tuple[list[SkeletonItem], list[dict], list[dict]]:
    """NTU skeleton files under ``root`` as items (sorted by stem), the skipped files (names that are not NTU
    names) and the duplicates not used, both as ``{"file", "reason"}`` records."""
    from ..curation.ntu import NTUName

    files, duplicates = find_skeleton_files(root)
    items, skipped = [], []
    for stem, path in sorted(files.items()):
        try:
            name = NTUName.parse(stem)
        except ValueError as e:
            skipped.append({"file": str(path), "reason": f"not an NTU file name: {e}"})
            continue
        items.append(SkeletonItem(path, stem, name.setup, name.performer, name.action))
    return items, skipped, duplicates


def parse_unseen(spec: str | int | list | None, actions: list[int], seed: int = 0) -> list[int]:
    """The unseen (held-out) action ids of a zero-shot split.

    ``spec`` is a count N (N classes drawn with ``seed`` from the actions that have samples in the data, so that
    every unseen class is tested) or a comma-separated list / list of 1-based action ids (``"3,7,12"``, ``A003``
    accepted).
    """
    from ..curation.ntu import NTU_ACTIONS

    if spec is None or spec == "":
        raise ValueError("--split zeroshot needs --unseen-classes (a count N, or a list of action ids like 3,7,12)")
    if isinstance(spec, str) and "," not in spec and spec.strip().isdigit():
        spec = int(spec)
    if isinstance(spec, int):
        pool = sorted(set(actions))
        if not 1 <= spec < len(pool):
            raise ValueError(f"--unseen-classes {spec}: must be between 1 and {len(pool) - 1} (the data holds "
                             f"{len(pool)} classes; at least one must stay seen)")
        rng = np.random.default_rng(seed)
        return sorted(int(a) for a in rng.choice(pool, size=spec, replace=False))
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for p in parts:
        s = str(p).strip().upper().removeprefix("A")
        if not s.isdigit() or not 1 <= int(s) <= len(NTU_ACTIONS):
            raise ValueError(f"--unseen-classes: {p!r} is not an action id 1..{len(NTU_ACTIONS)}")
        out.append(int(s))
    if len(set(out)) >= len(set(actions) | set(out)):
        raise ValueError("--unseen-classes holds every class of the data: nothing is left to train on")
    return sorted(set(out))


@dataclass
class Split:
    """Which items train and test, and which classes each side's logits range over (1-based action ids)."""

    name: str
    train: list[SkeletonItem]
    test: list[SkeletonItem]
    train_classes: list[int]
    test_classes: list[int]
    unseen: list[int] = field(default_factory=list)

    def info(self) -> dict:
        return {"split": self.name, "train_samples": len(self.train), "test_samples": len(self.test),
                "train_classes": len(self.train_classes), "test_classes": len(self.test_classes),
                "unseen_classes": self.unseen,
                "classes_in_train_data": sorted({i.action for i in self.train}),
                "classes_in_test_data": sorted({i.action for i in self.test})}


def make_split(items: list[SkeletonItem], split: str, num_classes: int = 120, unseen=None, seed: int = 0) -> Split:
    """Apply an NTU protocol (module docstring). Supervised splits score all ``num_classes`` class prompts."""
    every = list(range(1, num_classes + 1))
    if split == "xsub":
        train = [i for i in items if i.performer in XSUB_TRAIN_SUBJECTS]
        test = [i for i in items if i.performer not in XSUB_TRAIN_SUBJECTS]
        return Split(split, train, test, every, every)
    if split == "xset":
        train = [i for i in items if i.setup % 2 == 0]
        test = [i for i in items if i.setup % 2 == 1]
        return Split(split, train, test, every, every)
    if split == "zeroshot":
        held = parse_unseen(unseen, [i.action for i in items], seed)
        if max(held) > num_classes:
            raise ValueError(f"--unseen-classes {held}: ids above {num_classes}")
        train = [i for i in items if i.action not in held]
        test = [i for i in items if i.action in held]
        return Split(split, train, test, [a for a in every if a not in held], held, held)
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def load_clip_array(path: str | os.PathLike, max_bodies: int = 2) -> np.ndarray:
    """float32 ``[3, T, 25, M]`` of one skeleton file; raises ValueError (naming the file) when it holds no tracked
    body or non-finite coordinates."""
    from ..curation.ntu import load_skeleton, skeleton_array

    x = skeleton_array(load_skeleton(path), max_bodies=max_bodies)
    if x.shape[1] == 0 or not np.any(x != 0):
        raise ValueError(f"{path}: no tracked body in any frame (NTU lists such samples as missing skeletons)")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: skeleton holds NaN/inf coordinates")
    return x


def concat_clips(arrays: list[np.ndarray]) -> np.ndarray:
    """Join ``[3, T_i, 25, M]`` sequences in time (a stitched ADL-X video = its NTU clips in order)."""
    return np.concatenate(arrays, axis=1)


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation of ``[3, T, 25, M]``: a random contiguous crop of 60-100 % of the frames, a rotation
    about the vertical axis of up to ±30°, a scale of 0.9-1.1. Untracked (all-zero) rows stay zero."""
    t = x.shape[1]
    keep = max(1, round(t * rng.uniform(0.6, 1.0)))
    start = int(rng.integers(0, t - keep + 1))
    x = x[:, start:start + keep]
    a = rng.uniform(-np.pi / 6, np.pi / 6)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], dtype=np.float32)
    tracked = np.any(x != 0, axis=(0, 2), keepdims=True)  # [1, T, 1, M]
    x = np.einsum("ij,jtvm->itvm", rot * np.float32(rng.uniform(0.9, 1.1)), x)
    return (x * tracked).astype(np.float32)


class SkeletonDataset:
    """Items → ``{"index", "x": float32 [3, frames, 25, M] or None, "label", "error"}``.

    A file that cannot be used comes back with ``x=None`` and the reason in ``error`` (never raised, so that one
    bad file does not stop a DataLoader worker); :func:`collate` drops it and passes the error on to be counted.
    Augmentation draws from a generator seeded by (seed, epoch, index): the same epoch gives the same samples in
    any number of workers, and a resumed run continues exactly.
    """

    def __init__(self, items: list[SkeletonItem], frames: int, max_bodies: int = 2, augment: bool = False,
                 seed: int = 0):
        self.items, self.frames, self.max_bodies = items, frames, max_bodies
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from .modeling import resample_frames

        item = self.items[i]
        try:
            x = load_clip_array(item.path, self.max_bodies)
            if self.augment:
                x = augment(x, np.random.default_rng([self.seed, self.epoch, i]))
            x = resample_frames(x, self.frames)
            return {"index": i, "x": x, "label": item.action, "error": None}
        except (OSError, ValueError) as e:  # SkeletonError and FeatureError are ValueErrors
            return {"index": i, "x": None, "label": item.action, "error": f"{type(e).__name__}: {e}"}


def collate(batch: list[dict]) -> dict:
    """Stack the readable samples; pass on the errors of the others as ``(index, message)``."""
    import torch

    good = [b for b in batch if b["x"] is not None]
    return {
        "x": torch.from_numpy(np.stack([b["x"] for b in good])) if good else None,
        "label": torch.tensor([b["label"] for b in good], dtype=torch.long),
        "index": [b["index"] for b in good],
        "errors": [(b["index"], b["error"]) for b in batch if b["x"] is None],
    }

"""A synthetic ADL world in the real ADL-X formats, where each modality carries information the others lack.

Every action is a combination of three attributes, and each attribute is visible in exactly one modality:

* the **room** (kitchen / living room) is appearance: a direction in the video features (CLIP-like spatial tokens);
* the **motion** (sitting down / standing up) is movement: a direction in the pose features;
* the **object** (cup / book) is what is handled: a direction in the object features, among distractor objects.

So "sits down and drinks in the kitchen" and "stands up and drinks in the kitchen" are told apart only by motion,
"... drinks ..." vs "... reads ..." only by objects, kitchen vs living room only by appearance. A model that sees
one modality can rule out one of the three distractors of a multiple-choice item (expected accuracy 1/3 with four
options, chance 1/4); a model that fuses all three can answer every item.

Files follow the real formats: a training JSON with the original placeholders (``<video>``, ``<object>``,
``<human_pose>``), one pickle per video and modality (video ``[356, 1024]`` float16, pose ``[256, 216]``, objects
``[n, 8, 512]``), and held-out multiple-choice items in the Smarthome-AR benchmark format.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import save_feature

ATTRIBUTES = ("room", "motion", "object")  # seen in: video, pose, objects
ROOMS = ("kitchen", "living room")
MOTIONS = ("sits down", "stands up")
OBJECTS = ("cup", "book")
DISTRACTORS = ("plate", "phone", "towel")  # objects seen in every action, telling nothing
_VERB = {"cup": "drinks from a cup", "book": "reads a book"}


def action_name(room: int, motion: int, obj: int) -> str:
    return f"The person {MOTIONS[motion]} and {_VERB[OBJECTS[obj]]} in the {ROOMS[room]}."


ACTIONS = [(r, m, o) for r, m, o in itertools.product(range(2), range(2), range(2))]

QUESTIONS = (
    "What is the person doing in this video?",
    "Describe the activity in the video.",
    "Which activity of daily living is shown?",
)


@dataclass(frozen=True)
class WorldSpec:
    video_rows: int = 356  # 100 temporal + 256 spatial, as the published files
    pose_rows: int = 256
    video_dim: int = 1024
    pose_dim: int = 216
    object_dim: int = 512
    object_frames: int = 8
    signal: float = 1.0  # length of a prototype direction per row, in units of sqrt(dim)
    noise: float = 1.0  # per-element noise (std)
    row_norm: float = 1.0  # rows are scaled to about this norm in every modality, so that no modality's projected
    # rows start out much larger than the LLM's word embeddings


class World:
    """Prototype directions of the attributes, drawn once from the seed."""

    def __init__(self, seed: int = 0, spec: WorldSpec = WorldSpec()):
        self.spec = spec
        g = np.random.default_rng(seed)

        def unit(n, d):
            v = g.standard_normal((n, d))
            return v / np.linalg.norm(v, axis=1, keepdims=True) * np.sqrt(d)

        self.room = unit(2, spec.video_dim)
        self.motion = unit(2, spec.pose_dim)
        self.objects = unit(2 + 3, spec.object_dim)  # cup, book, and three distractors (plate, phone, towel)

    def sample(self, action: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
        s = self.spec
        room, motion, obj = action
        # video: temporal rows carry noise only; spatial rows (what CLIP sees of the scene) carry the room
        video = rng.standard_normal((s.video_rows, s.video_dim)) * s.noise
        video[-min(256, s.video_rows):] += s.signal * self.room[room]
        pose = rng.standard_normal((s.pose_rows, s.pose_dim)) * s.noise + s.signal * self.motion[motion]
        n_distractors = int(rng.integers(0, 3))
        ids = [obj] + list(rng.choice(np.arange(2, 5), size=n_distractors, replace=False))
        rng.shuffle(ids)
        objects = np.stack([
            rng.standard_normal((s.object_frames, s.object_dim)) * s.noise + s.signal * self.objects[i] for i in ids
        ])
        k = s.row_norm / np.sqrt((s.signal ** 2 + s.noise ** 2))  # a row of dim d has norm ~ sqrt(d (signal²+noise²))
        return {"video": (k / np.sqrt(s.video_dim) * video).astype(np.float16),
                "pose": (k / np.sqrt(s.pose_dim) * pose).astype(np.float32),
                "object": (k / np.sqrt(s.object_dim) * objects).astype(np.float32)}


def _names(vid: str) -> dict[str, str]:
    performer = vid.split("_")[0]
    return {"video": f"{vid}.pkl", "object": f"{performer}_{vid}_object.pkl", "pose": f"{performer}_{vid}_pose.pickle"}


def make_dataset(out: str | Path, n_train: int = 400, n_test: int = 96, seed: int = 0,
                 spec: WorldSpec = WorldSpec()) -> dict:
    """Write ``out/{video,object,pose}_features/``, ``out/train.json`` and ``out/test_mcq.json``
    (Smarthome-AR format). Deterministic for a seed."""
    out = Path(out)
    world = World(seed, spec)
    rng = np.random.default_rng(seed + 1)
    folders = {m: out / f"{m}_features" for m in ("video", "object", "pose")}
    records, tests = [], {}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            action = ACTIONS[i % len(ACTIONS)]
            vid = f"{(i % 9) + 1:03d}_video_{i + (0 if split == 'train' else 100000):06d}"
            feats = world.sample(action, rng)
            names = _names(vid)
            for m, arr in feats.items():
                save_feature(arr, folders[m] / names[m])
            if split == "train":
                q = QUESTIONS[i % len(QUESTIONS)]
                # placeholders after the question on even QA indices, before it on odd ones (as ADL-X)
                human = f"{q}\n<video><object><human_pose>" if i % 2 == 0 else f"<video><object><human_pose>\n{q}"
                records.append({"id": vid, **names, "conversations": [
                    {"from": "human", "value": human}, {"from": "gpt", "value": action_name(*action)}]})
            else:
                choices = _mcq_choices(action, rng)
                truth = action_name(*action)
                tests[str(len(tests))] = {
                    "video_id": f"/data/smarthome/{vid}.mp4",
                    "question": "What is the person doing in this video?",
                    "choices": {str(k + 1): c for k, c in enumerate(choices)},
                    "ground_truth": truth,
                    **{f"{m}_file": names[m] for m in names},
                }
    (out / "train.json").write_text(json.dumps(records, indent=1))
    (out / "test_mcq.json").write_text(json.dumps(tests, indent=1))
    return {"train": out / "train.json", "test": out / "test_mcq.json", **{f"{m}_folder": f for m, f in folders.items()}}


def _mcq_choices(action: tuple[int, int, int], rng: np.random.Generator) -> list[str]:
    """The truth and the three actions that differ from it in exactly one attribute, shuffled."""
    options = [action] + [tuple(v ^ (k == j) for k, v in enumerate(action)) for j in range(3)]
    order = rng.permutation(4)
    return [action_name(*options[i]) for i in order]


def pretraining_text(n: int = 2000, seed: int = 0) -> list[dict]:
    """Text-only conversations that teach a tiny LLM the language of this world: attribute words in, action
    sentence out. This stands in for the language knowledge a real LLaMA brings; the multimodal stages then
    only have to align the features with it (as LLaVA-style projector training does)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        r, m, o = ACTIONS[int(rng.integers(len(ACTIONS)))]
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        distractors = list(rng.choice(DISTRACTORS, size=int(rng.integers(0, 3)), replace=False))
        words = [ROOMS[r], " ".join([OBJECTS[o], *distractors]), MOTIONS[m]]
        # each attribute is named with probability 1/2 (so the LLM also learns to stay undecided about an
        # attribute it is not told, as a single-modality model must) and in any order: the words themselves
        # say which attribute they are, as the features of each modality will
        keep = [w for w in words if rng.random() < 0.5]
        rng.shuffle(keep)
        records.append({"id": f"text_{i:05d}", "conversations": [
            {"from": "human", "value": (f"{q}\n{' '.join(keep)}" if i % 2 == 0 else f"{' '.join(keep)}\n{q}").strip()},
            {"from": "gpt", "value": action_name(r, m, o)}]})
    return records


__all__ = ["ACTIONS", "ATTRIBUTES", "World", "WorldSpec", "action_name", "make_dataset", "pretraining_text"]

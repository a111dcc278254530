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


def _directions(g: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random directions of norm sqrt(dim) (unit variance per coordinate), ``[n, dim]``."""
    v = g.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=-1, keepdims=True) * np.sqrt(dim)


class World:
    """Prototype directions of the attributes, drawn once from the seed."""

    def __init__(self, seed: int = 0, spec: WorldSpec = WorldSpec()):
        self.spec = spec
        g = np.random.default_rng(seed)
        self.room = _directions(g, 2, spec.video_dim)
        self.motion = _directions(g, 2, spec.pose_dim)
        self.objects = _directions(g, 2 + 3, spec.object_dim)  # cup, book, and three distractors (plate, phone, towel)

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
                # placeholders after the question or before it (both occur in ADL-X), switching every len(ACTIONS)
                # records so that every action is seen both ways (with `i % 2` the side would name the object: it is
                # the last coordinate of ACTIONS[i % 8])
                human = (f"{q}\n<video><object><human_pose>" if (i // len(ACTIONS)) % 2 == 0
                         else f"<video><object><human_pose>\n{q}")
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
    return {"train": out / "train.json", "test": out / "test_mcq.json",
            **{f"{m}_folder": f for m, f in folders.items()}}


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


# ==================================================================== a world for pooled video features
# The room is the appearance of every patch of every frame (weak on each patch, strong over many). What the person
# handles (a cup or a book) shows on one patch of the 4 x 4, at a place and a time that differ between videos, in
# half of the 8 frames: a detail small in space. Pooling averages each bin: a bin of k patches holding the detail on
# one of them keeps 1/k of its strength while averaging the noise down by sqrt(k) only, so the coarser the grid,
# the weaker the detail against the noise (one token for the whole clip: 4 of 128 patches). The spatio-temporal
# rows keep it in their spatial rows (a mean over time, where the object is seen in half the frames). The world is
# small (128 tokens per clip) so that a run on every token takes about a minute on a CPU. ``background`` (off by
# default) adds an appearance of the video's own, the same on all its patches, which pooling cannot average away.
def scene_action_name(room: int, obj: int) -> str:
    return f"The person {_VERB[OBJECTS[obj]]} in the {ROOMS[room]}."


SCENE_ACTIONS = [(r, o) for r in range(2) for o in range(2)]


@dataclass(frozen=True)
class SceneSpec:
    frames: int = 8  # frames kept per video
    side: int = 4  # patches per frame = side x side (CLIP ViT-L/14 at 224 px: 16 x 16)
    dim: int = 64  # feature width (= the tiny base's mm_hidden_size)
    seen: int = 4  # frames the object is seen in (consecutive)
    room: float = 0.5  # strength of the room, on every patch
    object: float = 8.0  # strength of the object, on its patch in the frames it is seen in
    noise: float = 1.0  # per-element noise (std)
    background: float = 0.0  # per-element std of the video's own appearance, the same on all its patches


class SceneWorld:
    """Per-frame patch tokens ``[frames, side², dim]`` (see above); the attribute directions are drawn once from the
    seed."""

    def __init__(self, seed: int = 0, spec: SceneSpec = SceneSpec()):
        self.spec = spec
        dirs = np.random.default_rng(seed).standard_normal((4, spec.dim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self.room, self.object = dirs[:2], dirs[2:]

    def tokens(self, action: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        s = self.spec
        room, obj = action
        x = rng.standard_normal((s.frames, s.side, s.side, s.dim)) * s.noise + s.room * self.room[room]
        start = int(rng.integers(0, s.frames - s.seen + 1))
        row, col = (int(v) for v in rng.integers(0, s.side, size=2))
        x[start:start + s.seen, row, col] += s.object * self.object[obj]
        if s.background:
            x += rng.standard_normal(s.dim) * s.background
        return (x / np.sqrt(s.dim)).reshape(s.frames, s.side * s.side, s.dim).astype(np.float16)


def make_scene_dataset(out: str | Path, n_train: int = 256, n_test: int = 64, seed: int = 0,
                       spec: SceneSpec = SceneSpec()) -> dict:
    """Write ``out/frames/`` (per-frame tokens, what ``extract-video --keep-frames`` keeps), ``out/rows/`` (the
    spatio-temporal rows of the same tokens, ``[frames + side², dim]``, what ``extract-video`` writes),
    ``out/train.json`` and ``out/test_mcq.json`` (Smarthome-AR format; the four options are rooms x objects)."""
    from .video.clip import pool_spatio_temporal

    out = Path(out)
    world = SceneWorld(seed, spec)
    rng = np.random.default_rng(seed + 1)
    records, tests = [], {}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            action = SCENE_ACTIONS[i % len(SCENE_ACTIONS)]
            vid = f"scene_{split}_{i:05d}"
            frames = world.tokens(action, rng)
            save_feature(frames, out / "frames" / f"{vid}.pkl")
            rows = pool_spatio_temporal(frames, spec.frames).numpy().astype(np.float16)
            save_feature(rows, out / "rows" / f"{vid}.pkl")
            truth = scene_action_name(*action)
            if split == "train":
                q = QUESTIONS[i % len(QUESTIONS)]
                # the placeholder's side changes every len(SCENE_ACTIONS) clips, so it tells nothing of the action
                # (with `i % 2` it would name the object: the action is SCENE_ACTIONS[i % 4])
                human = f"{q}\n<video>" if (i // len(SCENE_ACTIONS)) % 2 == 0 else f"<video>\n{q}"
                records.append({"id": vid, "video": f"{vid}.pkl", "conversations": [
                    {"from": "human", "value": human}, {"from": "gpt", "value": truth}]})
            else:
                order = rng.permutation(len(SCENE_ACTIONS))
                tests[str(len(tests))] = {
                    "video_id": f"/data/scenes/{vid}.mp4", "question": "What is the person doing in this video?",
                    "choices": {str(k + 1): scene_action_name(*SCENE_ACTIONS[j]) for k, j in enumerate(order)},
                    "ground_truth": truth, "video_file": f"{vid}.pkl"}
    (out / "train.json").write_text(json.dumps(records, indent=1))
    (out / "test_mcq.json").write_text(json.dumps(tests, indent=1))
    return {"train": out / "train.json", "test": out / "test_mcq.json", "frames": out / "frames", "rows": out / "rows"}


def scene_pretraining_text(n: int = 1200, seed: int = 0) -> list[dict]:
    """Text-only conversations that teach a tiny LLM this world's language: the room and the object words, each
    named with probability 3/4, in either order."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        room, obj = SCENE_ACTIONS[int(rng.integers(len(SCENE_ACTIONS)))]
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        words = [w for w, keep in ((ROOMS[room], rng.random() < 0.75), (OBJECTS[obj], rng.random() < 0.75)) if keep]
        if len(words) == 2 and rng.random() < 0.5:
            words.reverse()
        text = " ".join(words)
        records.append({"id": f"text_{i:05d}", "conversations": [
            {"from": "human", "value": (f"{q}\n{text}" if i % 2 == 0 else f"{text}\n{q}").strip()},
            {"from": "gpt", "value": scene_action_name(room, obj)}]})
    return records


# ==================================================================== NTU-style clips for the pose encoder
# Classes come in pairs that share their big movement; the two classes of a pair differ by a small extra movement of
# the other arm (hard to see in noisy skeletons) and by the object handled, which the RGB video shows plainly.
# Optionally (``label_noise``, 0 by default) a fraction of the training clips is filed under a wrong action
# (annotation errors, as weakly labelled ADL data has); test clips are always filed right.
# Rest pose (metres; x right, y up), NTU's joint order.
_REST = np.array([
    (0.0, 0.0), (0.0, 0.3), (0.0, 0.58), (0.0, 0.72), (-0.18, 0.48), (-0.25, 0.22), (-0.28, 0.0), (-0.29, -0.06),
    (0.18, 0.48), (0.25, 0.22), (0.28, 0.0), (0.29, -0.06), (-0.1, -0.05), (-0.12, -0.45), (-0.12, -0.85),
    (-0.12, -0.9), (0.1, -0.05), (0.12, -0.45), (0.12, -0.85), (0.12, -0.9), (0.0, 0.5), (-0.3, -0.12),
    (-0.26, -0.08), (0.3, -0.12), (0.26, -0.08)])
_LIMBS = {"left arm": (5, 6, 7, 21, 22), "right arm": (9, 10, 11, 23, 24), "legs": (13, 14, 15, 17, 18, 19),
          "torso": (1, 2, 3, 20)}


@dataclass(frozen=True)
class SkeletonWorldSpec:
    actions: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)  # NTU action ids; (1, 2), (3, 4) ... share a movement
    train_performers: tuple[int, ...] = (1, 2, 4, 5)  # official cross-subject training subjects
    test_performers: tuple[int, ...] = (3, 6, 7, 10)
    replications: int = 2
    frames: int = 32
    subtle: float = 0.15  # amplitude (m) of the extra movement that tells the two classes of a pair apart
    jitter: float = 0.04  # per-joint noise (m) of the skeleton tracking
    size: int = 32  # video frames are size x size
    label_noise: float = 0.0  # fraction of training clips filed under another action of the world


def _movement(action_index: int, spec: SkeletonWorldSpec, rng: np.random.Generator) -> np.ndarray:
    """Displacement ``[frames, 25, 3]`` of one clip of the class at ``action_index`` (its pair's big movement, the
    class's small one, a random phase and speed per clip)."""
    t = np.linspace(0.0, 1.0, spec.frames)[:, None] * rng.uniform(0.8, 1.2) + rng.uniform(0, 1)
    out = np.zeros((spec.frames, 25, 3))
    pair = np.random.default_rng(7000 + action_index // 2)  # the shared movement of the pair
    for limb in pair.choice(list(_LIMBS), size=2, replace=False):
        amp, freq = pair.uniform(-0.3, 0.3, size=3), pair.uniform(0.5, 2.5)
        out[:, list(_LIMBS[limb])] += np.sin(2 * np.pi * freq * t)[:, :, None] * amp
    own = np.random.default_rng(9000 + action_index)  # the small movement of the class itself
    direction = own.standard_normal(3)
    limb = "left arm" if action_index % 2 else "right arm"
    out[:, list(_LIMBS[limb])] += (spec.subtle * np.sin(2 * np.pi * own.uniform(3, 5) * t))[:, :, None] * (
        direction / np.linalg.norm(direction))
    return out


def _performer_body(seed: int, performer: int, x_range: float = 0.3) -> tuple[float, np.ndarray]:
    """A performer's body scale and position (the same in every clip of theirs)."""
    body = np.random.default_rng([seed, performer])
    return body.uniform(0.85, 1.15), np.array([body.uniform(-x_range, x_range), body.uniform(-0.1, 0.1), 0.0])


def _rest_pose(scale: float, offset: np.ndarray) -> np.ndarray:  # [25, 3]
    return np.concatenate([_REST, np.zeros((25, 1))], axis=1) * scale + offset


def _image_xy(xyz: np.ndarray, size: int, margin: int = 1) -> np.ndarray:
    """Pixel column and row ``[..., 2]`` of camera-space joints (x right, y up; the frame spans -1..1 m)."""
    return np.clip(((xyz[..., :2] * [1, -1] + [1.0, 1.0]) / 2 * size).astype(int), 0, size - margin)


def _write_clip(out: Path, stem: str, xyz: np.ndarray, frames: np.ndarray | None, **video) -> None:
    """One NTU-layout clip: ``skeletons/{stem}.skeleton.npy`` (one body, 3 m from the camera) and, when ``frames`` is
    given, ``rgb/{stem}_rgb.avi``."""
    from .curation.ntu import write_skeleton_npy
    from .video.io import write_video

    xyz = xyz + np.array([0.0, 0.0, 3.0])
    write_skeleton_npy({"file_name": stem, "nbodys": [1] * len(xyz), "njoints": 25, "skel_body0": xyz},
                       out / "skeletons" / f"{stem}.skeleton.npy")
    if frames is not None:
        write_video(out / "rgb" / f"{stem}_rgb.avi", frames.astype(np.uint8), fps=30, **video)


def make_skeleton_world(out: str | Path, seed: int = 0, spec: SkeletonWorldSpec = SkeletonWorldSpec()) -> dict:
    """Write NTU-layout clips: ``out/skeletons/{stem}.skeleton.npy`` (NTU's txt2npy dict, one body) and
    ``out/rgb/{stem}_rgb.avi`` (a background of the class's object colour, with noise, and the right hand as a white
    dot). Performers change body size and position; the seed changes the noise. A training clip filed under a wrong
    action (``label_noise``) gets a replication number of 100 or more, one per clip, so its name is unique."""
    if spec.replications * len(spec.actions) > 899:
        raise ValueError("SkeletonWorldSpec: replications x actions must be <= 899 (NTU names have 3-digit "
                         "replication numbers; renamed clips use 100 + their place)")
    from .curation.ntu import NTUName

    out = Path(out)
    palette = np.random.default_rng(1234).integers(30, 226, size=(len(spec.actions), 3))
    stems, mislabelled = [], 0
    for performer in (*spec.train_performers, *spec.test_performers):
        rest = _rest_pose(*_performer_body(seed, performer))
        for r in range(1, spec.replications + 1):
            for k, action in enumerate(spec.actions):
                rng = np.random.default_rng([seed, performer, r, action])
                name = NTUName(1, 1, performer, r, action)
                if performer in spec.train_performers and rng.random() < spec.label_noise:  # filed wrongly
                    wrong = [a for a in spec.actions if a != action]
                    # a replication number of its own (100 + its place), so no two renamed clips share a name
                    name = NTUName(1, 1, performer, 100 + (r - 1) * len(spec.actions) + k + 1,
                                   wrong[int(rng.integers(len(wrong)))])
                    mislabelled += 1
                xyz = rest + _movement(k, spec, rng) + rng.normal(0, spec.jitter, size=(spec.frames, 25, 3))
                frames = np.clip(palette[k] + rng.normal(0, 20, size=(spec.frames, spec.size, spec.size, 3)), 0, 255)
                hand = _image_xy(xyz[:, 11], spec.size)
                frames[np.arange(spec.frames), hand[:, 1], hand[:, 0]] = 255
                _write_clip(out, name.stem, xyz, frames)
                stems.append(name.stem)
    return {"skeletons": out / "skeletons", "rgb": out / "rgb", "clips": len(stems), "mislabelled": mislabelled}


# ==================================================================== postures: zero-shot worlds
# Each class holds each hand at one of a few places (a small oscillation on top). Two layouts:
# * ``combinations``: class = (left place, right place); the novel classes (held out of pose training) are the
#   diagonal (place p, place p), so every place of each hand is seen in training, in other combinations.
# * ``coarse``: the base classes name the left hand's place only — in their clips the right hand is at one of two
#   places, p + 1 or p + 3, drawn per clip; the novel classes name both hands, (p, p) and (p, p + 2), so telling
#   them apart needs the right hand, which the base labels never needed. Every place of each hand is seen in
#   training.
# The RGB video draws both arms (elbow, wrist, hand) as dots, so what it shows is the skeleton's own information; a
# CLIP pre-trained on other performers' clips of every class (:func:`llavidal.peers.pretrain_world_clip`) plays the
# part of the web-scale CLIP that knows the novel classes before the pose encoder sees any of them.
POSTURE_LAYOUTS = ("combinations", "coarse")


@dataclass(frozen=True)
class PostureWorldSpec:
    places: int = 4  # places per hand (even for ``coarse``)
    layout: str = "combinations"  # or "coarse" (see above)
    performers: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)  # the pose encoder's clips (base: training, novel: test)
    pretrain_performers: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 17, 18)  # the world CLIP's clips, every class
    replications: int = 2
    frames: int = 32
    reach: float = 0.35  # how far (m) the hand is held from its rest place
    jitter: float = 0.04  # per-joint noise (m) of the skeleton tracking
    size: int = 32  # video frames are size x size
    noise: float = 4.0  # pixel noise of the background

    def __post_init__(self):
        if self.layout not in POSTURE_LAYOUTS:
            raise ValueError(f"PostureWorldSpec.layout {self.layout!r}: expected one of {', '.join(POSTURE_LAYOUTS)}")
        if self.layout == "coarse" and (self.places % 2 or self.places < 4):
            raise ValueError(f"PostureWorldSpec.places {self.places}: the coarse layout needs an even number, at least "
                             "4 (with 2, p + 2 is p again and the novel classes would repeat one another)")

    @property
    def holds(self) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """NTU action id -> (left hand's places, right hand's places): one place, or several, one drawn per clip."""
        n = self.places
        if self.layout == "combinations":
            return {1 + i: ((i // n,), (i % n,)) for i in range(n ** 2)}
        base = {1 + p: ((p,), ((p + 1) % n, (p + 3) % n)) for p in range(n)}
        novel = [((p,), ((p + k) % n,)) for p in range(n) for k in (0, 2)]
        return base | {1 + n + i: hold for i, hold in enumerate(novel)}

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(self.holds)

    @property
    def novel(self) -> tuple[int, ...]:
        """The held-out classes: both hands at the same place (combinations), both hands named (coarse)."""
        if self.layout == "combinations":
            return tuple(1 + p * self.places + p for p in range(self.places))
        return self.classes[self.places:]

    def angles(self) -> np.ndarray:
        """The places of a hand: angles (radians) in the image plane, mirrored for the left hand."""
        return np.linspace(-np.pi / 3, 2 * np.pi / 3, self.places)


def hand_caption(side: str, place: int, spec: PostureWorldSpec) -> str:
    """What a caption says of one hand: its place, as an angle."""
    return f"the {side} hand is held at {round(float(np.degrees(spec.angles()[place])))} degrees."


_ARM_DOTS = ((5, (160, 60, 60)), (6, (200, 60, 60)), (7, (255, 60, 60)),  # left elbow, wrist, hand: red
             (9, (60, 160, 60)), (10, (60, 200, 60)), (11, (60, 255, 60)))  # right: green


def _posture(left: int, right: int, spec: PostureWorldSpec, rng: np.random.Generator) -> np.ndarray:
    """Displacement ``[frames, 25, 3]``: each hand held at its place (an angle in the image plane; the elbow moves
    less than the hand) with a small oscillation of random phase and speed."""
    t = np.linspace(0.0, 1.0, spec.frames) * rng.uniform(0.8, 1.2) + rng.uniform(0, 1)
    reach = spec.reach + 0.05 * np.sin(2 * np.pi * 1.5 * t)  # [frames]
    angles = spec.angles()
    out = np.zeros((spec.frames, 25, 3))
    for side, limb, place in ((-1, "left arm", left), (1, "right arm", right)):
        way = np.array([side * np.cos(angles[place]), np.sin(angles[place]), 0.0])
        for joint, share in zip(_LIMBS[limb], (0.3, 0.7, 1.0, 1.0, 1.0)):
            out[:, joint] += (reach * share)[:, None] * way
    return out


def make_posture_world(out: str | Path, seed: int = 0, spec: PostureWorldSpec = PostureWorldSpec()) -> dict:
    """Write the posture world: ``out/skeletons`` + ``out/rgb`` (the pose encoder's clips, NTU layout, one body) and
    ``out/pretrain/{skeletons,rgb}`` (the world CLIP's pre-training clips: other performers, every class; the CLIP
    reads their videos). Each folder's ``captions.json`` says where each clip holds each hand (``{stem: [left
    hand, right hand]}``, :func:`hand_caption`), the descriptions a CLIP may be pre-trained on besides the class
    prompts. Videos are lossless (FFV1): at 32 x 32 pixels MPEG-4 smears the dots into blocks. Same seed, same
    files."""
    from .curation.ntu import NTUName
    from .io_utils import atomic_write_json

    out = Path(out)
    video = {"codec": "ffv1", "pix_fmt": "yuv444p"}
    counts = {}
    for folder, performers in ((out, spec.performers), (out / "pretrain", spec.pretrain_performers)):
        captions = {}
        for performer in performers:
            rest = _rest_pose(*_performer_body(seed, performer, x_range=0.2))
            for r in range(1, spec.replications + 1):
                for action, choices in spec.holds.items():
                    rng = np.random.default_rng([seed, performer, r, action])
                    # a drawn place has a stream of its own: the clip's other draws stay those of a fixed place
                    pick = np.random.default_rng([seed, performer, r, action, 1])
                    left, right = (c[0] if len(c) == 1 else int(pick.choice(c)) for c in choices)
                    xyz = rest + _posture(left, right, spec, rng) + rng.normal(0, spec.jitter, (spec.frames, 25, 3))
                    frames = np.clip(40 + rng.normal(0, spec.noise, (spec.frames, spec.size, spec.size, 3)), 0, 255)
                    for joint, colour in _ARM_DOTS:  # 3 x 3 dots
                        xy = _image_xy(xyz[:, joint], spec.size, margin=3)
                        for dy, dx in itertools.product(range(3), range(3)):
                            frames[np.arange(spec.frames), xy[:, 1] + dy, xy[:, 0] + dx] = colour
                    stem = NTUName(1, 1, performer, r, action).stem
                    _write_clip(folder, stem, xyz, frames, **video)
                    captions[stem] = [hand_caption("left", left, spec), hand_caption("right", right, spec)]
        atomic_write_json(folder / "captions.json", captions)
        counts[folder] = len(captions)
    return {"skeletons": out / "skeletons", "rgb": out / "rgb", "pretrain_rgb": out / "pretrain" / "rgb",
            "pretrain_captions": out / "pretrain" / "captions.json", "clips": counts[out],
            "pretrain_clips": counts[out / "pretrain"], "classes": spec.classes,
            "novel": spec.novel}


# ==================================================================== long videos: an event early or late
# Each long video holds one brief event, early or late. An early event is placed on a frame of the default sampler
# (100 frames spread uniformly); a late one falls between two of its frames, so that sampler never sees it; 1-fps
# sampling sees both (docs/benchmarks.md#long-video).
LONG_EVENTS = ("drinks water", "eats food", "takes pills", "drinks tea",
               "answers the phone", "watches television", "types on a laptop", "reads a book")
LONG_QUESTION = "What does the person do in this video?"
# One word (one token of the tiny tokenizer) per event and per scene: what the language pre-training text writes for
# a frame, as a caption per frame would.
LONG_WORDS = ("water", "food", "pills", "tea", "phone", "television", "laptop", "book")
LONG_SCENES = ("kitchen", "bathroom", "sofa")
LONG_WHEN = ("early", "late")  # early: in the first third, on a frame of the default sampler; late: in the last
# third, between two of its frames


def long_answer(event: int) -> str:
    return f"The person {LONG_EVENTS[event]}."


def long_choices(event: int, rng: np.random.Generator) -> list[int]:
    """The true event and three others, shuffled (four-way multiple choice)."""
    others = rng.choice([e for e in range(len(LONG_EVENTS)) if e != event], size=3, replace=False)
    return [int(e) for e in rng.permutation([event, *others])]


def long_pretraining_text(n: int = 2000, seed: int = 0, frames: tuple[int, int] = (2, 240),
                          present: float = 0.9) -> list[dict]:
    """Text-only conversations that teach a tiny LLM the language of the long videos (as :func:`pretraining_text`
    does for the short ones), written as a caption per frame: the scene's word repeated for a random number of
    frames in ``frames`` (log-uniform, so that short captions, where picking the event's word is learnt first, are
    common), with the event's word replacing one or two of them anywhere (with probability
    ``present``), and the question. The answer names the event (a guess when its word is absent). So the LLM learns
    to pick one word out of hundreds of background words, which is what reading a long video asks of it."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        event = int(rng.integers(len(LONG_EVENTS)))
        length = int(np.exp(rng.uniform(np.log(frames[0]), np.log(frames[1] + 1))))  # log-uniform: short ones too
        words = [LONG_SCENES[int(rng.integers(len(LONG_SCENES)))]] * max(2, length)
        if rng.random() < present:
            at, run = int(rng.integers(len(words) - 1)), 1 + int(rng.integers(2))
            words[at:at + run] = [LONG_WORDS[event]] * run
        caption = " ".join(words)
        records.append({"id": f"long_text_{i:05d}", "conversations": [
            {"from": "human", "value": f"{LONG_QUESTION}\n{caption}" if i % 2 == 0 else f"{caption}\n{LONG_QUESTION}"},
            {"from": "gpt", "value": long_answer(event)}]})
    return records


@dataclass(frozen=True)
class LongWorldSpec:
    seconds: int = 120  # video length (2 minutes: 100 frames leave 20 one-second gaps, 7 in the last third)
    video_fps: int = 30  # source frame rate: the default sampler picks frames, the two-token path one per second
    patches: int = 4  # patch features per frame (a 2 x 2 grid)
    dim: int = 64  # feature width (the tiny base's video projector must match: make_tiny mm_hidden_size)
    event_seconds: int = 1
    default_frames: int = 100  # frames of the default (spatio-temporal) sampler
    signal: float = 1.0
    noise: float = 1.0
    row_norm: float = 1.0


class LongWorld:
    """Prototype directions of the events and of a few scenes; a video is its per-second frame features."""

    N_SCENES = len(LONG_SCENES)

    def __init__(self, seed: int = 0, spec: LongWorldSpec = LongWorldSpec()):
        self.spec = spec
        g = np.random.default_rng(seed)
        self.events = _directions(g, len(LONG_EVENTS), spec.dim)
        self.scenes = _directions(g, self.N_SCENES, spec.dim)

    def default_seconds(self) -> np.ndarray:
        """The second of each frame the default sampler picks."""
        from .video.io import frame_indices

        s = self.spec
        return frame_indices(s.seconds * s.video_fps, s.default_frames) // s.video_fps

    def event_starts(self) -> dict[str, list[int]]:
        """Possible start seconds: ``early`` in the first third, covering a frame of the default sampler; ``late`` in
        the last third, between two of its frames (so that sampler never sees it)."""
        s = self.spec
        seen = set(self.default_seconds().tolist())
        window = lambda t: any(t + k in seen for k in range(s.event_seconds))
        starts = {"early": [t for t in range(s.seconds // 3 - s.event_seconds) if window(t)],
                  "late": [t for t in range(2 * s.seconds // 3, s.seconds - s.event_seconds) if not window(t)]}
        if not starts["early"] or not starts["late"]:
            raise ValueError(f"{s}: the default sampler leaves no gap of {s.event_seconds} s in the last third")
        return starts

    def frames(self, frame_ids: np.ndarray, event: tuple[int, int], scene: int, seed: int) -> np.ndarray:
        """Features ``[len(frame_ids), patches, dim]`` of source frames: the scene's direction plus noise, or, during
        the event's seconds, the event's direction instead of the scene's (the event fills the view). ``event``:
        (start second, event index). Deterministic per (seed, frame)."""
        s = self.spec
        k = s.row_norm / np.sqrt(s.signal ** 2 + s.noise ** 2) / np.sqrt(s.dim)
        start, index = event
        out = np.empty((len(frame_ids), s.patches, s.dim), dtype=np.float32)
        for j, f in enumerate(np.asarray(frame_ids).tolist()):
            g = np.random.default_rng([seed, f])
            during = start <= f // s.video_fps < start + s.event_seconds
            direction = self.events[index] if during else self.scenes[scene]
            out[j] = k * (g.standard_normal((s.patches, s.dim)) * s.noise + s.signal * direction)
        return out


def make_long_dataset(out: str | Path, n_train: int = 256, n_test: int = 64, seed: int = 0,
                      spec: LongWorldSpec = LongWorldSpec()) -> dict:
    """Long synthetic videos in both video representations (docs/design.md#two-token-video):

    * ``video_features_default/{vid}.npy``: the spatio-temporal rows ``[100 + patches, dim]`` of the default sampler
      (Video-ChatGPT pooling of its 100 frames);
    * ``video_features_two_token/{vid}.npy``: the per-frame features ``[seconds, patches, dim]`` at 1 fps;

    (the same file names in both folders), ``train.json`` (one record per video), ``train_seen.json`` (the records of
    the videos whose event the default sampler sees: the early ones) and ``test.json`` (multiple-choice
    items: ``video``, ``question``, ``choices`` (4), ``answer``, ``when`` (early / late, alternating), ``start_second``,
    ``seen_by_default``). Deterministic for a seed."""
    from .video.clip import pool_spatio_temporal
    from .video.io import frame_indices
    from .video.longvideo import sample_indices

    out = Path(out)
    world = LongWorld(seed, spec)
    starts = world.event_starts()
    rng = np.random.default_rng(seed + 1)
    folders = {"default": out / "video_features_default", "two_token": out / "video_features_two_token"}
    total = spec.seconds * spec.video_fps
    picks = {"default": frame_indices(total, spec.default_frames),
             "two_token": sample_indices(total, spec.video_fps, 1.0)}
    records, tests, seen = [], [], []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            vid, when = f"long_{split}_{i:04d}", LONG_WHEN[i % 2]
            start, event = int(rng.choice(starts[when])), int(rng.integers(len(LONG_EVENTS)))
            scene = int(rng.integers(LongWorld.N_SCENES))
            noise_seed = (seed * 1_000_003 + (0 if split == "train" else 500_000) + i) % 2**31
            frames = {name: world.frames(idx, (start, event), scene, seed=noise_seed) for name, idx in picks.items()}
            save_feature(pool_spatio_temporal(frames["default"], spec.default_frames).numpy().astype(np.float16),
                         folders["default"] / f"{vid}.npy")
            save_feature(frames["two_token"].astype(np.float16), folders["two_token"] / f"{vid}.npy")
            if split == "train":
                human = f"{LONG_QUESTION}\n<video>" if i % 4 < 2 else f"<video>\n{LONG_QUESTION}"
                records.append({"id": vid, "video": f"{vid}.npy", "conversations": [
                    {"from": "human", "value": human}, {"from": "gpt", "value": long_answer(event)}]})
                seen.append(when == "early")
            else:
                tests.append({"video": f"{vid}.npy", "question": LONG_QUESTION, "when": when, "start_second": start,
                              "choices": [long_answer(e) for e in long_choices(event, rng)],
                              "answer": long_answer(event), "seen_by_default": when == "early"})
    (out / "train.json").write_text(json.dumps(records, indent=1))
    (out / "train_seen.json").write_text(json.dumps([r for r, v in zip(records, seen) if v], indent=1))
    (out / "test.json").write_text(json.dumps(tests, indent=1))
    return {"train": out / "train.json", "train_seen": out / "train_seen.json", "test": out / "test.json",
            **{f"{k}_folder": v for k, v in folders.items()}}


__all__ = ["ACTIONS", "ATTRIBUTES", "LONG_EVENTS", "LONG_QUESTION", "LONG_SCENES", "LONG_WHEN", "LONG_WORDS",
           "POSTURE_LAYOUTS", "SCENE_ACTIONS", "LongWorld", "LongWorldSpec", "PostureWorldSpec", "SceneSpec",
           "SceneWorld", "SkeletonWorldSpec", "World", "WorldSpec", "action_name", "hand_caption", "long_answer",
           "long_choices", "long_pretraining_text", "make_dataset", "make_long_dataset", "make_posture_world",
           "make_scene_dataset", "make_skeleton_world", "pretraining_text", "scene_action_name",
           "scene_pretraining_text"]

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


# ==================================================================== long videos: two events minutes apart
# Each long video holds two short events far apart: something eaten or drunk early on, something used late. The
# default sampler (100 frames spread uniformly) sees the early event but, by construction, none of the frames of the
# late one, which falls between two of its frames; 1-fps sampling sees both (docs/benchmarks.md#long-video).
LONG_EVENTS = {
    "eat": ("drinks water", "eats an apple", "takes pills", "drinks tea"),
    "use": ("answers the phone", "watches television", "types on a laptop", "reads a book"),
}
LONG_QUESTIONS = {"eat": "What does the person eat or drink in this video?",
                  "use": "What does the person use in this video?"}


LONG_WORDS = {"eat": ("water", "apple", "pills", "tea"), "use": ("phone", "television", "laptop", "book")}


def long_answer(kind: str, event: int) -> str:
    return f"The person {LONG_EVENTS[kind][event]}."


def long_pretraining_text(n: int = 1200, seed: int = 0) -> list[dict]:
    """Text-only conversations that teach a tiny LLM the language of the long videos (as :func:`pretraining_text`
    does for the short ones): a question about one kind of event and the words of the events that happen (each named
    with probability 1/2, in any order) in, the event of the asked kind out."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        chosen = {k: int(rng.integers(len(v))) for k, v in LONG_EVENTS.items()}
        kind = list(LONG_EVENTS)[i % len(LONG_EVENTS)]
        keep = [LONG_WORDS[k][e] for k, e in chosen.items() if rng.random() < 0.5]
        rng.shuffle(keep)
        q = LONG_QUESTIONS[kind]
        records.append({"id": f"long_text_{i:05d}", "conversations": [
            {"from": "human", "value": (f"{q}\n{' '.join(keep)}" if i % 4 < 2 else f"{' '.join(keep)}\n{q}").strip()},
            {"from": "gpt", "value": long_answer(kind, chosen[kind])}]})
    return records


@dataclass(frozen=True)
class LongWorldSpec:
    seconds: int = 600  # video length (10 minutes)
    video_fps: int = 30  # source frame rate: the default sampler picks frames, the two-token path one per second
    patches: int = 4  # patch features per frame (a 2 x 2 grid)
    dim: int = 64  # feature width (the tiny base's video projector must match: make_tiny mm_hidden_size)
    event_seconds: int = 2
    default_frames: int = 100  # frames of the default (spatio-temporal) sampler
    signal: float = 1.0
    noise: float = 1.0
    row_norm: float = 1.0


def _directions(g: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random directions of norm sqrt(dim) (unit variance per coordinate), ``[n, dim]``."""
    v = g.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=-1, keepdims=True) * np.sqrt(dim)


class LongWorld:
    """Prototype directions of the events and of a few scenes; a video is its per-second frame features."""

    N_SCENES = 3

    def __init__(self, seed: int = 0, spec: LongWorldSpec = LongWorldSpec()):
        self.spec = spec
        g = np.random.default_rng(seed)
        self.events = {k: _directions(g, len(v), spec.dim) for k, v in LONG_EVENTS.items()}
        self.scenes = _directions(g, self.N_SCENES, spec.dim)

    def default_seconds(self) -> np.ndarray:
        """The second of each frame the default sampler picks."""
        from .video.io import frame_indices

        s = self.spec
        return frame_indices(s.seconds * s.video_fps, s.default_frames) // s.video_fps

    def place_events(self, rng: np.random.Generator) -> dict[str, int]:
        """Start seconds: ``eat`` in the first third, covering a frame of the default sampler; ``use`` in the last
        third, between two of its frames (so that sampler never sees it)."""
        s = self.spec
        seen = set(self.default_seconds().tolist())
        window = lambda t: any(t + k in seen for k in range(s.event_seconds))
        early = [t for t in range(s.seconds // 3 - s.event_seconds) if window(t)]
        late = [t for t in range(2 * s.seconds // 3, s.seconds - s.event_seconds) if not window(t)]
        if not early or not late:
            raise ValueError(f"{s}: the default sampler leaves no gap of {s.event_seconds} s in the last third")
        return {"eat": int(rng.choice(early)), "use": int(rng.choice(late))}

    def frames(self, frame_ids: np.ndarray, events: dict[str, tuple[int, int]], scene: int, seed: int) -> np.ndarray:
        """Features ``[len(frame_ids), patches, dim]`` of source frames: scene + noise, plus an event's direction
        during its seconds. ``events``: kind -> (start second, event index). Deterministic per (seed, frame)."""
        s = self.spec
        k = s.row_norm / np.sqrt(2 * s.signal ** 2 + s.noise ** 2) / np.sqrt(s.dim)
        out = np.empty((len(frame_ids), s.patches, s.dim), dtype=np.float32)
        for j, f in enumerate(np.asarray(frame_ids).tolist()):
            g = np.random.default_rng([seed, f])
            x = g.standard_normal((s.patches, s.dim)) * s.noise + s.signal * self.scenes[scene]
            second = f // s.video_fps
            for kind, (start, event) in events.items():
                if start <= second < start + s.event_seconds:
                    x = x + s.signal * self.events[kind][event]
            out[j] = k * x
        return out


def make_long_dataset(out: str | Path, n_train: int = 96, n_test: int = 32, seed: int = 0,
                      spec: LongWorldSpec = LongWorldSpec()) -> dict:
    """Long synthetic videos in both video representations (docs/design.md#two-token-video):

    * ``video_features_default/{vid}.npy``: the spatio-temporal rows ``[100 + patches, dim]`` of the default sampler
      (Video-ChatGPT pooling of its 100 frames);
    * ``video_features_two_token/{vid}.npy``: the per-frame features ``[seconds, patches, dim]`` at 1 fps;

    (the same file names in both folders), ``train.json`` (one record per video and question) and ``test.json``
    (multiple-choice items: ``video``,
    ``question``, ``choices`` (4), ``answer``, ``kind``, ``seen_by_default``). Deterministic for a seed."""
    from .video.clip import pool_spatio_temporal
    from .video.io import frame_indices
    from .video.longvideo import sample_indices

    out = Path(out)
    world = LongWorld(seed, spec)
    rng = np.random.default_rng(seed + 1)
    folders = {"default": out / "video_features_default", "two_token": out / "video_features_two_token"}
    total = spec.seconds * spec.video_fps
    picks = {"default": frame_indices(total, spec.default_frames),
             "two_token": sample_indices(total, spec.video_fps, 1.0)}
    records, tests = [], []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            vid = f"long_{split}_{i:04d}"
            starts = world.place_events(rng)
            chosen = {k: int(rng.integers(len(v))) for k, v in LONG_EVENTS.items()}
            events = {k: (starts[k], chosen[k]) for k in LONG_EVENTS}
            scene = int(rng.integers(LongWorld.N_SCENES))
            noise_seed = (seed * 1_000_003 + (0 if split == "train" else 500_000) + i) % 2**31
            frames = {name: world.frames(idx, events, scene, seed=noise_seed) for name, idx in picks.items()}
            save_feature(pool_spatio_temporal(frames["default"], spec.default_frames).numpy().astype(np.float16),
                         folders["default"] / f"{vid}.npy")
            save_feature(frames["two_token"].astype(np.float16), folders["two_token"] / f"{vid}.npy")
            for j, kind in enumerate(LONG_EVENTS):
                q = LONG_QUESTIONS[kind]
                if split == "train":
                    human = f"{q}\n<video>" if (i + j) % 2 == 0 else f"<video>\n{q}"
                    records.append({"id": f"{vid}_{kind}", "video": f"{vid}.npy", "conversations": [
                        {"from": "human", "value": human}, {"from": "gpt", "value": long_answer(kind, chosen[kind])}]})
                else:
                    tests.append({"video": f"{vid}.npy", "question": q, "kind": kind, "start_second": starts[kind],
                                  "choices": [long_answer(kind, e) for e in range(len(LONG_EVENTS[kind]))],
                                  "answer": long_answer(kind, chosen[kind]), "seen_by_default": kind == "eat"})
    (out / "train.json").write_text(json.dumps(records, indent=1))
    (out / "test.json").write_text(json.dumps(tests, indent=1))
    return {"train": out / "train.json", "test": out / "test.json", **{f"{k}_folder": v for k, v in folders.items()}}


__all__ = ["ACTIONS", "ATTRIBUTES", "LONG_EVENTS", "LONG_QUESTIONS", "LONG_WORDS", "LongWorld", "LongWorldSpec",
           "World", "WorldSpec", "action_name", "long_answer", "long_pretraining_text", "make_dataset",
           "make_long_dataset", "pretraining_text"]

"""A tiny synthetic NTU RGB+D 120 root, in the real layout and formats (docs/design.md#curation), built in well
under a second.

``make_ntu_root(root)`` writes ``root/rgb/<stem>_rgb.avi`` and ``root/skeletons/<stem>.skeleton.npy`` (plus the raw
``<stem>.skeleton`` text when ``with_txt``). Each clip is a stick figure drawn at its skeleton's RGB pixel
coordinates over a background whose colour encodes the pixel position (red = x, green = y), so that a crop can be
checked against where it came from. The motion depends on the action (each action moves its own joint groups with
its own amplitudes and frequencies), so classes are separable from the skeleton alone; the performer changes body
size and position, the camera the viewing angle, the seed the noise. Mutual actions (A050-A060, A106-A120) have a
second person.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from llavidal.curation.ntu import NTUName, format_skeleton_text, write_skeleton_npy

# Rest pose, metres (x right, y up, z towards the camera), NTU joint order (0-based index = joint id - 1).
REST_POSE = np.array([
    (0.00, 0.00, 0.0),    # 1 spine base
    (0.00, 0.30, 0.0),    # 2 spine mid
    (0.00, 0.58, 0.0),    # 3 neck
    (0.00, 0.72, 0.0),    # 4 head
    (-0.18, 0.48, 0.0),   # 5 left shoulder
    (-0.25, 0.22, 0.0),   # 6 left elbow
    (-0.28, 0.00, 0.0),   # 7 left wrist
    (-0.29, -0.06, 0.0),  # 8 left hand
    (0.18, 0.48, 0.0),    # 9 right shoulder
    (0.25, 0.22, 0.0),    # 10 right elbow
    (0.28, 0.00, 0.0),    # 11 right wrist
    (0.29, -0.06, 0.0),   # 12 right hand
    (-0.10, -0.05, 0.0),  # 13 left hip
    (-0.12, -0.45, 0.0),  # 14 left knee
    (-0.12, -0.85, 0.0),  # 15 left ankle
    (-0.12, -0.90, -0.1),  # 16 left foot
    (0.10, -0.05, 0.0),   # 17 right hip
    (0.12, -0.45, 0.0),   # 18 right knee
    (0.12, -0.85, 0.0),   # 19 right ankle
    (0.12, -0.90, -0.1),  # 20 right foot
    (0.00, 0.50, 0.0),    # 21 spine shoulder
    (-0.30, -0.12, 0.0),  # 22 left hand tip
    (-0.26, -0.08, 0.0),  # 23 left thumb
    (0.30, -0.12, 0.0),   # 24 right hand tip
    (0.26, -0.08, 0.0),   # 25 right thumb
])
BONES = [(0, 1), (1, 20), (20, 2), (2, 3), (20, 4), (4, 5), (5, 6), (6, 7), (7, 21), (7, 22), (20, 8), (8, 9),
         (9, 10), (10, 11), (11, 23), (11, 24), (0, 12), (12, 13), (13, 14), (14, 15), (0, 16), (16, 17), (17, 18),
         (18, 19)]
# Joint groups an action may move, with a per-joint weight (distal joints move more).
GROUPS = {
    "left arm": {5: 0.5, 6: 1.0, 7: 1.1, 21: 1.2, 22: 1.1},
    "right arm": {9: 0.5, 10: 1.0, 11: 1.1, 23: 1.2, 24: 1.1},
    "left leg": {13: 0.5, 14: 1.0, 15: 1.1},
    "right leg": {17: 0.5, 18: 1.0, 19: 1.1},
    "torso": {1: 0.3, 20: 0.6, 2: 0.8, 3: 1.0, 4: 0.6, 8: 0.6},
}
CAMERA_YAW = {1: 0.0, 2: np.pi / 4, 3: -np.pi / 4}


def action_motion(action: int, frames: int) -> np.ndarray:
    """Displacement ``[frames, 25, 3]`` (metres) that defines an action: two joint groups chosen by the action
    move with action-specific 3-d amplitudes, frequencies and phases, plus a slow whole-body drift."""
    rng = np.random.default_rng(1000 + action)  # the class signature does not depend on the fixture seed
    names = list(GROUPS)
    chosen = rng.choice(len(names), size=2, replace=False)
    t = np.linspace(0.0, 1.0, frames)[:, None]
    out = np.zeros((frames, 25, 3))
    for g in chosen:
        amp = rng.uniform(-0.35, 0.35, size=3)
        freq = rng.uniform(0.5, 3.0)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * t + phase)  # [frames, 1]
        for j, w in GROUPS[names[g]].items():
            out[:, j] += w * wave * amp
    out += (t * rng.uniform(-0.3, 0.3, size=3))[:, None, :]  # drift
    return out


def _project(xyz: np.ndarray, width: int, height: int, focal: float) -> np.ndarray:
    """Pinhole projection of camera-space points (z = distance) to pixel coordinates ``[..., 2]``."""
    z = xyz[..., 2]
    return np.stack([width / 2 + focal * xyz[..., 0] / z, height / 2 - focal * xyz[..., 1] / z], axis=-1)


def make_skeleton(name: NTUName, frames: int = 24, size: tuple[int, int] = (160, 120), seed: int = 0) -> dict:
    """The txt2npy dict of one synthetic clip; RGB coordinates are pixels of a ``size`` = (width, height) video."""
    width, height = size
    rng = np.random.default_rng([seed, name.setup, name.camera, name.performer, name.replication, name.action])
    prng = np.random.default_rng(500 + name.performer)
    scale = prng.uniform(0.9, 1.1)
    offset = np.array([prng.uniform(-0.4, 0.4), prng.uniform(-0.1, 0.1), 0.0])
    yaw = CAMERA_YAW.get(name.camera, 0.3 * name.camera)
    rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    motion = action_motion(name.action, frames)
    people = [np.zeros(3)] + ([np.array([0.8, 0.0, 0.2])] if name.mutual else [])
    d: dict = {"file_name": name.stem, "nbodys": [len(people)] * frames, "njoints": 25}
    for i, place in enumerate(people):
        body = REST_POSE * scale + (motion if i == 0 else motion[:, :, :] * np.array([-1, 1, 1])) + place + offset
        body = body + rng.normal(0, 0.01, size=body.shape)
        xyz = body @ rot.T + np.array([0.0, 0.0, 3.5])  # [frames, 25, 3], camera 3.5 m away
        d[f"skel_body{i}"] = xyz
        d[f"rgb_body{i}"] = _project(xyz, width, height, focal=0.9 * width)
        d[f"depth_body{i}"] = _project(xyz, 512, 424, focal=365.0)
    return d


def background(width: int, height: int) -> np.ndarray:
    """uint8 ``[H, W, 3]``: red grows with x, green with y, blue constant — a pixel tells where it came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 60)], axis=-1).astype(np.uint8)


def render_clip(d: dict, size: tuple[int, int] = (160, 120), frames: int | None = None) -> np.ndarray:
    """uint8 ``[frames, H, W, 3]``: stick figures drawn at the skeleton's RGB coordinates (``frames`` defaults to
    the skeleton's; more frames repeat the last pose, fewer drop the tail)."""
    width, height = size
    bodies = [d[k] for k in sorted(k for k in d if k.startswith("rgb_body"))]
    t_skel = bodies[0].shape[0]
    frames = t_skel if frames is None else frames
    out = np.repeat(background(width, height)[None], frames, axis=0)
    s = np.linspace(0, 1, 10)[:, None]
    colours = [(255, 255, 255), (255, 220, 0)]
    for i, rgb in enumerate(bodies):
        a = np.array([b[0] for b in BONES])
        b = np.array([b[1] for b in BONES])
        for f in range(frames):
            p = rgb[min(f, t_skel - 1)]
            pts = (p[a][None] * (1 - s[..., None]) + p[b][None] * s[..., None]).reshape(-1, 2)
            pts = np.concatenate([pts, p]).round().astype(int)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    x, y = pts[:, 0] + dx, pts[:, 1] + dy
                    ok = (x >= 0) & (x < width) & (y >= 0) & (y < height)
                    out[f, y[ok], x[ok]] = colours[i % 2]
    return out


def make_ntu_root(root, performers=(1, 2), actions=(1, 2, 3, 8, 9), setups=(1,), cameras=(1,), frames=24,
                  size=(160, 120), with_txt=True, seed=0, replications=(1,)) -> Path:
    """Write a synthetic NTU RGB+D 120 root: ``rgb/<stem>_rgb.avi`` (MPEG-4 in AVI, as the real clips' container),
    ``skeletons/<stem>.skeleton.npy`` (+ ``<stem>.skeleton`` text when ``with_txt``). Returns ``root``."""
    from llavidal.video.io import write_video

    root = Path(root)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "skeletons").mkdir(parents=True, exist_ok=True)
    for s in setups:
        for c in cameras:
            for p in performers:
                for r in replications:
                    for a in actions:
                        name = NTUName(s, c, p, r, a)
                        d = make_skeleton(name, frames, size, seed)
                        write_video(root / "rgb" / f"{name.stem}_rgb.avi", render_clip(d, size), fps=30)
                        write_skeleton_npy(d, root / "skeletons" / f"{name.stem}.skeleton.npy")
                        if with_txt:
                            (root / "skeletons" / f"{name.stem}.skeleton").write_text(format_skeleton_text(d))
    return root

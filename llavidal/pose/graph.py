"""The 25-joint skeleton of NTU RGB+D (Kinect v2) as the encoder sees it: bones, hop distances and body parts.

Joint indices are 0-based here (NTU's documentation numbers them 1..25):

     0 base of spine    1 middle of spine   2 neck              3 head             4 left shoulder
     5 left elbow       6 left wrist        7 left hand         8 right shoulder   9 right elbow
    10 right wrist     11 right hand       12 left hip         13 left knee       14 left ankle
    15 left foot       16 right hip        17 right knee       18 right ankle     19 right foot
    20 spine (shoulders) 21 left hand tip  22 left thumb       23 right hand tip  24 right thumb

Body parts (the "hyperedges" of the encoder's attention bias): torso + head, left arm + hand, right arm + hand,
left leg, right leg. Every joint belongs to exactly one part.
"""
from __future__ import annotations

import numpy as np

NUM_JOINTS = 25
CENTER_JOINT = 1  # middle of spine: the clip is centred on its mean position

# Bones (0-based); hand tip and thumb hang off the hand.
BONES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 20), (20, 2), (2, 3),  # spine, neck, head
    (20, 4), (4, 5), (5, 6), (6, 7), (7, 21), (7, 22),  # left arm
    (20, 8), (8, 9), (9, 10), (10, 11), (11, 23), (11, 24),  # right arm
    (0, 12), (12, 13), (13, 14), (14, 15),  # left leg
    (0, 16), (16, 17), (17, 18), (18, 19),  # right leg
)

PARTS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 20),  # torso and head
    (4, 5, 6, 7, 21, 22),  # left arm
    (8, 9, 10, 11, 23, 24),  # right arm
    (12, 13, 14, 15),  # left leg
    (16, 17, 18, 19),  # right leg
)


def hop_distance(num_joints: int = NUM_JOINTS, bones=BONES) -> np.ndarray:
    """int64 ``[V, V]``: number of bones on the shortest path between two joints (Floyd–Warshall on 25 nodes)."""
    inf = num_joints + 1
    d = np.full((num_joints, num_joints), inf, dtype=np.int64)
    np.fill_diagonal(d, 0)
    for a, b in bones:
        d[a, b] = d[b, a] = 1
    for k in range(num_joints):
        d = np.minimum(d, d[:, k:k + 1] + d[k:k + 1, :])
    if (d >= inf).any():
        raise ValueError("the skeleton graph is not connected")
    return d


def part_of_joint(num_joints: int = NUM_JOINTS, parts=PARTS) -> np.ndarray:
    """int64 ``[V]``: the body part of every joint."""
    out = np.full(num_joints, -1, dtype=np.int64)
    for p, joints in enumerate(parts):
        out[list(joints)] = p
    if (out < 0).any():
        raise ValueError(f"joints {np.flatnonzero(out < 0).tolist()} belong to no body part")
    return out


def part_mean_matrix(num_joints: int = NUM_JOINTS, parts=PARTS) -> np.ndarray:
    """float32 ``[V, V]``: row i averages the joints of i's body part (``A @ x`` gives each joint its part's mean)."""
    part = part_of_joint(num_joints, parts)
    same = (part[:, None] == part[None, :]).astype(np.float32)
    return same / same.sum(1, keepdims=True)

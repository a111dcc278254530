"""NTU RGB+D 120 input: action names, file names, and the skeleton files (docs/design.md#curation).

Layout of a dataset root::

    NTU120/rgb/SsssCcccPpppRrrrAaaa_rgb.avi            1920x1080 RGB clips
    NTU120/skeletons/SsssCcccPpppRrrrAaaa.skeleton     raw Kinect v2 text (as distributed)
    NTU120/skeletons/SsssCcccPpppRrrrAaaa.skeleton.npy the same, converted by NTU's official txt2npy script

The ``.skeleton.npy`` file is ``np.save`` of a Python dict (stored as a 0-d object array)::

    file_name            str, the 20-character stem "S001C002P003R002A013"
    nbodys               list[int], number of bodies of every NON-EMPTY frame (empty frames are not listed)
    njoints              int, 25
    skel_body{i}         float64 [frames, 25, 3]  camera-space x, y, z in metres
    rgb_body{i}          float64 [frames, 25, 2]  pixel coordinates in the RGB video (colorX, colorY)
    depth_body{i}        float64 [frames, 25, 2]  pixel coordinates in the 512x424 depth map

for i in 0 .. max(nbodys)-1. Body i is the i-th body listed in a frame (not a tracking id); rows of frames where
body i is absent are all zero. :func:`read_skeleton_txt` produces exactly this layout from the raw text, and
:func:`read_skeleton_npy` reads the converted file without ``allow_pickle`` (a restricted unpickler that admits
numpy arrays and plain containers only), so untrusted files cannot run code.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io_utils import atomic_write_bytes

NUM_JOINTS = 25

# The 120 official action classes, index 0 = A001. A001-A060 are NTU RGB+D 60; A061-A120 the extension.
# A050-A060 and A106-A120 are mutual (two-person) actions.
NTU_ACTIONS: tuple[str, ...] = (
    "drink water",                                   # A001
    "eat meal/snack",
    "brushing teeth",
    "brushing hair",
    "drop",
    "pickup",
    "throw",
    "sitting down",
    "standing up (from sitting position)",
    "clapping",                                      # A010
    "reading",
    "writing",
    "tear up paper",
    "wear jacket",
    "take off jacket",
    "wear a shoe",
    "take off a shoe",
    "wear on glasses",
    "take off glasses",
    "put on a hat/cap",                              # A020
    "take off a hat/cap",
    "cheer up",
    "hand waving",
    "kicking something",
    "reach into pocket",
    "hopping (one foot jumping)",
    "jump up",
    "make a phone call/answer phone",
    "playing with phone/tablet",
    "typing on a keyboard",                          # A030
    "pointing to something with finger",
    "taking a selfie",
    "check time (from watch)",
    "rub two hands together",
    "nod head/bow",
    "shake head",
    "wipe face",
    "salute",
    "put the palms together",
    "cross hands in front (say stop)",               # A040
    "sneeze/cough",
    "staggering",
    "falling",
    "touch head (headache)",
    "touch chest (stomachache/heart pain)",
    "touch back (backache)",
    "touch neck (neckache)",
    "nausea or vomiting condition",
    "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person",                # A050
    "kicking other person",
    "pushing other person",
    "pat on back of other person",
    "point finger at the other person",
    "hugging other person",
    "giving something to other person",
    "touch other person's pocket",
    "handshaking",
    "walking towards each other",
    "walking apart from each other",                 # A060
    "put on headphone",
    "take off headphone",
    "shoot at the basket",
    "bounce ball",
    "tennis bat swing",
    "juggling table tennis balls",
    "hush (quite)",
    "flick hair",
    "thumb up",
    "thumb down",                                    # A070
    "make ok sign",
    "make victory sign",
    "staple book",
    "counting money",
    "cutting nails",
    "cutting paper (using scissors)",
    "snapping fingers",
    "open bottle",
    "sniff (smell)",
    "squat down",                                    # A080
    "toss a coin",
    "fold paper",
    "ball up paper",
    "play magic cube",
    "apply cream on face",
    "apply cream on hand back",
    "put on bag",
    "take off bag",
    "put something into a bag",
    "take something out of a bag",                   # A090
    "open a box",
    "move heavy objects",
    "shake fist",
    "throw up cap/hat",
    "hands up (both hands)",
    "cross arms",
    "arm circles",
    "arm swings",
    "running on the spot",
    "butt kicks (kick backward)",                    # A100
    "cross toe touch",
    "side kick",
    "yawn",
    "stretch oneself",
    "blow nose",
    "hit other person with something",
    "wield knife towards other person",
    "knock over other person (hit with body)",
    "grab other person's stuff",
    "shoot at other person with a gun",              # A110
    "step on foot",
    "high-five",
    "cheers and drink",
    "carry something with other person",
    "take a photo of other person",
    "follow other person",
    "whisper in other person's ear",
    "exchange things with other person",
    "support somebody with hand",
    "finger-guessing game (playing rock-paper-scissors)",  # A120
)
assert len(NTU_ACTIONS) == 120

MUTUAL_ACTIONS: frozenset[int] = frozenset(range(50, 61)) | frozenset(range(106, 121))  # 1-based action ids


def action_name(action: int) -> str:
    """Official name of action id ``action`` (1-based, as in ``A013``)."""
    if not 1 <= int(action) <= len(NTU_ACTIONS):
        raise ValueError(f"NTU action id must be 1..{len(NTU_ACTIONS)}, got {action}")
    return NTU_ACTIONS[int(action) - 1]


# ---------------------------------------------------------------------------------------------------- file names
_NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
_NAME_SUFFIXES = ("", "_rgb.avi", "_rgb.mp4", ".skeleton", ".skeleton.npy", "_keypoints.npy")


@dataclass(frozen=True)
class NTUName:
    """The fields of an NTU file name ``SsssCcccPpppRrrrAaaa``: setup, camera, performer, replication, action."""

    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    @classmethod
    def parse(cls, name_or_path: str | os.PathLike) -> NTUName:
        """Accepts a stem or a file name/path: ``S001C002P003R002A013``, ``..._rgb.avi`` (and our ``_rgb.mp4``),
        ``....skeleton``, ``....skeleton.npy``, ``..._keypoints.npy``."""
        text = str(name_or_path)
        base = Path(text).name
        m = _NAME_RE.fullmatch(base[:20]) if len(base) >= 20 else None
        if m is None or base[20:] not in _NAME_SUFFIXES:
            raise ValueError(f"{text!r} is not an NTU RGB+D file name: expected SsssCcccPpppRrrrAaaa (e.g. "
                             f"S001C002P003R002A013) optionally followed by one of "
                             f"{[s for s in _NAME_SUFFIXES if s]}")
        out = cls(*(int(g) for g in m.groups()))
        if not 1 <= out.action <= len(NTU_ACTIONS):
            raise ValueError(f"{text!r}: action A{out.action:03d} is outside A001..A{len(NTU_ACTIONS):03d}")
        return out

    @property
    def stem(self) -> str:
        return (f"S{self.setup:03d}C{self.camera:03d}P{self.performer:03d}"
                f"R{self.replication:03d}A{self.action:03d}")

    @property
    def action_name(self) -> str:
        return action_name(self.action)

    @property
    def mutual(self) -> bool:
        """True for the two-person actions (A050-A060, A106-A120)."""
        return self.action in MUTUAL_ACTIONS


def stem_of(path: str | os.PathLike) -> str:
    """``S001C002P003R002A013`` of any NTU file name (raises ValueError for other names)."""
    return NTUName.parse(path).stem


# ---------------------------------------------------------------------------------------------------- skeletons
class SkeletonError(ValueError):
    """A skeleton file that cannot be used; the message names the file (and line, for the text format)."""


def _empty_body(frames: int) -> dict[str, np.ndarray]:
    return {"skel": np.zeros((frames, NUM_JOINTS, 3)), "rgb": np.zeros((frames, NUM_JOINTS, 2)),
            "depth": np.zeros((frames, NUM_JOINTS, 2))}


def parse_skeleton_text(text: str, source: str = "<text>", file_name: str | None = None) -> dict:
    """Parse the raw ``.skeleton`` text (see :func:`read_skeleton_txt`)."""
    lines = text.splitlines()
    pos = 0  # index of the next line to read; error messages give 1-based line numbers

    def fail(msg: str, line: int | None = None):
        line = pos if line is None else line
        raise SkeletonError(f"{source}: line {line + 1}: {msg}")

    def next_int(what: str) -> int:
        nonlocal pos
        if pos >= len(lines):
            raise SkeletonError(f"{source}: line {pos + 1}: file ends early, expected {what} (truncated file?)")
        s = lines[pos].strip()
        try:
            v = int(s)
        except ValueError:
            fail(f"expected {what} (one integer), found {s[:60]!r}")
        if v < 0:
            fail(f"expected {what} >= 0, found {v}")
        pos += 1
        return v

    frames = next_int("the frame count")
    bodies: list[dict[str, np.ndarray]] = []
    nbodys: list[int] = []
    for f in range(frames):
        count = next_int(f"the body count of frame {f}")
        if count == 0:
            continue
        nbodys.append(count)
        while len(bodies) < count:
            bodies.append(_empty_body(frames))
        for b in range(count):
            if pos >= len(lines):
                raise SkeletonError(f"{source}: line {pos + 1}: file ends early in frame {f}, body {b} "
                                    "(truncated file?)")
            info = lines[pos].split()
            if len(info) != 10:
                fail(f"frame {f}, body {b}: expected the body info line of 10 values (id, clipped edges, hand "
                     f"states, restricted, lean x/y, tracking state), found {len(info)} values")
            pos += 1
            nj = next_int(f"the joint count of frame {f}, body {b}")
            if nj != NUM_JOINTS:
                fail(f"frame {f}, body {b}: expected {NUM_JOINTS} joints, found {nj}", pos - 1)
            block = lines[pos:pos + NUM_JOINTS]
            if len(block) < NUM_JOINTS:
                raise SkeletonError(f"{source}: line {len(lines) + 1}: file ends early in frame {f}, body {b} "
                                    "(truncated file?)")
            try:
                values = np.array(" ".join(block).split(), dtype=np.float64)
            except ValueError:
                values = None
            if values is None or values.size != NUM_JOINTS * 12:
                for k, line in enumerate(block):  # find the offending line for the message
                    parts = line.split()
                    try:
                        [float(p) for p in parts]
                    except ValueError:
                        fail(f"frame {f}, body {b}, joint {k}: not a number in {line.strip()[:80]!r}", pos + k)
                    if len(parts) != 12:
                        fail(f"frame {f}, body {b}, joint {k}: expected 12 values (x y z depthX depthY colorX "
                             f"colorY orientW orientX orientY orientZ trackingState), found {len(parts)}", pos + k)
            values = values.reshape(NUM_JOINTS, 12)
            body = bodies[b]
            body["skel"][f] = values[:, 0:3]
            body["depth"][f] = values[:, 3:5]
            body["rgb"][f] = values[:, 5:7]
            pos += NUM_JOINTS
    for rest in range(pos, len(lines)):
        if lines[rest].strip():
            raise SkeletonError(f"{source}: line {rest + 1}: unexpected data after the {frames} declared frames")
    out: dict = {"file_name": file_name if file_name is not None else "", "nbodys": nbodys, "njoints": NUM_JOINTS}
    for i, body in enumerate(bodies):
        out[f"skel_body{i}"] = body["skel"]
        out[f"rgb_body{i}"] = body["rgb"]
        out[f"depth_body{i}"] = body["depth"]
    return out


def _file_name_of(path: Path) -> str:
    try:
        return NTUName.parse(path).stem
    except ValueError:
        return path.name.split(".")[0]


def read_skeleton_txt(path: str | os.PathLike) -> dict:
    """Parse a raw NTU ``.skeleton`` text file into the dict layout of the official ``.skeleton.npy`` (module doc).

    Text format: the frame count; per frame a body count; per body one line of 10 values (body id, clipped edges,
    hand confidences and states, restricted flag, lean x/y, tracking state), the joint count (25), then 25 lines of
    12 values ``x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState``. Errors name the
    file and the 1-based line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: skeleton file not found")
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as e:
        raise SkeletonError(f"{path}: not a text skeleton file (byte {e.start} is not ASCII)") from None
    return parse_skeleton_text(text, str(path), _file_name_of(path))


def _read_npy_object(path: Path):
    """The object stored in a ``.npy`` file, without ``allow_pickle``: plain arrays are read by numpy, object
    arrays (an ``np.save``-d dict) through the numpy-only restricted unpickler."""
    from numpy.lib import format as npformat

    from ..features import FeatureError, safe_unpickle

    with open(path, "rb") as fh:
        try:
            version = npformat.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = npformat.read_array_header_1_0(fh)
            else:
                _, _, dtype = npformat.read_array_header_2_0(fh)
        except ValueError as e:
            raise SkeletonError(f"{path}: not a .npy file: {e}") from None
        if not dtype.hasobject:
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        try:
            obj = safe_unpickle(fh, str(path))
        except FeatureError as e:
            raise SkeletonError(str(e)) from None
    return obj


def read_skeleton_npy(path: str | os.PathLike) -> dict:
    """Read a ``.skeleton.npy`` written by NTU's txt2npy converter (or :func:`write_skeleton_npy`): a pickled dict,
    read through a restricted unpickler (numpy arrays and plain containers only; never ``allow_pickle=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: skeleton file not found")
    obj = _read_npy_object(path)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise SkeletonError(f"{path}: holds a {type(obj).__name__} "
                            f"{getattr(obj, 'shape', '')}, expected the dict of NTU's txt2npy converter")
    return validate_skeleton(obj, str(path))


def validate_skeleton(d: dict, source: str = "<dict>") -> dict:
    """Check the txt2npy layout; returns ``d`` (arrays as float64 numpy arrays). Errors name the key."""
    for key in ("nbodys", "njoints"):
        if key not in d:
            raise SkeletonError(f"{source}: key '{key}' missing; keys found: {sorted(map(str, d))}")
    nj = int(d["njoints"])
    if nj != NUM_JOINTS:
        raise SkeletonError(f"{source}: njoints is {nj}, expected {NUM_JOINTS}")
    nb = num_bodies(d)
    frames = None
    for i in range(nb):
        for kind, width in (("skel", 3), ("rgb", 2), ("depth", 2)):
            key = f"{kind}_body{i}"
            if key not in d:
                if kind == "skel":
                    raise SkeletonError(f"{source}: key '{key}' missing (bodies 0..{nb - 1} expected)")
                continue  # the converter can be told to skip rgb/depth; readers that need them check again
            a = np.asarray(d[key])
            if a.ndim != 3 or a.shape[1:] != (NUM_JOINTS, width):
                raise SkeletonError(f"{source}: '{key}' has shape {list(a.shape)}, expected "
                                    f"[frames, {NUM_JOINTS}, {width}]")
            if frames is None:
                frames = a.shape[0]
            elif a.shape[0] != frames:
                raise SkeletonError(f"{source}: '{key}' has {a.shape[0]} frames, other bodies have {frames}")
            d[key] = a
    return d


def num_bodies(d: dict) -> int:
    """Number of bodies stored (``skel_body0 .. skel_body{n-1}``)."""
    n = 0
    while f"skel_body{n}" in d:
        n += 1
    return n


def num_frames(d: dict) -> int:
    """Number of frames of the skeleton sequence (rows of the body arrays; 0 when no body was ever tracked)."""
    return int(np.asarray(d["skel_body0"]).shape[0]) if "skel_body0" in d else 0


def load_skeleton(path: str | os.PathLike) -> dict:
    """Either format, by suffix: ``.npy`` → :func:`read_skeleton_npy`, anything else → :func:`read_skeleton_txt`."""
    path = Path(path)
    return read_skeleton_npy(path) if path.suffix.lower() == ".npy" else read_skeleton_txt(path)


def write_skeleton_npy(d: dict, path: str | os.PathLike) -> Path:
    """Write the dict as the official converter does (``np.save`` of the dict), atomically. The file loads with
    :func:`read_skeleton_npy` and with ``np.load(path, allow_pickle=True).item()``."""
    path = Path(path)
    validate_skeleton(d, str(path))
    buf = io.BytesIO()
    np.save(buf, np.asarray(d, dtype=object), allow_pickle=True)
    return atomic_write_bytes(path, buf.getvalue())


def convert_txt_to_npy(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """``X.skeleton`` → ``X.skeleton.npy`` (next to it unless ``dst`` is given)."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(src.name + ".npy")
    return write_skeleton_npy(read_skeleton_txt(src), dst)


def body_present(d: dict) -> np.ndarray:
    """bool ``[frames, bodies]``: body i was tracked in frame t (its row is not all zero; the converter leaves
    untracked rows at exactly zero, and a tracked joint always has depth z > 0)."""
    nb, t = num_bodies(d), num_frames(d)
    out = np.zeros((t, nb), dtype=bool)
    for i in range(nb):
        out[:, i] = np.any(np.asarray(d[f"skel_body{i}"]) != 0, axis=(1, 2))
    return out


def rgb_array(d: dict) -> np.ndarray:
    """float64 ``[frames, bodies, 25, 2]``: RGB pixel coordinates of every stored body (zero where untracked)."""
    nb, t = num_bodies(d), num_frames(d)
    if nb and "rgb_body0" not in d:
        raise SkeletonError(f"{d.get('file_name', '<dict>')}: no 'rgb_body0' (converted without RGB coordinates?)")
    out = np.zeros((t, nb, NUM_JOINTS, 2))
    for i in range(nb):
        out[:, i] = d[f"rgb_body{i}"]
    return out


def skeleton_array(d: dict, max_bodies: int = 2) -> np.ndarray:
    """float32 ``[3, T, 25, M]`` (C, T, V, M) from ``skel_body{i}``, the layout skeleton models take.

    The first ``max_bodies`` bodies are kept; missing bodies (and frames where a body is not tracked) stay zero —
    the NTU convention that pose models are trained with (a single-person clip has an all-zero second body).
    """
    t = num_frames(d)
    out = np.zeros((3, t, NUM_JOINTS, max_bodies), dtype=np.float32)
    for m in range(min(max_bodies, num_bodies(d))):
        out[:, :, :, m] = np.asarray(d[f"skel_body{m}"], dtype=np.float32).transpose(2, 0, 1)
    return out


def format_skeleton_text(d: dict, body_info: tuple = (0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 2)) -> str:
    """Write a dict back as raw ``.skeleton`` text (orientation and tracking columns are not in the dict: written as
    ``1 0 0 0 2``); used by fixtures and to check the reader round trip."""
    present = body_present(d)
    t = num_frames(d)
    out = [str(t)]
    for f in range(t):
        bodies = np.flatnonzero(present[f])
        count = int(bodies.max()) + 1 if bodies.size else 0  # body i is the i-th listed: list 0..max
        out.append(str(count))
        for b in range(count):
            out.append(" ".join(str(v) for v in (72057594037931000 + b, *body_info[1:])))
            out.append(str(NUM_JOINTS))
            skel, depth, rgb = d[f"skel_body{b}"][f], d[f"depth_body{b}"][f], d[f"rgb_body{b}"][f]
            for j in range(NUM_JOINTS):
                vals = (*skel[j], *depth[j], *rgb[j])
                out.append(" ".join(repr(float(v)) for v in vals) + " 1 0 0 0 2")
    return "\n".join(out) + "\n"

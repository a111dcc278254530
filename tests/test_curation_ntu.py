"""NTU RGB+D 120 input: action names, file names, skeleton readers (text and txt2npy), converter, fixture."""
from __future__ import annotations

import io

import numpy as np
import pytest
from ntu_fixture import make_ntu_root

from llavidal.curation.ntu import (
    MUTUAL_ACTIONS,
    NTU_ACTIONS,
    NTUName,
    SkeletonError,
    body_present,
    convert_txt_to_npy,
    format_skeleton_text,
    load_skeleton,
    parse_skeleton_text,
    read_skeleton_npy,
    read_skeleton_txt,
    rgb_array,
    skeleton_array,
    write_skeleton_npy,
)

STEM = "S001C001P001R001A001"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_ntu_root(tmp_path_factory.mktemp("ntu"), actions=(1, 2, 50))


def assert_same_skeleton(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    assert a["file_name"] == b["file_name"] and list(a["nbodys"]) == list(b["nbodys"]) and a["njoints"] == 25
    for k, v in a.items():
        if "_body" in k:
            np.testing.assert_array_equal(v, b[k], err_msg=k)


# ------------------------------------------------------------------------------------------------ names
def test_action_list():
    assert len(NTU_ACTIONS) == 120 and len(set(NTU_ACTIONS)) == 120
    assert NTU_ACTIONS[0] == "drink water" and NTU_ACTIONS[1] == "eat meal/snack"
    assert NTU_ACTIONS[58] == "walking towards each other" and NTU_ACTIONS[59] == "walking apart from each other"
    assert NTU_ACTIONS[60] == "put on headphone"
    assert NTU_ACTIONS[119] == "finger-guessing game (playing rock-paper-scissors)"
    assert len(MUTUAL_ACTIONS) == 11 + 15 and 50 in MUTUAL_ACTIONS and 61 not in MUTUAL_ACTIONS


@pytest.mark.parametrize("name", ["S001C002P003R002A013", "S001C002P003R002A013_rgb.avi",
                                  "/data/ntu/skeletons/S001C002P003R002A013.skeleton",
                                  "S001C002P003R002A013.skeleton.npy", "x/S001C002P003R002A013_keypoints.npy"])
def test_name_parse(name):
    n = NTUName.parse(name)
    assert (n.setup, n.camera, n.performer, n.replication, n.action) == (1, 2, 3, 2, 13)
    assert n.stem == "S001C002P003R002A013" and n.action_name == "tear up paper" and not n.mutual


@pytest.mark.parametrize("name", ["S001C002P003R002A13", "S001C002P003R002A013.mp4", "foo_rgb.avi",
                                  "S001C002P003R002A121_rgb.avi", "S001C002P003R002A013_rgb.avi.bak", ""])
def test_name_parse_errors(name):
    with pytest.raises(ValueError) as e:
        NTUName.parse(name)
    assert repr(name) in str(e.value)


# ------------------------------------------------------------------------------------------------ readers
def test_txt_and_npy_agree(root):
    txt = read_skeleton_txt(root / "skeletons" / f"{STEM}.skeleton")
    npy = read_skeleton_npy(root / "skeletons" / f"{STEM}.skeleton.npy")
    assert_same_skeleton(txt, npy)
    assert txt["file_name"] == STEM and txt["nbodys"] == [1] * 24
    assert txt["skel_body0"].shape == (24, 25, 3) and txt["rgb_body0"].shape == (24, 25, 2)
    assert txt["depth_body0"].shape == (24, 25, 2) and "skel_body1" not in txt
    two = load_skeleton(root / "skeletons" / "S001C001P001R001A050.skeleton")  # mutual: two bodies
    assert two["nbodys"] == [2] * 24 and two["skel_body1"].shape == (24, 25, 3)
    assert_same_skeleton(two, load_skeleton(root / "skeletons" / "S001C001P001R001A050.skeleton.npy"))


def test_npy_interoperates_with_numpy(tmp_path, root):
    d = load_skeleton(root / "skeletons" / f"{STEM}.skeleton")
    ours = write_skeleton_npy(d, tmp_path / "ours.skeleton.npy")
    assert_same_skeleton(np.load(ours, allow_pickle=True).item(), d)  # what the original's readers do
    theirs = tmp_path / "theirs.skeleton.npy"
    np.save(theirs, d)  # what NTU's txt2npy does
    assert_same_skeleton(read_skeleton_npy(theirs), d)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_converter_round_trip(tmp_path, root):
    src = tmp_path / f"{STEM}.skeleton"
    src.write_bytes((root / "skeletons" / f"{STEM}.skeleton").read_bytes())
    out = convert_txt_to_npy(src)
    assert out.name == f"{STEM}.skeleton.npy"
    assert_same_skeleton(read_skeleton_npy(out), read_skeleton_txt(src))
    assert_same_skeleton(read_skeleton_npy(out), read_skeleton_npy(root / "skeletons" / f"{STEM}.skeleton.npy"))


def test_empty_frames_and_varying_bodies():
    """Frames without bodies are left out of nbodys and keep zero rows; a second body seen in some frames only."""
    t = 5
    rng = np.random.default_rng(0)
    d = {"file_name": STEM, "nbodys": [], "njoints": 25}
    for i in range(2):
        for kind, w in (("skel", 3), ("rgb", 2), ("depth", 2)):
            d[f"{kind}_body{i}"] = np.zeros((t, 25, w))
    counts = [1, 0, 2, 2, 1]
    for f, c in enumerate(counts):
        for i in range(c):
            d[f"skel_body{i}"][f] = rng.uniform(0.5, 3, (25, 3))
            d[f"rgb_body{i}"][f] = rng.uniform(0, 1900, (25, 2))
            d[f"depth_body{i}"][f] = rng.uniform(0, 500, (25, 2))
    d["nbodys"] = [c for c in counts if c]
    text = format_skeleton_text(d)
    assert text.splitlines()[:3] == ["5", "1", "72057594037931000 0 0 0 0 0 0 0.0 0.0 2"]
    back = parse_skeleton_text(text, "mem", STEM)
    assert_same_skeleton(back, d)
    np.testing.assert_array_equal(body_present(back), np.array(counts)[:, None] > np.arange(2))
    arr = skeleton_array(back, max_bodies=3)
    assert arr.shape == (3, 5, 25, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 2, :, 1], d["skel_body1"][2].T.astype(np.float32))
    assert not arr[..., 2].any() and not arr[:, 1].any()  # absent body, empty frame: zeros (NTU convention)
    assert rgb_array(back).shape == (5, 2, 25, 2)


def test_skeleton_array_layout(root):
    d = load_skeleton(root / "skeletons" / f"{STEM}.skeleton.npy")
    arr = skeleton_array(d)
    assert arr.shape == (3, 24, 25, 2) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 7, 3, 0], d["skel_body0"][7, 3].astype(np.float32))  # C of frame 7, joint 4
    assert not arr[..., 1].any()


def _good_text() -> list[str]:
    lines = ["2", "1", "1 0 0 0 0 0 0 0.1 0.2 2", "25"] + [" ".join(["1.0"] * 11 + ["2"])] * 25
    return lines + ["0"]


@pytest.mark.parametrize("edit,line,words", [
    (lambda L: L.__setitem__(0, "two"), 1, "frame count"),
    (lambda L: L.__setitem__(7, "1.0 1.0 oops"), 8, "not a number"),
    (lambda L: L.__setitem__(10, "1.0 " * 11), 11, "expected 12 values"),
    (lambda L: L.__setitem__(3, "24"), 4, "expected 25 joints"),
    (lambda L: L.__setitem__(2, "1 0 0"), 3, "10 values"),
    (lambda L: L.__delitem__(slice(20, None)), 21, "file ends early"),
    (lambda L: L.append("3"), 31, "unexpected data"),
])
def test_malformed_text_names_file_and_line(tmp_path, edit, line, words):
    lines = _good_text()
    parse_skeleton_text("\n".join(lines), "ok")  # the unedited text parses
    edit(lines)
    p = tmp_path / f"{STEM}.skeleton"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonError) as e:
        read_skeleton_txt(p)
    assert str(p) in str(e.value) and f"line {line}:" in str(e.value) and words in str(e.value)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_npy_reader_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arr = np.empty((), dtype=object)
    arr[()] = {"nbodys": [1], "njoints": 25, "x": _Evil()}
    p = tmp_path / "evil.skeleton.npy"
    np.save(p, arr, allow_pickle=True)
    with pytest.raises(SkeletonError, match="refused"):
        read_skeleton_npy(p)
    assert not (tmp_path / "PWNED").exists()


def test_npy_reader_errors(tmp_path):
    p = tmp_path / "plain.skeleton.npy"
    np.save(p, np.zeros((3, 25, 3)))
    with pytest.raises(SkeletonError, match="expected the dict"):
        read_skeleton_npy(p)
    q = tmp_path / "bad.skeleton.npy"
    buf = io.BytesIO()
    np.save(buf, np.asarray({"nbodys": [1], "njoints": 25, "skel_body0": np.zeros((4, 24, 3))}, dtype=object))
    q.write_bytes(buf.getvalue())
    with pytest.raises(SkeletonError, match=r"'skel_body0' has shape \[4, 24, 3\]"):
        read_skeleton_npy(q)
    r = tmp_path / "trunc.skeleton.npy"
    r.write_bytes(buf.getvalue()[:-40])
    with pytest.raises(SkeletonError, match="trunc.skeleton.npy"):
        read_skeleton_npy(r)
    s = tmp_path / "text.skeleton.npy"
    s.write_text("hello")
    with pytest.raises(SkeletonError, match="not a .npy file"):
        read_skeleton_npy(s)


# ------------------------------------------------------------------------------------------------ fixture
def test_fixture_layout_and_separable_actions(tmp_path):
    """Actions are separable from the skeleton alone: nearest class mean of per-joint motion statistics, fitted on
    performer 1 and tested on performers 2 and 3 (other body size, position and noise), is always right."""
    actions = (1, 2, 3, 8, 9, 10, 23, 27)
    root = make_ntu_root(tmp_path / "ntu", performers=(1, 2, 3), actions=actions, with_txt=False, frames=32)
    assert len(list((root / "rgb").glob("*_rgb.avi"))) == 24 and not list((root / "skeletons").glob("*.skeleton"))

    def feat(p, a):
        x = skeleton_array(load_skeleton(root / "skeletons" / f"S001C001P{p:03d}R001A{a:03d}.skeleton.npy"))[..., 0]
        x = x - x[:, :, :1]  # relative to the spine base: [3, T, 25]
        return np.concatenate([x.std(axis=1).ravel(), np.abs(np.diff(x, axis=1)).mean(axis=1).ravel()])

    means = np.stack([feat(1, a) for a in actions])
    for p in (2, 3):
        pred = [actions[int(np.argmin(((means - feat(p, a)) ** 2).sum(1)))] for a in actions]
        assert pred == list(actions)

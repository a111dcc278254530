"""``llavidal curate crop / stitch-map / stitch``: geometry against direct computation, frame-count mismatches,
failures, resume, map invariants over seeds, stitched content and order, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ntu_fixture import background, make_ntu_root, make_skeleton, render_clip

from llavidal.cli import main
from llavidal.curation.crop import (
    CropConfig,
    crop_dataset,
    crop_frame,
    joint_boxes,
    pad_crop,
    transform_keypoints,
)
from llavidal.curation.ntu import NTUName, body_present, load_skeleton, rgb_array, write_skeleton_npy
from llavidal.curation.stitch import (
    ADL_GROUPS,
    action_sentence,
    build_stitch_map,
    check_stitch_map,
    load_stitch_map,
)
from llavidal.io_utils import read_jsonl
from llavidal.video.io import read_frames, write_video

SIZE = 64  # crop size used in these tests (small: fast)
SLACK = 8


@pytest.fixture(scope="module")
def ntu(tmp_path_factory):
    return make_ntu_root(tmp_path_factory.mktemp("ntu"), actions=(1, 2, 50), performers=(1,), with_txt=False)


@pytest.fixture(scope="module")
def cropped(ntu, tmp_path_factory):
    out = tmp_path_factory.mktemp("crops")
    rc = main(["curate", "crop", "--ntu-root", str(ntu), "--out", str(out), "--slack", str(SLACK), "--size",
               str(SIZE), "--no-progress"])
    assert rc == 0
    return out


# ------------------------------------------------------------------------------------------------ geometry
def test_joint_boxes_direct():
    rng = np.random.default_rng(0)
    t, b = 7, 2
    rgb = rng.uniform(10, 300, (t, b, 25, 2))
    present = np.ones((t, b), bool)
    present[1, 1] = False          # only body 0 counts in frame 1
    present[3] = present[4] = False  # no body: nearest box (3 -> 2, 4 -> 5: ties go to the earlier frame)
    present[5, 0] = False
    rgb[6, 0, 3] = np.nan          # a NaN joint is left out
    rgb[1, 1] = 1e6                # an untracked body's coordinates never count
    boxes, reused, clamped = joint_boxes(rgb, present, slack=5)
    for f in range(t):
        src = {3: 2, 4: 5}.get(f, f)
        pts = rgb[src][present[src]].reshape(-1, 2)
        pts = pts[np.isfinite(pts).all(1)]
        want = [math.floor(pts[:, 0].min()) - 5, math.floor(pts[:, 1].min()) - 5,
                math.ceil(pts[:, 0].max()) + 6, math.ceil(pts[:, 1].max()) + 6]
        want = [v - v % 2 for v in want[:2]] + [v + v % 2 for v in want[2:]]  # outward to even coordinates
        assert boxes[f].tolist() == want, f
    assert reused.tolist() == [False, False, False, True, True, False, False] and clamped == 0
    # a tie (frame 1 between frames 0 and 2) takes the earlier frame
    boxes2, _, _ = joint_boxes(rgb[:3], np.array([[True, True], [False, False], [True, True]]), slack=0)
    assert boxes2[1].tolist() == boxes2[0].tolist() != boxes2[2].tolist()
    sq, _, _ = joint_boxes(rgb[:1], present[:1], slack=0, square=True)
    assert sq[0, 2] - sq[0, 0] == sq[0, 3] - sq[0, 1]
    big, _, n = joint_boxes(np.full((1, 1, 25, 2), 1e9), np.ones((1, 1), bool), slack=0, frame_size=(100, 50))
    assert n == 1 and big[0].tolist() == [198, 98, 200, 100]
    assert not (boxes % 2).any() and not (sq % 2).any()
    with pytest.raises(ValueError, match="no frame has a tracked body"):
        joint_boxes(rgb, np.zeros((t, b), bool), slack=0)


def test_pad_crop_direct():
    frame = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    inside = pad_crop(frame, (2, 3, 7, 9))
    np.testing.assert_array_equal(inside, frame[3:9, 2:7])
    out = pad_crop(frame, (-3, -2, 5, 12))
    assert out.shape == (14, 8, 3)
    np.testing.assert_array_equal(out[2:12, 3:8], frame[0:10, 0:5])
    mask = np.ones(out.shape[:2], bool)
    mask[2:12, 3:8] = False
    assert not out[mask].any()  # black where the box leaves the frame
    assert not pad_crop(frame, (20, 20, 25, 26)).any()


def test_crop_frame_keypoint_transform():
    """A bright dot lands where transform_keypoints says (centroid within 0.15 px), shrinking or enlarging, on
    either side of a border."""
    for box, dot in [((40, 30, 140, 90), (70, 55)), ((-20, -10, 60, 110), (5, 3)), ((150, 80, 230, 130), (190, 99)),
                     ((60, 40, 80, 64), (71, 47))]:
        frame = np.zeros((100, 200, 3), np.uint8)
        frame[dot[1], dot[0]] = 255
        out = crop_frame(frame, box, 48)[..., 0].astype(float)
        ys, xs = np.indices(out.shape)
        got = np.array([(out * xs).sum(), (out * ys).sum()]) / out.sum()
        want = transform_keypoints(np.array([[dot]], float), np.array([box]), 48)[0, 0]
        assert np.abs(got - want).max() < 0.15, (box, got, want)


# ------------------------------------------------------------------------------------------------ crop end to end
def test_crop_outputs_match_direct_computation(ntu, cropped):
    stem = "S001C001P001R001A050"  # two people
    d = load_skeleton(ntu / "skeletons" / f"{stem}.skeleton.npy")
    rgb, present = rgb_array(d), body_present(d)
    boxes = np.load(cropped / f"{stem}_boxes.npy")
    want, _, _ = joint_boxes(rgb, present, SLACK, frame_size=(160, 120))
    np.testing.assert_array_equal(boxes, want)
    k = np.load(cropped / f"{stem}_keypoints.npy")
    assert k.shape == (24, 2, 25, 2) and k.dtype == np.float32
    np.testing.assert_allclose(k, transform_keypoints(rgb, want, SIZE), rtol=0, atol=1e-3)
    x0, y0, x1, y1 = want[5]
    np.testing.assert_allclose(k[5, 1, 3], (rgb[5, 1, 3] - [x0, y0] + 0.5) * SIZE / [x1 - x0, y1 - y0] - 0.5,
                               atol=1e-3)
    # content: the background encodes source x (red) and y (green); a crop pixel shows the source pixel its box says
    frames, n = read_frames(cropped / f"{stem}_rgb.avi")
    assert n == 24 and frames.shape == (24, SIZE, SIZE, 3)
    bg = background(160, 120).astype(float)
    src, _ = read_frames(ntu / "rgb" / f"{stem}_rgb.avi")
    for f in (0, 12, 23):
        direct = crop_frame(src[f], want[f], SIZE).astype(float)
        assert np.abs(frames[f] - direct).mean() < 6  # only the codec's loss between them
        x0, y0, x1, y1 = want[f]
        u = np.arange(SIZE)
        sx = x0 + (u + 0.5) * (x1 - x0) / SIZE - 0.5
        sy = y0 + (u + 0.5) * (y1 - y0) / SIZE - 0.5
        inside = (sx[None, :] > 2) & (sx[None, :] < 157) & (sy[:, None] > 2) & (sy[:, None] < 117)
        outside = (sx[None, :] < -2) | (sx[None, :] > 161) | (sy[:, None] < -2) | (sy[:, None] > 121)
        red = np.interp(sx, np.arange(160), bg[0, :, 0])[None, :].repeat(SIZE, 0)
        figure = (direct.min(axis=-1) > 120) | ((direct[..., :2].min(axis=-1) > 150) & (direct[..., 2] < 45))
        for _ in range(2):  # the white and the yellow stick figure, grown by 2 px (codec halo)
            figure = figure | np.roll(figure, 1, 0) | np.roll(figure, -1, 0) | np.roll(figure, 1, 1) | np.roll(
                figure, -1, 1)
        sel = inside & ~figure
        assert np.median(np.abs(frames[f][..., 0] - red)[sel]) < 8
        if outside.any():
            assert frames[f][outside].mean() < 8  # black padding


def test_crop_manifest_and_records(cropped):
    m = json.loads((cropped / "crop_manifest.json").read_text())
    assert m["totals"]["clips_done"] == 3 and m["this_run"]["failed"] == 0
    assert m["config"]["slack"] == SLACK and m["config"]["size"] == SIZE
    recs = {r["stem"]: r for r in read_jsonl(cropped / "crop_records.jsonl")}
    assert recs["S001C001P001R001A050"]["bodies"] == 2 and recs["S001C001P001R001A001"]["frames_written"] == 24


def test_crop_mismatch_missing_frames_failures_and_resume(tmp_path):
    root = make_ntu_root(tmp_path / "ntu", performers=(1,), actions=(1, 2, 3, 8), with_txt=False)
    names = {a: NTUName(1, 1, 1, 1, a) for a in (1, 2, 3, 8)}
    d1 = make_skeleton(names[1])
    write_video(root / "rgb" / f"{names[1].stem}_rgb.avi", render_clip(d1, frames=20))  # video shorter
    d2 = make_skeleton(names[2])
    write_video(root / "rgb" / f"{names[2].stem}_rgb.avi", render_clip(d2, frames=30))  # video longer
    d3 = make_skeleton(names[3])
    d3["skel_body0"][3:6] = 0  # frames 3..5 without a body
    d3["rgb_body0"][3:6] = 0
    write_skeleton_npy(d3, root / "skeletons" / f"{names[3].stem}.skeleton.npy")
    (root / "rgb" / "S001C001P002R001A001_rgb.avi").write_bytes(b"not a video at all" * 10)  # broken video
    make_ntu_root(tmp_path / "other", performers=(2,), actions=(1,), with_txt=False)
    (tmp_path / "other" / "rgb" / "S001C001P002R001A001_rgb.avi").rename(
        root / "rgb" / "S001C001P003R001A001_rgb.avi")  # a good video without skeleton
    (root / "rgb" / "notes_rgb.avi").write_bytes(b"x")  # not an NTU name: ignored and reported
    write_skeleton_npy(make_skeleton(NTUName(1, 1, 2, 1, 1)),
                       root / "skeletons" / "S001C001P002R001A001.skeleton.npy")
    out = tmp_path / "crops"
    args = ["curate", "crop", "--ntu-root", str(root), "--out", str(out), "--slack", "4", "--size", "32",
            "--no-progress", "--format", "mp4"]
    assert main(args) == 1  # failures → exit status 1, the others are done
    m = json.loads((out / "crop_manifest.json").read_text())
    recs = {r["stem"]: r for r in read_jsonl(out / "crop_records.jsonl")}
    assert m["this_run"]["cropped"] == 4 and m["this_run"]["failed"] == 2
    assert (recs[names[1].stem]["video_frames"], recs[names[1].stem]["frames_written"]) == (20, 20)
    assert (recs[names[2].stem]["video_frames"], recs[names[2].stem]["frames_written"]) == (30, 24)
    assert m["totals"]["clips_with_frame_mismatch"] == 2
    assert {x["stem"] for x in m["frame_mismatches"]} == {names[1].stem, names[2].stem}
    assert recs[names[3].stem]["frames_without_skeleton"] == 3 and m["totals"]["frames_without_skeleton"] == 3
    b3 = np.load(out / f"{names[3].stem}_boxes.npy")
    assert (b3[3] == b3[2]).all() and (b3[4] == b3[2]).all() and (b3[5] == b3[6]).all()
    k3 = np.load(out / f"{names[3].stem}_keypoints.npy")
    assert np.isnan(k3[3:6]).all() and not np.isnan(k3[6]).any()
    assert read_frames(out / f"{names[1].stem}_rgb.mp4")[1] == 20
    assert read_frames(out / f"{names[2].stem}_rgb.mp4")[1] == 24
    fails = {f["stem"]: f["error"] for f in read_jsonl(out / "failures.jsonl")}
    assert "S001C001P002R001A001_rgb.avi" in fails["S001C001P002R001A001"]  # the broken video is named
    assert "no skeleton" in fails["S001C001P003R001A001"]
    assert m["ignored_files"] == ["notes_rgb.avi"]
    # resume: a finished clip is skipped; a deleted output and a half-written one (a kill) are redone
    keep = out / f"{names[8].stem}_rgb.mp4"
    mtime = keep.stat().st_mtime_ns
    (out / f"{names[1].stem}_rgb.mp4").unlink()
    (out / f"{names[2].stem}_rgb.mp4").rename(out / f".{names[2].stem}_rgb.123.tmp.mp4")
    (root / "rgb" / "S001C001P002R001A001_rgb.avi").unlink()
    main(args)
    m2 = json.loads((out / "crop_manifest.json").read_text())
    assert m2["this_run"]["cropped"] == 2 and m2["this_run"]["skipped_existing"] == 2
    assert m2["this_run"]["failed"] == 1 and m2["totals"]["clips_done"] == 4
    assert keep.stat().st_mtime_ns == mtime
    assert (out / f"{names[2].stem}_rgb.mp4").is_file()
    # killed after a video was renamed into place but before its record was appended: done, and reported
    lines = (out / "crop_records.jsonl").read_text().splitlines()
    (out / "crop_records.jsonl").write_text("\n".join(x for x in lines if names[8].stem not in x) + "\n")
    main(args)
    m3 = json.loads((out / "crop_manifest.json").read_text())
    assert m3["this_run"]["cropped"] == 0 and m3["totals"]["clips_done"] == 4
    assert m3["outputs_without_record"] == [f"{names[8].stem}_rgb.mp4"]


def test_yuv_and_rgb_paths_agree(ntu, tmp_path):
    """4:2:0 sources are cropped on their planes; others (here yuv444p H.264) through RGB: same result."""
    frame = render_clip(make_skeleton(NTUName(1, 1, 1, 1, 1)), frames=1)[0]
    import av

    from llavidal.curation.crop import crop_yuv420

    yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
    for box in [(40, 30, 140, 90), (-20, -10, 60, 110), (150, 80, 230, 130), (200, 200, 220, 220)]:
        a = crop_yuv420(yuv, box, 48).to_ndarray(format="rgb24").astype(float)
        b = crop_frame(frame, box, 48).astype(float)
        assert np.abs(a - b).mean() < 3, box
    root = tmp_path / "ntu"
    (root / "rgb").mkdir(parents=True)
    (root / "skeletons").symlink_to(ntu / "skeletons")
    stem = "S001C001P001R001A002"
    src, _ = read_frames(ntu / "rgb" / f"{stem}_rgb.avi")
    write_video(root / "rgb" / f"{stem}_rgb.mp4", src, pix_fmt="yuv444p")
    with av.open(str(root / "rgb" / f"{stem}_rgb.mp4")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"  # not 4:2:0: the RGB path
    (root / "rgb" / f"{stem.replace('A002', 'A001')}_rgb.avi").symlink_to(ntu / "rgb" / f"{stem}_rgb.avi")
    m = crop_dataset(root, tmp_path / "out", CropConfig(slack=SLACK, size=SIZE, progress=False))
    assert m["this_run"]["cropped"] == 2
    via_rgb, _ = read_frames(tmp_path / "out" / f"{stem}_rgb.avi")
    boxes = np.load(tmp_path / "out" / f"{stem}_boxes.npy")
    src444, _ = read_frames(root / "rgb" / f"{stem}_rgb.mp4")
    direct = np.stack([crop_frame(f, b, SIZE) for f, b in zip(src444, boxes)]).astype(float)
    assert np.abs(via_rgb - direct).mean() < 4


def test_crop_workers_same_result(ntu, cropped, tmp_path):
    crop_dataset(ntu, tmp_path, CropConfig(slack=SLACK, size=SIZE, workers=2, progress=False))
    for p in cropped.glob("*_keypoints.npy"):
        np.testing.assert_array_equal(np.load(p), np.load(tmp_path / p.name))
    assert len(list(tmp_path.glob("*_rgb.avi"))) == 3


# ------------------------------------------------------------------------------------------------ the map
def _clip_list(rng, performers=4):
    """Clip names like NTU's: several setups, 3 cameras, 2 replications, uneven action coverage."""
    clips = []
    for p in range(1, performers + 1):
        for s in rng.choice(np.arange(1, 10), size=2, replace=False):
            for a in rng.choice(np.arange(1, 121), size=40, replace=False):
                for r in (1, 2):
                    for c in rng.choice([1, 2, 3], size=int(rng.integers(1, 4)), replace=False):
                        clips.append(f"{NTUName(int(s), int(c), p, r, int(a)).stem}_rgb.avi")
    return clips


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("lo,hi,reuse", [(2, 5, False), (1, 3, True), (3, 6, False)])
def test_stitch_map_invariants(seed, lo, hi, reuse):
    clips = _clip_list(np.random.default_rng(seed + 100))
    smap, stats = build_stitch_map(clips, seed=seed, min_actions=lo, max_actions=hi, reuse_views=reuse)
    check_stitch_map(smap, min_actions=lo, max_actions=max(hi, 7), reuse_views=reuse)
    assert stats["videos"] == len(smap) == stats["group_videos"] + stats["random_videos"]
    assert stats["random_videos"] > stats["group_videos"] > 0
    # every clip/performance is used once or counted as left over
    unit = (lambda n: n.stem) if reuse else (lambda n: (n.setup, n.performer, n.replication, n.action))
    unit_of = {c: unit(NTUName.parse(c)) for c in clips}
    units = set(unit_of.values())
    performer_of = {unit_of[c]: NTUName.parse(c).performer for c in clips}
    action_of = {unit_of[c]: NTUName.parse(c).action for c in clips}
    used = [unit_of[c] for v in smap.values() for c in v]
    assert len(used) == len(set(used)) and len(used) + sum(stats["units_left_over"].values()) == len(units)
    per_perf: dict[int, list[str]] = {}
    for name in smap:
        per_perf.setdefault(int(name[:3]), []).append(name)
    for p, names in per_perf.items():  # names run 001, 002, ... per performer
        assert names == [f"{p:03d}_video_{i:03d}" for i in range(1, len(names) + 1)]
        # what is left over could not make another video: fewer than `lo` distinct actions
        left = {u for u in units if performer_of[u] == p} - set(used)
        assert len({action_of[u] for u in left}) < lo
    group_orders = [list(g) for g in ADL_GROUPS.values()]
    for name, v in smap.items():
        acts = [NTUName.parse(c).action for c in v]
        if len(v) > hi:  # only a semantic-group video can be longer than max
            assert any(acts == [a for a in g if a in acts] for g in group_orders)
    # deterministic, seed-dependent, and per performer independent of the others
    assert build_stitch_map(clips, seed=seed, min_actions=lo, max_actions=hi, reuse_views=reuse)[0] == smap
    assert build_stitch_map(clips, seed=seed + 7, min_actions=lo, max_actions=hi, reuse_views=reuse)[0] != smap
    fewer = [c for c in clips if NTUName.parse(c).performer != 2]
    smap2, _ = build_stitch_map(fewer, seed=seed, min_actions=lo, max_actions=hi, reuse_views=reuse)
    assert smap2 == {k: v for k, v in smap.items() if not k.startswith("002_")}


def test_stitch_map_group_videos_come_first_in_group_order():
    clips = [f"{NTUName(1, 1, 7, 1, a).stem}_rgb.avi" for a in (8, 9, 14, 15, 42, 43, 120)]
    smap, stats = build_stitch_map(clips, seed=0)
    acts = [[NTUName.parse(c).action for c in v] for v in smap.values()]
    assert acts[0] == [14, 15]  # dressing: put on, then take off the jacket
    assert acts[1] == [8, 9]  # sitting and resting: sit down, then stand up
    assert acts[2] == [42, 43]  # losing balance (9 is used already)
    assert stats["units_left_over"] == {"007": 1} and list(smap) == ["007_video_001", "007_video_002",
                                                                     "007_video_003"]


def test_check_stitch_map_catches_violations():
    a, b = "S001C001P001R001A001_rgb.avi", "S001C001P001R001A002_rgb.avi"
    check_stitch_map({"001_video_001": [a, b]})
    bad = [({"001_video_001": [a, "S001C001P002R001A002_rgb.avi"]}, "several performers"),
           ({"001_video_001": [a, "S002C001P001R001A001_rgb.avi"]}, "an action repeats"),
           ({"001_video_001": [a, b], "001_video_002": ["S001C002P001R001A001_rgb.avi"]}, "same performance"),
           ({"002_video_001": [a, b]}, "of its performer"),
           ({"001_video_001": [a] * 0}, "non-empty")]
    for smap, words in bad:
        with pytest.raises(ValueError, match=words):
            check_stitch_map(smap)


def test_sentence():
    assert action_sentence(["drink water"]) == "The person in the video performs one action: drink water."
    s = action_sentence(["drink water", "reading", "falling"])
    assert s.index("drink water") < s.index("reading") < s.index("falling") and s.endswith("falling.")


# ------------------------------------------------------------------------------------------------ stitching
COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20), (20, 250, 250)]


def _solid_clips(folder, n_frames):
    """Clips of one solid colour each (colour i for action i+1), n frames each."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, n in enumerate(n_frames):
        name = f"{NTUName(1, 1, 4, 1, i + 1).stem}_rgb.avi"
        frames = np.zeros((n, 32, 32, 3), np.uint8) + np.array(COLOURS[i], np.uint8)
        frames[:, :2, :2] = 0
        write_video(folder / name, frames, fps=30)
        files.append(name)
    return files


def test_stitch_order_frames_failures_resume(tmp_path):
    crops = tmp_path / "crops"
    files = _solid_clips(crops, [5, 9, 3, 7, 4])
    smap = {"004_video_001": [files[2], files[0], files[1]], "004_video_002": [files[4], files[3]],
            "004_video_003": [files[0], "S001C001P004R001A077_rgb.avi"],  # missing clip
            "004_video_004": [files[1], "S001C001P004R001A078_rgb.avi"]}  # corrupt clip
    (crops / "S001C001P004R001A078_rgb.avi").write_bytes(b"\x00" * 300)
    (tmp_path / "map.json").write_text(json.dumps(smap))
    out = tmp_path / "stitched"
    args = ["curate", "stitch", "--crops", str(crops), "--map", str(tmp_path / "map.json"), "--out", str(out),
            "--no-progress"]
    assert main(args) == 1
    frames, n = read_frames(out / "004_video_001.mp4")
    assert n == 3 + 5 + 9
    colour = frames[:, 16, 16].astype(int)
    want = np.array([COLOURS[2]] * 3 + [COLOURS[0]] * 5 + [COLOURS[1]] * 9)
    assert np.abs(colour - want).max() < 30  # every frame shows its clip, in map order
    assert read_frames(out / "004_video_002.mp4")[1] == 4 + 7
    assert not (out / "004_video_003.mp4").exists() and not (out / "004_video_004.mp4").exists()
    assert not list(out.glob(".*tmp*"))  # the failed video left no partial file
    fails = {f["name"]: f["error"] for f in read_jsonl(out / "failures.jsonl")}
    assert "S001C001P004R001A077_rgb.avi" in fails["004_video_003"]
    assert "S001C001P004R001A078_rgb.avi" in fails["004_video_004"]
    acts = json.loads((out / "actions.json").read_text())
    assert sorted(acts) == ["004_video_001", "004_video_002"]
    assert acts["004_video_001"]["actions"] == ["brushing teeth", "drink water", "eat meal/snack"]
    assert acts["004_video_001"]["sentence"] == action_sentence(acts["004_video_001"]["actions"])
    m = json.loads((out / "stitch_manifest.json").read_text())
    assert m["this_run"]["stitched"] == 2 and m["this_run"]["failed"] == 2 and m["videos_done"] == 2
    assert m["this_run"]["copied"] == 2  # identical MPEG-4 streams: packets copied
    # resume after fixing the clips: only the failed videos are made, finished ones are not touched
    mtime = (out / "004_video_001.mp4").stat().st_mtime_ns
    for a, n in ((77, 6), (78, 2)):
        write_video(crops / f"S001C001P004R001A{a:03d}_rgb.mp4", np.zeros((n, 32, 32, 3), np.uint8))
    (crops / "S001C001P004R001A078_rgb.avi").unlink()  # map names .avi; the .mp4 of the same stem is used
    assert main(args + ["--mode", "copy"]) == 1  # MPEG-4 AVI + H.264 MP4 clips cannot be joined by copying
    assert "cannot stitch by copying" in read_jsonl(out / "failures.jsonl")[-1]["error"]
    assert main(args) == 0  # auto: re-encoded, and said so
    m = json.loads((out / "stitch_manifest.json").read_text())
    assert m["this_run"]["reencoded"] == 2 and all(n["copy_refused"] for n in m["notes_this_run"])
    assert (out / "004_video_001.mp4").stat().st_mtime_ns == mtime
    assert read_frames(out / "004_video_003.mp4")[1] == 5 + 6 and read_frames(out / "004_video_004.mp4")[1] == 11
    assert sorted(json.loads((out / "actions.json").read_text())) == sorted(smap)


def test_cli_crop_map_stitch_end_to_end(ntu, cropped, tmp_path):
    map_path = tmp_path / "map.json"
    assert main(["curate", "stitch-map", "--crops", str(cropped), "--out", str(map_path), "--seed", "3"]) == 0
    smap = load_stitch_map(map_path)
    assert main(["curate", "stitch-map", "--ntu-root", str(ntu), "--out", str(tmp_path / "m2.json"), "--seed",
                 "3"]) == 0
    assert load_stitch_map(tmp_path / "m2.json") == smap  # the NTU root and its crops give the same map
    stats = json.loads((tmp_path / "map.json.manifest.json").read_text())
    # 3 clips of performer 1 (actions 1, 2, 50): a group video of 1+2, then 50 is left alone
    assert smap == {"001_video_001": ["S001C001P001R001A001_rgb.avi", "S001C001P001R001A002_rgb.avi"]}
    assert stats["units_left_over"] == {"001": 1}
    out = tmp_path / "st"
    assert main(["curate", "stitch", "--crops", str(cropped), "--map", str(map_path), "--out", str(out),
                 "--no-progress"]) == 0
    frames, n = read_frames(out / "001_video_001.mp4")
    assert n == 48 and frames.shape[1:] == (SIZE, SIZE, 3)
    a, _ = read_frames(cropped / "S001C001P001R001A001_rgb.avi")
    b, _ = read_frames(cropped / "S001C001P001R001A002_rgb.avi")
    both = np.concatenate([a, b]).astype(float)
    err_same = np.abs(frames - both).mean()
    err_swapped = np.abs(frames - np.concatenate([b, a])).mean()
    assert err_same == 0 and err_swapped > 4  # packets copied: the very frames of the clips, in map order
    m = json.loads((out / "stitch_manifest.json").read_text())
    assert m["this_run"]["copied"] == 1  # crops of one run share their stream parameters: lossless join
    out2 = tmp_path / "st2"
    assert main(["curate", "stitch", "--crops", str(cropped), "--map", str(map_path), "--out", str(out2),
                 "--no-progress", "--mode", "reencode"]) == 0
    again, n2 = read_frames(out2 / "001_video_001.mp4")
    assert n2 == 48 and np.abs(again.astype(float) - frames).mean() < 6  # one more lossy generation
    assert json.loads((out2 / "actions.json").read_text()) == json.loads((out / "actions.json").read_text())
    with pytest.raises(SystemExit, match="exactly one of"):
        main(["curate", "stitch-map", "--out", str(map_path)])

"""Object features (``llavidal extract-objects``): detection JSON validation, tracking, 8-frame sampling, crops,
CLIP embeddings against a direct computation, failure reporting, resume and the CLI — on videos rendered here."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from llavidal.features import load_feature, validate_feature
from llavidal.io_utils import read_jsonl
from llavidal.objects import (
    Detection,
    DetectionError,
    ObjectExtractConfig,
    TrackConfig,
    TrackStats,
    VideoDetections,
    crop_box,
    extract_objects,
    link_tracks,
    make_detector,
    parse_video_detections,
    register_detector,
    sample_positions,
    select_tracks,
)
from llavidal.video.io import frame_indices, read_frames, write_video

W, H, T = 160, 120, 24
RED, BLUE = (220, 30, 30), (30, 60, 220)


def box_a(f):  # red "cup": 24x16, moving right 4 px per frame, every frame but 10
    return [8 + 4 * f, 40, 32 + 4 * f, 56]


def box_b(f):  # blue "book": 18x20 at the right border, moving down, frames 4..19
    return [140, 4 + 3 * (f - 4), 158, 24 + 3 * (f - 4)]


B_FRAMES = range(4, 20)


def render(path, with_objects=True):
    frames = np.full((T, H, W, 3), 128, np.uint8)
    if with_objects:
        for f in range(T):
            x1, y1, x2, y2 = box_a(f)
            frames[f, y1:y2, x1:x2] = RED
            if f in B_FRAMES:
                x1, y1, x2, y2 = box_b(f)
                frames[f, y1:y2, x1:x2] = BLUE
    return write_video(path, frames, fps=8)


def scene_detections(video="scene.mp4"):
    frames = {}
    for f in range(T):
        dets = [] if f == 10 else [{"box": box_a(f), "label": "cup", "score": 0.9}]
        if f in B_FRAMES:
            dets.append({"box": box_b(f), "label": "book", "score": 0.8})
        if f == 12:  # a one-frame false positive: a track too short to keep
            dets.append({"box": [60, 90, 70, 100], "label": "phone", "score": 0.5})
        frames[str(f)] = dets
    return {"video": video, "width": W, "height": H, "frames": frames}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip

    spec = TinyClipSpec(vision_hidden_size=64, vision_intermediate_size=128, vision_heads=4, projection_dim=512)
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=0, spec=spec)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """videos/ (scene, empty, badjson, broken) and dets/ (one JSON per video)."""
    root = tmp_path_factory.mktemp("scene")
    videos, dets = root / "videos", root / "dets"
    dets.mkdir()
    render(videos / "scene.mp4")
    render(videos / "empty.mp4", with_objects=False)
    render(videos / "badjson.mp4")
    (videos / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    (dets / "scene.json").write_text(json.dumps(scene_detections()))
    (dets / "empty.json").write_text(json.dumps({"frames": {str(f): [] for f in range(T)}}))
    bad = scene_detections("badjson.mp4")
    bad["frames"]["3"][0]["box"] = [1, 2, 3]
    (dets / "badjson.json").write_text(json.dumps(bad))
    (dets / "broken.json").write_text(json.dumps(scene_detections("broken.mp4")))
    return videos, dets


def cfg_for(clip_dir, **kw) -> ObjectExtractConfig:
    return ObjectExtractConfig(clip=str(clip_dir), device="cpu", progress=False, workers=kw.pop("workers", 2), **kw)


# ---------------------------------------------------------------- tracking
def crossing(missing_a_at=6):
    """Two same-label boxes crossing at frame 10 (identical boxes there); A undetected at one frame."""
    frames = {}
    for f in range(21):
        a = Detection((5.0 * f, 50, 5.0 * f + 20, 70), "cup", 0.9)
        b = Detection((100.0 - 5 * f, 50, 120.0 - 5 * f, 70), "cup", 0.9)
        frames[f] = [b] if f == missing_a_at else [b, a] if f % 2 else [a, b]  # order must not matter
    return VideoDetections("crossing", frames)


@pytest.mark.parametrize("matcher", ["hungarian", "greedy"])
def test_tracks_cross_paths_and_bridge_a_gap(matcher):
    stats = TrackStats()
    tracks = link_tracks(crossing(), TrackConfig(matcher=matcher), stats)
    assert stats.matcher == matcher and stats.detections == 41
    assert sorted(t.length for t in tracks) == [20, 21]
    for t in tracks:
        xs = [b[0] for b in t.boxes]
        steps = set(np.diff(xs))
        assert steps in ({5.0}, {-5.0}, {5.0, 10.0}), (t.frames, xs)  # one direction; 10 = across the gap
    a = next(t for t in tracks if t.length == 20)
    assert 6 not in a.frames and a.frames == [f for f in range(21) if f != 6]


def test_gap_longer_than_max_gap_splits_and_labels_do_not_mix():
    tracks = link_tracks(crossing(), TrackConfig(max_gap=0))
    assert sorted(t.length for t in tracks) == [6, 14, 21]  # A is cut at its missing frame
    frames = {f: [Detection((10, 10, 30, 30), "cup" if f < 3 else "bowl")] for f in range(6)}
    assert [t.label for t in link_tracks(VideoDetections("x", frames))] == ["cup", "bowl"]
    assert len(link_tracks(VideoDetections("x", frames), TrackConfig(match_labels=False))) == 1


def test_given_track_ids_are_kept_and_mixed_ids_refused():
    frames = {f: [Detection((0, 0, 10, 10), "cup", 1.0, "a"), Detection((50 - 10 * f, 0, 60 - 10 * f, 10), "cup",
                                                                         1.0, 7)] for f in range(4)}
    stats = TrackStats()
    tracks = link_tracks(VideoDetections("x", frames), stats=stats)
    assert stats.matcher == "given track_id" and sorted(map(str, (t.track_id for t in tracks))) == ["7", "a"]
    doc = {"frames": {"0": [{"box": [0, 0, 1, 1], "track_id": 1}, {"box": [0, 0, 2, 2]}]}}
    with pytest.raises(DetectionError, match=r"d.json: track_id is given on 1 of 2 detections"):
        parse_video_detections(doc, "d.json")


def test_select_drops_short_tracks_and_keeps_the_best():
    frames = {f: [Detection((20.0 * k, 0, 20.0 * k + 10, 10), f"o{k}", 0.5 + 0.1 * k) for k in range(4)
                  if f < 3 + 2 * k] for f in range(12)}
    stats = TrackStats()
    tracks = link_tracks(VideoDetections("x", frames), stats=stats)
    kept = select_tracks(tracks, TrackConfig(min_length=4, max_objects=2), stats)
    assert [t.label for t in kept] == ["o3", "o2"]  # rank = length x score: 9*0.8, 7*0.7, 5*0.6
    assert (stats.tracks, stats.short, stats.over_max, stats.kept) == (4, 1, 1, 2)


# ---------------------------------------------------------------- sampling and crops
def test_eight_frame_sampling_positions():
    assert sample_positions(23).tolist() == [1, 4, 7, 10, 12, 15, 18, 21]  # centres of 8 parts of 23
    assert sample_positions(16).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_positions(8).tolist() == list(range(8))  # the video-feature frame rule would repeat 4 and miss 7
    assert frame_indices(8, 8).tolist() == [0, 1, 2, 3, 4, 4, 5, 6]
    assert sample_positions(3).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_positions(1).tolist() == [0] * 8


def test_crop_boxes_square_with_context_and_clipped_at_the_border():
    assert crop_box([40, 40, 60, 50], 160, 120) == (38, 33, 62, 57)  # side 20 + 2*2 = 24, centred
    assert crop_box([40, 40, 60, 50], 160, 120, square=False) == (38, 38, 62, 52)
    assert crop_box([140, 4, 158, 24], 160, 120) == (136, 2, 160, 26)  # shifted back inside on the right
    assert crop_box([-10, -5, 20, 15], 160, 120) == (0, 0, 36, 36)  # partly outside: moved in
    assert crop_box([-50, 10, 300, 40], 160, 120) == (0, 0, 160, 120)  # larger than the frame: clipped
    with pytest.raises(ValueError, match=r"outside the 160x120 frame"):
        crop_box([170, 10, 180, 20], 160, 120)


@pytest.mark.parametrize("frames, match", [
    ({"0": [{"box": [1, 2, 3]}]}, r'det.json: frames\["0"\]\[0\].box: expected 4 numbers'),
    ({"0": [{"box": [5, 2, 3, 9]}]}, r'frames\["0"\]\[0\].box: expected .* positive width'),
    ({"0": [{"box": [0, 0, 3, 9], "score": 1.5}]}, r'frames\["0"\]\[0\].score: expected a number in \[0, 1\]'),
    ({"0": [{"box": [0, 0, 3, 9], "colour": "red"}]}, r"frames\[\"0\"\]\[0\]: unknown field\(s\) \['colour'\]"),
    ({"zero": []}, r"frame key 'zero' is not a frame index"),
    ({"0": {"box": [0, 0, 1, 1]}}, r'frames\["0"\]: expected a list of detections'),
])
def test_detection_schema_errors_name_file_frame_and_field(frames, match):
    with pytest.raises(DetectionError, match=match):
        parse_video_detections({"frames": frames}, "det.json")


def test_xywh_boxes_are_converted():
    d = parse_video_detections({"box_format": "xywh", "frames": {"2": [{"box": [10, 20, 5, 6]}]}}, "x")
    assert d.frames[2][0].box == (10, 20, 15, 26) and d.frames[2][0].label == "object"


# ---------------------------------------------------------------- extraction
def direct_embeddings(clip_dir, video, frames, boxes):
    """The expected rows, computed without llavidal.objects: read, crop, CLIP processor, image_embeds."""
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    from llavidal.video.clip import quiet_from_pretrained

    imgs, _ = read_frames(video, indices=frames)
    crops = [img[y1:y2, x1:x2] for img, (x1, y1, x2, y2) in zip(imgs, (crop_box(b, W, H) for b in boxes))]
    proc = AutoImageProcessor.from_pretrained(clip_dir)
    model = quiet_from_pretrained(CLIPVisionModelWithProjection, str(clip_dir)).eval()
    with torch.no_grad():
        return model(**proc(images=crops, return_tensors="pt")).image_embeds.numpy()


def test_extract_folder_embeddings_failures_and_resume(tmp_path, scene, clip_dir, tiny_base):
    from llavidal.model.base import config_from_base
    from llavidal.model.files import read_config_dict

    videos, dets = scene
    out = tmp_path / "out"
    s = extract_objects(videos, out, cfg_for(clip_dir, out_dtype="float32", batch=5), detections=dets)
    assert (s["videos"], s["done"], s["no_objects"], s["failed"], s["objects"]) == (4, 1, 1, 2, 2)
    assert s["no_object_videos"] == ["empty"] and sorted(s["failed_videos"]) == ["badjson", "broken"]
    assert s["tracks"]["short"] == 1 and s["matcher"] == "hungarian"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pkl") == ["scene_object.pkl"]

    cfg = config_from_base(read_config_dict(tiny_base), 32012)
    arr = validate_feature(load_feature(out / "scene_object.pkl", "object"), "object", cfg, "scene_object.pkl")
    assert arr.shape == (2, 8, 512) and arr.dtype == np.float32

    a_frames = [f for f in range(T) if f != 10]
    fa = [a_frames[p] for p in (1, 4, 7, 10, 12, 15, 18, 21)]  # centres of 8 parts of the 23 detections
    fb = [4 + p for p in (1, 3, 5, 7, 9, 11, 13, 15)]
    want_a = direct_embeddings(clip_dir, videos / "scene.mp4", fa, [box_a(f) for f in fa])
    want_b = direct_embeddings(clip_dir, videos / "scene.mp4", fb, [box_b(f) for f in fb])
    np.testing.assert_allclose(arr[0], want_a, rtol=1e-4, atol=1e-4)  # row 0: the longer, surer track
    np.testing.assert_allclose(arr[1], want_b, rtol=1e-4, atol=1e-4)
    assert np.abs(want_a - want_b).max() > 1e-2  # the two objects differ, so the row order is checked

    (row,) = read_jsonl(out / "object_manifest.jsonl")
    assert [o["label"] for o in row["objects"]] == ["cup", "book"] and row["objects"][0]["frames"] == fa
    assert row["objects"][1]["crops"][0] == [136, 5, 160, 29]  # box_b(5) = [140, 7, 158, 27], shifted left
    fails = {r["id"]: r for r in read_jsonl(out / "failures.jsonl")}
    assert fails["empty"]["stage"] == "no objects" and "0 detections in 24 looked-at frames" in fails["empty"]["error"]
    assert fails["badjson"]["stage"] == "detections"
    assert 'badjson.json: frames["3"][0].box: expected 4 numbers' in fails["badjson"]["error"]
    assert fails["broken"]["stage"] == "video" and "broken.mp4" in fails["broken"]["error"]
    assert json.loads((out / "object_summary.json").read_text())["done"] == 1

    mtime = (out / "scene_object.pkl").stat().st_mtime_ns
    s2 = extract_objects(videos, out, cfg_for(clip_dir, workers=0), detections=dets)
    assert (s2["skipped_existing"], s2["done"], s2["failed"], s2["no_objects"]) == (1, 0, 2, 1)
    assert (out / "scene_object.pkl").stat().st_mtime_ns == mtime


def test_frame_beyond_video_and_wrong_size_are_detection_errors(tmp_path, scene, clip_dir):
    videos, _ = scene
    doc = scene_detections()
    doc["frames"]["30"] = [{"box": box_a(23), "label": "cup", "score": 0.9}]
    mapping = {"scene": doc}
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    s = extract_objects(videos / "scene.mp4", tmp_path / "o1", cfg_for(clip_dir), detections=tmp_path / "m.json")
    (row,) = read_jsonl(tmp_path / "o1" / "failures.jsonl")
    assert s["failed"] == 1 and row["stage"] == "detections"
    assert 'm.json["scene"]' in row["error"] and "beyond" in row["error"] and "24" in row["error"]
    doc = scene_detections()
    doc["width"] = 1920
    (tmp_path / "one.json").write_text(json.dumps(doc))
    extract_objects(videos / "scene.mp4", tmp_path / "o2", cfg_for(clip_dir), detections=tmp_path / "one.json")
    (row,) = read_jsonl(tmp_path / "o2" / "failures.jsonl")
    assert "one.json: width/height: boxes are for 1920x120 frames but scene.mp4 decodes to 160x120" in row["error"]


def colour_detector(colour):
    """A real (if simple) detector: the bounding box of the pixels close to one colour."""
    rgb = np.array({"red": RED, "blue": BLUE}[colour])

    def detect(frames):
        out = []
        for f in frames:
            ys, xs = np.nonzero(np.abs(f.astype(int) - rgb).sum(-1) < 90)
            out.append([{"box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                         "label": colour, "score": 1.0}] if len(xs) > 20 else [])
        return out

    return detect


def test_cli_with_mapping_json_and_with_a_plugged_detector(tmp_path, scene, clip_dir, capsys):
    from llavidal.cli import main

    videos, _ = scene
    (tmp_path / "all.json").write_text(json.dumps({"scene.mp4": scene_detections(), "typo": {"frames": {}}}))
    out = tmp_path / "cli"
    rc = main(["extract-objects", "--videos", str(videos / "scene.mp4"), "--detections", str(tmp_path / "all.json"),
               "--output", str(out), "--clip", str(clip_dir), "--format", "npy", "--device", "cpu",
               "--max-objects", "1", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "1 written" in text and "1 detection entries matched no video" in text
    arr = np.load(out / "scene_object.npy")
    assert arr.shape == (1, 8, 512) and arr.dtype == np.float16
    assert json.loads((out / "object_summary.json").read_text())["tracks"]["over_max"] == 1

    register_detector("test-colour", lambda arg: colour_detector(arg or "red"))
    out = tmp_path / "det"
    rc = main(["extract-objects", "--videos", str(videos / "scene.mp4"), "--detector", "test-colour:blue",
               "--output", str(out), "--clip", str(clip_dir), "--device", "cpu", "--detect-frames", "12",
               "--no-progress"])
    assert rc == 0
    assert load_feature(out / "scene_object.pkl").shape == (1, 8, 512)
    saved = json.loads((out / "detections" / "scene.json").read_text())
    looked = frame_indices(T, 12).tolist()
    assert [int(k) for k in saved["frames"]] == looked
    blue = [f for f in looked if saved["frames"][str(f)]]
    assert blue == [f for f in looked if f in B_FRAMES]
    got = saved["frames"][str(blue[0])][0]["box"]  # h264's 4:2:0 chroma blurs colour edges by a pixel or so
    assert np.abs(np.subtract(got, box_b(blue[0]))).max() <= 2, (got, box_b(blue[0]))

    assert main(["extract-objects", "--videos", str(videos / "scene.mp4"), "--detector", "nope",
                 "--output", str(tmp_path / "x"), "--clip", str(clip_dir)]) == 2
    assert "unknown detector 'nope'" in capsys.readouterr().err


def test_ultralytics_missing_is_a_clear_error():
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        with pytest.raises(DetectionError, match=r"'ultralytics' package is not installed \(pip install"):
            make_detector("ultralytics:yolov8n.pt")
    else:
        pytest.skip("ultralytics is installed (its weights are never downloaded in tests)")


def test_duplicate_video_ids_and_single_doc_for_many_videos_are_refused(tmp_path, scene, clip_dir):
    videos, dets = scene
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    for d in ("a", "b"):
        (tmp_path / d / "same.mp4").write_bytes((videos / "scene.mp4").read_bytes())
    with pytest.raises(ValueError, match=r"both have the id 'same'"):
        extract_objects(tmp_path, tmp_path / "o", cfg_for(clip_dir), detections=dets)
    with pytest.raises(DetectionError, match=r"scene.json: holds the detections of one video"):
        extract_objects(videos, tmp_path / "o", cfg_for(clip_dir), detections=dets / "scene.json")

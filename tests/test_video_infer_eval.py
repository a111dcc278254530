"""Raw videos where features used to be required: ``llavidal infer --video clip.mp4`` and ``llavidal eval run
--clip C`` (features extracted once into a cache, identical to pre-extracted ones; unreadable videos are missing
videos, not wrong answers)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llavidal.video.clip import make_tiny_clip
from llavidal.video.io import write_video


@pytest.fixture(scope="module")
def clip1024(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=0)  # width 1024: fits the tiny base


def _video(path, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return write_video(path, rng.integers(0, 256, (n, 40, 56, 3), dtype=np.uint8), 8)


def test_infer_on_a_raw_video_equals_answer_on_its_features(tiny_base, clip1024, tmp_path, capsys):
    from llavidal import load_pretrained
    from llavidal.cli import main
    from llavidal.inference import GenerationOptions, answer
    from llavidal.video.extract import VideoFeaturizer

    video = _video(tmp_path / "kitchen.mp4")
    args = ["infer", "--base", str(tiny_base), "--video", str(video), "--clip", str(clip1024), "-q", "What happens?",
            "--max-new-tokens", "6", "--device", "cpu", "--json", "--feature-cache", str(tmp_path / "cache")]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    feats = VideoFeaturizer(str(clip1024), device="cpu")(video)
    model, tok = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    want = answer(model, tok, "What happens?", video=feats, options=GenerationOptions(max_new_tokens=6))
    assert got["answer"] == want and got["modalities"] == ["video"]
    assert (tmp_path / "cache" / "kitchen.pkl").is_file()
    # the cache is used: the video itself is no longer needed
    video.unlink()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"] == want


def test_infer_refuses_raw_video_as_pose_and_reports_unreadable_video(tiny_base, clip1024, tmp_path, capsys):
    from llavidal.cli import main

    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(SystemExit, match="extract-pose"):
        main(["infer", "--base", str(tiny_base), "--pose", str(bad), "-q", "x", "--device", "cpu"])
    assert main(["infer", "--base", str(tiny_base), "--video", str(bad), "--clip", str(clip1024), "-q", "x",
                 "--device", "cpu"]) == 2
    assert "bad.mp4" in capsys.readouterr().err


def test_eval_run_extracts_raw_videos_once(tiny_base, clip1024, tmp_path):
    from llavidal.cli import main

    videos = tmp_path / "videos"
    for i in range(3):
        _video(videos / f"clip_{i}.mp4", n=5 + i, seed=i)
    (videos / "clip_3.mp4").write_bytes(b"\x00" * 100)  # unreadable
    qa = {str(i): {"video_id": f"/abs/path/of/the/authors/clip_{i}.mp4", "question": "What is the person doing?",
                   "choices": {"1": "drinking", "2": "reading", "3": "cooking", "4": "walking"},
                   "ground_truth": "reading"} for i in range(5)}  # clip_4 does not exist at all
    qa_file = tmp_path / "smarthome.json"
    qa_file.write_text(json.dumps(qa))
    common = ["eval", "run", "--task", "smarthome-ar", "--qa-file", str(qa_file), "--base", str(tiny_base),
              "--max-new-tokens", "4", "--batch-size", "2", "--device", "cpu"]
    assert main([*common, "--video-dir", str(videos), "--clip", str(clip1024), "--extract-workers", "0",
                 "--output", str(tmp_path / "raw")]) == 0
    raw = json.loads((tmp_path / "raw" / "summary.json").read_text())
    assert raw["mcq"]["total"] == 5 and raw["mcq"]["missing_video"] == 2
    assert raw["video_features"] == {"clip": str(clip1024), "extracted": 3, "failed": 1}
    cache = tmp_path / "raw" / "video_features"
    assert sorted(p.name for p in cache.glob("*.pkl")) == ["clip_0.pkl", "clip_1.pkl", "clip_2.pkl"]
    fails = (cache / "extract.rank0" / "failures.jsonl").read_text()
    assert "clip_3.mp4" in fails

    # the same answers as with features extracted beforehand by `llavidal extract-video`
    assert main(["extract-video", "--input", str(videos), "--output", str(tmp_path / "pre"), "--clip", str(clip1024),
                 "--workers", "0", "--device", "cpu", "--no-progress"]) == 1  # clip_3 fails
    assert main([*common, "--feature-dir", str(tmp_path / "pre"), "--output", str(tmp_path / "pre_out")]) == 0
    rows = lambda d: {r["id"]: r for r in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())}  # noqa
    a, b = rows(tmp_path / "raw"), rows(tmp_path / "pre_out")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["status"] == b[k]["status"] and a[k].get("reply") == b[k].get("reply")

    # a second run extracts nothing again (the cache is reused)
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pkl")}
    assert main([*common, "--video-dir", str(videos), "--clip", str(clip1024), "--extract-workers", "0",
                 "--output", str(tmp_path / "raw")]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pkl")} == mtimes

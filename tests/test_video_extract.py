"""Video → features (docs/design.md#video-features): frame indices, decoders, the CLIP layer cut, pooling, the
folder pipeline (failures, name collisions, resume, batches spanning videos, workers) and the original script's
flags."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llavidal.features import load_feature
from llavidal.video.clip import TinyClipSpec, load_clip_vision, make_tiny_clip, quiet_from_pretrained
from llavidal.video.extract import ExtractConfig, VideoFeaturizer, extract_folder
from llavidal.video.io import VideoReadError, find_videos, frame_indices, read_frames, video_id, write_video

ROOT = Path(__file__).resolve().parents[1]
SMALL = TinyClipSpec(vision_hidden_size=32, vision_intermediate_size=64, vision_heads=2, vision_layers=3)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=3, spec=SMALL)


def _frames(n, h=48, w=64, seed=0):
    """Random frames with the frame number burnt into the top-left block (so sampled indices can be read back)."""
    rng = np.random.default_rng(seed)
    fr = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        fr[i, :16, :16] = (10 * i) % 256
    return fr


def _lossless(path, frames, fps=10):
    return write_video(path, frames, fps, codec="ffv1", pix_fmt="bgr0")


def spec_indices(total, n_max=100):
    """The frame-index formula of docs/design.md#video-features, written out as a loop."""
    n = min(total, n_max)
    seg = float(total - 1) / n
    return [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(n)]


@pytest.mark.parametrize("total", [1, 2, 7, 99, 100, 101, 250, 1000, 12345])
def test_frame_indices_match_the_spec(total):
    got = frame_indices(total).tolist()
    assert got == spec_indices(total)
    assert len(got) == min(total, 100) and min(got) >= 0 and max(got) < total


@pytest.mark.parametrize("ext,codec,pix", [(".mkv", "ffv1", "bgr0"), (".mov", "png", "rgb24"),
                                           (".mp4", None, None), (".avi", None, None), (".webm", None, None),
                                           (".gif", None, None)])
def test_containers_decode_with_the_spec_indices(tmp_path, ext, codec, pix):
    frames = _frames(23, 40, 56)
    path = write_video(tmp_path / f"v{ext}", frames, 10, codec=codec, pix_fmt=pix)
    got, total = read_frames(path, max_frames=9)
    assert total == 23 and got.shape == (9, 40, 56, 3)
    idx = spec_indices(23, 9)
    burnt = got[:, 5:11, 5:11].reshape(9, -1).mean(axis=1) / 10
    if codec:  # lossless: exact frames
        np.testing.assert_array_equal(got, frames[idx])
    elif ext != ".gif":  # lossy: the burnt-in frame number survives well enough to identify the frame
        assert np.abs(burnt - np.array(idx)).max() < 1
    else:
        assert np.all(np.diff(burnt) > 0)  # a 256-colour palette: order is still visible


def test_decord_and_pyav_agree_and_odd_sizes_single_frame(tmp_path):
    odd = _lossless(tmp_path / "odd.mkv", _frames(5, 61, 83))
    a, _ = read_frames(odd, decoder="decord")
    b, _ = read_frames(odd, decoder="pyav")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 61, 83, 3)
    one = _lossless(tmp_path / "one.mkv", _frames(1))
    got, total = read_frames(one, max_frames=100)
    assert total == 1 and got.shape[0] == 1


def test_unreadable_inputs_raise_a_readable_error(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    for name in ("empty.mp4", "text.mp4", "missing.mp4"):
        with pytest.raises(VideoReadError, match=name):
            read_frames(tmp_path / name)


def test_layer_cut_equals_hidden_states_of_the_full_tower(small_clip):
    from transformers import CLIPVisionModel

    full = quiet_from_pretrained(CLIPVisionModel, str(small_clip)).eval()
    x = torch.randn(2, 3, 224, 224)
    for layer in (-2, -1, -3):
        cut = load_clip_vision(small_clip, select_layer=layer)
        with torch.no_grad():
            want = full(pixel_values=x, output_hidden_states=True).hidden_states[layer]
            got = cut(pixel_values=x).last_hidden_state
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    cut = load_clip_vision(small_clip)
    encoder = cut.vision_model.encoder if hasattr(cut, "vision_model") else cut.encoder
    assert len(encoder.layers) == SMALL.vision_layers - 1  # the last layer is not computed at all


def direct_features(path, clip_dir, n_max=100):
    """The feature pipeline written out step by step with independent tools: PyAV, torch interpolate, the CLIP image
    processor (PIL), the full CLIP tower's hidden_states[-2], numpy pooling."""
    import av
    import torch.nn.functional as F
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    with av.open(str(path)) as c:
        allf = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    sel = np.stack([allf[i] for i in spec_indices(len(allf), n_max)])
    if sel.shape[1:3] != (224, 224):
        t = F.interpolate(torch.from_numpy(sel).permute(0, 3, 1, 2).float(), size=(224, 224))
        sel = t.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    proc = CLIPImageProcessor.from_pretrained(str(clip_dir))
    pixels = proc([Image.fromarray(f) for f in sel], return_tensors="pt")["pixel_values"]
    model = quiet_from_pretrained(CLIPVisionModel, str(clip_dir)).eval()
    with torch.no_grad():
        hid = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:].numpy()
    temporal = np.zeros((n_max, hid.shape[-1]), np.float32)
    temporal[:len(hid)] = hid.mean(axis=1)
    return np.concatenate([temporal, hid.mean(axis=0)]).astype(np.float16)


@pytest.mark.parametrize("n,h,w", [(37, 48, 64), (130, 30, 40), (6, 224, 224)])
def test_features_equal_a_direct_computation(tmp_path, small_clip, n, h, w):
    path = _lossless(tmp_path / "clip.mkv", _frames(n, h, w, seed=n))
    got = VideoFeaturizer(str(small_clip), device="cpu", batch=16)(path)
    want = direct_features(path, small_clip)
    assert got.shape == want.shape == (356, 32) and got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert np.all(got[min(n, 100):100] == 0)  # temporal padding rows


def _folder(tmp_path):
    src = tmp_path / "videos"
    _lossless(src / "a.mkv", _frames(13, seed=1))
    write_video(src / "sub" / "b.v1.mp4", _frames(5, seed=2), 8)
    write_video(src / "sub" / "deep" / "c.webm", _frames(9, seed=3), 8)
    write_video(src / "d.gif", _frames(4, seed=4), 8)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    (src / "empty.avi").write_bytes(b"")
    (src / "notes.txt").write_text("not a video")
    _lossless(src / "sub" / "a.mkv", _frames(3, seed=5))  # output name 'a' collides with videos/a.mkv
    return src


def test_folder_extraction_failures_resume_and_names(tmp_path, small_clip):
    src, out = _folder(tmp_path), tmp_path / "feats"
    cfg = ExtractConfig(clip=str(small_clip), batch=7, workers=0, device="cpu", progress=False)
    s = extract_folder(src, out, cfg)
    names = sorted(p.name for p in out.glob("*.pkl"))
    assert names == ["a.pkl", "b.pkl", "c.pkl", "d.pkl"]
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(Path(f["video"]).name for f in fails) == ["a.mkv", "broken.mp4", "empty.avi"]
    assert {f["stage"] for f in fails} == {"decode", "name"}
    assert all(f["error"] for f in fails)
    assert s["written"] == 4 and s["failed"] == 3 and s["videos_found"] == 7
    for name in names:
        arr = load_feature(out / name)
        assert arr.shape == (356, 32) and arr.dtype == np.float16
    # batches span videos: same features as one video at a time
    fz = VideoFeaturizer(str(small_clip), device="cpu", batch=100)
    np.testing.assert_allclose(load_feature(out / "a.pkl").astype(np.float32),
                               fz(src / "a.mkv").astype(np.float32), rtol=1e-3, atol=1e-3)

    # resume: a rerun writes nothing; a lost output is rewritten, the others are untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.pkl")}
    (out / "c.pkl").unlink()
    s2 = extract_folder(src, out, cfg)
    assert s2["written"] == 1 and s2["already_done"] == 3 and s2["failed"] == 3
    for name, t in mtimes.items():
        if name != "c.pkl":
            assert (out / name).stat().st_mtime_ns == t
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_unusable_existing_outputs_are_redone_and_dangling_links_listed(tmp_path, small_clip, capsys):
    """A 0-byte or truncated output (a crash or a full disk) is not a finished video: the rerun redoes it and says so;
    a video-named link whose target is gone is listed as a failure, never skipped silently."""
    src, out = tmp_path / "v", tmp_path / "f"
    for i in range(3):
        _lossless(src / f"v{i}.mkv", _frames(4, seed=20 + i))
    (src / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    cfg = ExtractConfig(clip=str(small_clip), batch=8, workers=0, device="cpu", progress=False)
    s1 = extract_folder(src, out, cfg)
    assert s1["written"] == 3 and s1["failed"] == 1
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(Path(f["video"]).name, f["stage"]) for f in fails] == [("gone.mp4", "input")]
    assert "dangling symbolic link" in fails[0]["error"] and "nowhere.mp4" in fails[0]["error"]
    good = {p.name: p.read_bytes() for p in out.glob("*.pkl")}
    (out / "v0.pkl").write_bytes(b"")
    (out / "v1.pkl").write_bytes(good["v1.pkl"][: len(good["v1.pkl"]) // 2])
    s2 = extract_folder(src, out, cfg)
    assert (s2["written"], s2["already_done"], s2["redone_unusable"]) == (2, 1, 2)
    assert {Path(r["output"]).name for r in s2["redone_examples"]} == {"v0.pkl", "v1.pkl"}
    assert "2 unusable earlier outputs redone" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.glob("*.pkl")} == good


def test_decode_workers_give_the_same_features(tmp_path, small_clip):
    src = tmp_path / "v"
    for i in range(3):
        _lossless(src / f"v{i}.mkv", _frames(4 + 3 * i, seed=10 + i))
    a = extract_folder(src, tmp_path / "w0", ExtractConfig(clip=str(small_clip), batch=5, workers=0, device="cpu",
                                                           progress=False))
    b = extract_folder(src, tmp_path / "w2", ExtractConfig(clip=str(small_clip), batch=64, workers=2, device="cpu",
                                                           progress=False, fmt="npy"))
    assert a["written"] == b["written"] == 3 and b["workers"] == 2
    for i in range(3):
        np.testing.assert_allclose(load_feature(tmp_path / "w0" / f"v{i}.pkl").astype(np.float32),
                                   np.load(tmp_path / "w2" / f"v{i}.npy").astype(np.float32), rtol=1e-3, atol=1e-3)


def test_featurizer_cache(tmp_path, small_clip):
    path = _lossless(tmp_path / "x.y.mkv", _frames(8))
    fz = VideoFeaturizer(str(small_clip), device="cpu")
    a = fz.cached(path, tmp_path / "cache")
    assert (tmp_path / "cache" / "x.pkl").is_file() and video_id(path) == "x"
    (tmp_path / "cache" / "x.pkl").write_bytes((tmp_path / "cache" / "x.pkl").read_bytes())
    np.testing.assert_array_equal(fz.cached(path, tmp_path / "cache"), a)
    with pytest.raises(VideoReadError):
        fz(tmp_path / "nothing.mp4")


def test_find_videos_is_recursive_and_sorted(tmp_path):
    src = _folder(tmp_path)
    names = [p.relative_to(src).as_posix() for p in find_videos(src)]
    assert names == sorted(names) and "notes.txt" not in names and "sub/deep/c.webm" in names


def test_cli_and_original_script(tmp_path, small_clip):
    from llavidal.cli import main

    src = tmp_path / "v"
    _lossless(src / "one.mkv", _frames(6))
    write_video(src / "two.mp4", _frames(4), 5)
    assert main(["extract-video", "--input", str(src), "--output", str(tmp_path / "o1"), "--clip", str(small_clip),
                 "--workers", "0", "--device", "cpu", "--format", "safetensors", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "o1").glob("*.safetensors")) == ["one.safetensors", "two.safetensors"]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "save_spatio_temporal_clip_features.py"),
                        "--video_dir_path", str(src), "--clip_feat_path", str(tmp_path / "o2"), "--infer_batch", "3",
                        "--clip", str(small_clip), "--workers", "0", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "o2" / "extract_summary.json").read_text())
    assert summary["batch"] == 3 and summary["written"] == 2
    (src / "bad.mp4").write_text("garbage")
    assert main(["extract-video", "--input", str(src), "--output", str(tmp_path / "o1"), "--clip", str(small_clip),
                 "--workers", "0", "--device", "cpu", "--format", "safetensors", "--no-progress"]) == 1


def test_make_tiny_clip_cli(tmp_path):
    from transformers import CLIPModel

    from llavidal.cli import main

    assert main(["make-tiny-clip", str(tmp_path / "c"), "--seed", "1", "--vision-hidden-size", "16"]) == 0
    model = quiet_from_pretrained(CLIPModel, str(tmp_path / "c"))
    assert model.config.vision_config.hidden_size == 16 and model.config.projection_dim == 512
    a = (tmp_path / "c" / "model.safetensors").read_bytes()
    main(["make-tiny-clip", str(tmp_path / "d"), "--seed", "1", "--vision-hidden-size", "16"])
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == a  # deterministic

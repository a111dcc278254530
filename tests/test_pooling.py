"""PLLaVA-style pooled video features: per-frame patch tokens kept by the extractor, pooled adaptively to a grid,
trained on and asked about through the usual commands; one model reads one kind of video features."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from llavidal.cli import main as cli_main
from llavidal.features import FeatureError, FeatureKindError, load_feature, save_feature, validate_feature
from llavidal.model.configuration_llavidal import LlavidalConfig
from llavidal.video.pool import FramePooling, PoolGrid, pool_frames


# ---------------------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("grid", [(16, 8, 8), (4, 2, 2), (3, 5, 7), (1, 1, 1), (20, 16, 16)])
def test_pool_frames_matches_torch_adaptive_avg_pool3d(grid, rng):
    tokens = rng.standard_normal((16, 256, 12)).astype(np.float16)  # [T, P = 16 x 16, D]
    out = pool_frames(tokens, PoolGrid(*grid))
    t, h, w = grid
    assert out.shape == (t * h * w, 12) and out.dtype == np.float32
    # reference: torch's adaptive_avg_pool3d on [N, C, T, H, W], read back in (time, row, column) order
    x = torch.from_numpy(tokens.astype(np.float32)).view(16, 16, 16, 12).permute(3, 0, 1, 2)[None]
    ref = F.adaptive_avg_pool3d(x, grid)[0].permute(1, 2, 3, 0).reshape(-1, 12).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    # and one bin by hand: bin (i, j, k) of an axis n -> inputs floor(i*n/k) .. ceil((i+1)*n/k) - 1
    i, j, k = t - 1, 0, w // 2
    span = lambda a, n, m: slice(a * n // m, -(-(a + 1) * n // m))
    frames = tokens.astype(np.float32).reshape(16, 16, 16, 12)
    by_hand = frames[span(i, 16, t), span(j, 16, h), span(k, 16, w)].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(out[(i * h + j) * w + k], by_hand, rtol=0, atol=1e-5)


def test_grid_parsing():
    assert PoolGrid.parse("16,12,12") == PoolGrid.parse("16x12x12") == PoolGrid(16, 12, 12)
    assert PoolGrid(16, 12, 12).tokens == 2304 and str(PoolGrid(4, 2, 2)) == "4x2x2"
    for bad in ("16,12", "a,b,c", "0,2,2", "4,2,2,2"):
        with pytest.raises(ValueError, match="T,H,W"):
            PoolGrid.parse(bad)


def test_validate_feature_pools_and_refuses_the_other_kind(rng):
    rows_model = LlavidalConfig(mm_hidden_size=8)
    pooled_model = LlavidalConfig(mm_hidden_size=8, video_pool=[2, 2, 2], video_pool_frames=4)
    frames = rng.standard_normal((4, 16, 8)).astype(np.float16)
    out = validate_feature(frames, "video", pooled_model, "f.pkl")
    assert out.shape == (8, 8)
    np.testing.assert_allclose(out, pool_frames(frames, PoolGrid(2, 2, 2)))
    assert validate_feature(frames[:3], "video", pooled_model).shape == (8, 8)  # a short video: fewer frames
    with pytest.raises(FeatureKindError, match=r"f\.pkl: video features have shape \[356, 8\]: rows .* one model reads "
                                               "one kind"):
        validate_feature(np.zeros((356, 8), np.float16), "video", pooled_model, "f.pkl")
    with pytest.raises(FeatureKindError, match="per-frame patch tokens .*but this model reads spatio-temporal rows.*--video_pool T,H,W"):
        validate_feature(frames, "video", rows_model, "f.pkl")
    with pytest.raises(FeatureKindError, match="6 frames.*--keep-frames-count 4"):
        validate_feature(np.zeros((6, 16, 8), np.float32), "video", pooled_model, "f.pkl")
    with pytest.raises(FeatureError, match="P a square number"):
        validate_feature(np.zeros((4, 15, 8), np.float32), "video", pooled_model, "f.pkl")
    assert pooled_model.video_pool == [2, 2, 2]
    from llavidal.constants import MODALITIES

    assert MODALITIES["video"].rows_per_sample(pooled_model) == 8
    assert MODALITIES["video"].rows_per_sample(rows_model) == 356
    assert FramePooling(PoolGrid(2, 2, 2), 4).describe().endswith("= 8 rows")


# ---------------------------------------------------------------------------------------------------- extraction
def test_keep_frames_extraction_resume_and_on_the_fly_featurizer(tmp_path):
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip
    from llavidal.video.extract import ClipFeatureModel, ExtractConfig, VideoFeaturizer, extract_videos
    from llavidal.video.io import frame_indices, sample_video, write_video

    clip = make_tiny_clip(tmp_path / "clip", seed=3, spec=TinyClipSpec(vision_hidden_size=32,
                                                                       vision_intermediate_size=64, vision_heads=2,
                                                                       vision_layers=2))
    rng = np.random.default_rng(0)
    src, out, kept = tmp_path / "videos", tmp_path / "rows", tmp_path / "frames"
    write_video(src / "a.mkv", rng.integers(0, 256, (37, 48, 64, 3), dtype=np.uint8), 10, codec="ffv1",
                pix_fmt="bgr0")
    write_video(src / "b.mkv", rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8), 10, codec="ffv1", pix_fmt="bgr0")
    argv = ["extract-video", "--input", str(src), "--output", str(out), "--clip", str(clip), "--device", "cpu",
            "--workers", "0", "--batch", "16", "--no-progress", "--format", "safetensors",
            "--keep-frames", str(kept), "--keep-frames-count", "8"]
    assert cli_main(argv) == 0
    rows, a, b = (load_feature(p) for p in (out / "a.safetensors", kept / "a.safetensors", kept / "b.safetensors"))
    assert rows.shape == (356, 32) and a.shape == (8, 256, 32) and b.shape == (5, 256, 32)  # b: all its 5 frames
    assert a.dtype == np.float16
    # the kept frames are the frame-sampling rule applied to the 37 sampled frames, CLIP tokens as for the rows
    model = ClipFeatureModel(str(clip), device="cpu")
    patches = model.patches(torch.from_numpy(sample_video(src / "a.mkv")))  # [37, 256, 32]
    np.testing.assert_allclose(a.astype(np.float32), patches[frame_indices(37, 8)].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(rows.astype(np.float32), model.pool(patches).numpy(), rtol=2e-3, atol=2e-3)
    # on the fly (infer / demo / serve) and eval's frames-only extraction decode just those 8 frames: same tokens
    fly = VideoFeaturizer(str(clip), device="cpu", kept=8)(src / "a.mkv")
    np.testing.assert_allclose(fly.astype(np.float32), a.astype(np.float32), rtol=2e-3, atol=2e-3)
    only = extract_videos([(src / "a.mkv", tmp_path / "only" / "a.pkl")], tmp_path / "only",
                          ExtractConfig(clip=str(clip), device="cpu", workers=0, progress=False, output="frames",
                                        kept_frames=8))
    assert only["frames"] == 8
    np.testing.assert_array_equal(load_feature(tmp_path / "only" / "a.pkl"), fly)
    # resume: both files of a video must be there
    (kept / "b.safetensors").unlink()
    assert cli_main(argv) == 0
    summary = json.loads((out / "extract_summary.json").read_text())
    assert (summary["already_done"], summary["written"]) == (1, 1) and (kept / "b.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------- train / infer
def _frames_data(root, n=8):
    """n videos of per-frame tokens [4, 16, 1024] (4 frames of 4 x 4 patches); the answer is told by the sign of a
    direction in the left half of the frames."""
    g = np.random.default_rng(0)
    direction = g.standard_normal(1024)
    records = []
    for i in range(n):
        x = g.standard_normal((4, 4, 4, 1024)) * 0.02
        x[:, :, :2] += (1 if i % 2 else -1) * 0.05 * direction
        save_feature(x.reshape(4, 16, 1024).astype(np.float16), root / "frames" / f"v{i}.pkl")
        records.append({"id": f"v{i}", "video": f"v{i}.pkl", "conversations": [
            {"from": "human", "value": "Where does the person walk?\n<video>"},
            {"from": "gpt", "value": "left" if i % 2 else "right"}]})
    (root / "train.json").write_text(json.dumps(records))
    return root


def _flags(base, root, out, *extra):
    return ["--model_name_or_path", str(base), "--data_path", str(root / "train.json"), "--video_folder",
            str(root / "frames"), "--output_dir", str(out), "--tune_mm_mlp_adapter", "True",
            "--mm_use_vid_start_end", "True", "--per_device_train_batch_size", "4", "--max_steps", "2",
            "--learning_rate", "1e-2", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True",
            "--disable_tqdm", "True", "--dataloader_num_workers", "0", *extra]


@pytest.fixture(scope="module")
def pooled_run(tiny_base, tmp_path_factory):
    root = _frames_data(tmp_path_factory.mktemp("pooled"))
    out = root / "run"
    assert cli_main(["train", *_flags(tiny_base, root, out, "--video_pool", "2,2,2", "--video_pool_frames", "4")]) == 0
    return root, out


def test_pooled_training_records_the_kind_and_inference_reads_it(pooled_run, capsys):
    from llavidal.inference import GenerationOptions, Query, encode_query
    from llavidal.model import load_pretrained

    root, out = pooled_run
    with safe_open(str(out / "adapter.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert (meta["video_pool"], meta["video_pool_frames"], meta["modalities"]) == ("2,2,2", "4", "video")
    assert json.loads((out / "config.json").read_text())["video_pool"] == [2, 2, 2]
    model, tok = load_pretrained(out, device="cpu", dtype=torch.float32)
    assert (model.config.video_pool, model.config.video_pool_frames) == ([2, 2, 2], 4)
    ids, arrays = encode_query(model, tok, Query("Where?", video=root / "frames" / "v0.pkl"), GenerationOptions())
    assert arrays["video"].shape == (8, 1024)  # 2 x 2 x 2 tokens
    assert ids.count(tok.convert_tokens_to_ids("<vid_patch>")) == 8
    capsys.readouterr()
    assert cli_main(["infer", "--base", str(out), "--video", str(root / "frames" / "v1.pkl"), "-q", "Where?",
                     "--max-new-tokens", "2", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["modalities"] == ["video"]
    # the other kind is refused, by the loader and by the command
    save_feature(np.zeros((356, 1024), np.float16), root / "rows.pkl")
    assert cli_main(["infer", "--base", str(out), "--video", str(root / "rows.pkl"), "-q", "Where?", "--device",
                     "cpu"]) == 2
    assert "one model reads one kind of video features" in capsys.readouterr().err


def test_mixing_kinds_is_refused_in_data_starting_weights_and_files(pooled_run, tiny_base, tmp_path):
    from llavidal.model import load_pretrained
    from llavidal.model.validate import CheckpointError
    from llavidal.train.arguments import parse_args
    from llavidal.train.merge import merge_adapters
    from llavidal.train.train import build_model

    root, out = pooled_run
    # a training folder holding both kinds: an error naming the record, even when bad files may be skipped
    mixed = tmp_path / "mixed"
    (mixed / "frames").mkdir(parents=True)
    for i in range(8):
        (mixed / "frames" / f"v{i}.pkl").write_bytes((root / "frames" / f"v{i}.pkl").read_bytes())
    save_feature(np.zeros((356, 1024), np.float16), mixed / "frames" / "v3.pkl")
    (mixed / "train.json").write_text((root / "train.json").read_text())
    from llavidal.data.dataset import DataError

    with pytest.raises(DataError, match=r"record 3 v3 .*\[356, 1024\]: rows.*one model reads one kind"):
        from llavidal.train.train import train

        train(_flags(tiny_base, mixed, tmp_path / "r", "--video_pool", "2,2,2", "--video_pool_frames", "4",
                     "--missing_features", "skip"))
    # starting from the pooled adapter: its kind is kept; another grid is refused
    model_args, data_args, training_args = parse_args(_flags(tiny_base, root, tmp_path / "s", "--pretrain_mm_mlp_adapter",
                                                             str(out / "adapter.safetensors")))
    model, _, _ = build_model(model_args, data_args, training_args)
    assert (model.config.video_pool, model.config.video_pool_frames) == ([2, 2, 2], 4)
    with pytest.raises(ValueError, match="asks for per-frame .* pooled to 4x2x2.* was trained on per-frame .* 2x2x2"):
        build_model(*parse_args(_flags(tiny_base, root, tmp_path / "s", "--pretrain_mm_mlp_adapter",
                                       str(out / "adapter.safetensors"), "--video_pool", "4,2,2")))
    # a rows-trained projector file (a .bin records no kind: the release's files read rows) on the pooled model
    with pytest.raises(CheckpointError, match="trained on video rows .* but the model's was trained on per-frame"):
        load_pretrained(out, projector=out / "mm_projector.bin", device="cpu", dtype=torch.float32)
    # merging: the kind travels with the file that trained the modality
    report = merge_adapters([out / "mm_projector.bin", out / "adapter.safetensors"], tmp_path / "m.safetensors",
                            base_vocab=len(load_pretrained(tiny_base, device="cpu")[1]) - 9)
    assert report["modalities"] == ["video"]
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as fh:
        assert fh.metadata()["video_pool"] == "2,2,2"


def test_raw_videos_with_a_pooled_model_infer_and_eval(pooled_run, tmp_path, capsys):
    """Raw videos are featurized by the model's kind: the kept frames' tokens, pooled to its grid."""
    from llavidal.inference import GenerationOptions, answer
    from llavidal.model import load_pretrained
    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.extract import VideoFeaturizer
    from llavidal.video.io import write_video

    _, run = pooled_run
    clip = make_tiny_clip(tmp_path / "clip", seed=0)  # vision width 1024: fits the tiny base
    rng = np.random.default_rng(0)
    videos = tmp_path / "videos"
    for i in range(2):
        write_video(videos / f"clip_{i}.mp4", rng.integers(0, 256, (6 + i, 40, 56, 3), dtype=np.uint8), 8)
    capsys.readouterr()
    assert cli_main(["infer", "--base", str(run), "--video", str(videos / "clip_1.mp4"), "--clip", str(clip), "-q",
                     "Where?", "--max-new-tokens", "3", "--device", "cpu", "--json", "--feature-cache",
                     str(tmp_path / "cache")]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"]
    frames = VideoFeaturizer(str(clip), device="cpu", kept=4)(videos / "clip_1.mp4")
    assert frames.shape == (4, 256, 1024) and (tmp_path / "cache" / "clip_1.frames4.pkl").is_file()
    model, tok = load_pretrained(run, device="cpu", dtype=torch.float32)
    assert got == answer(model, tok, "Where?", video=frames, options=GenerationOptions(max_new_tokens=3))
    qa = {str(i): {"video_id": f"/elsewhere/clip_{i}.mp4", "question": "Where does the person walk?",
                   "choices": {"1": "left", "2": "right", "3": "up", "4": "down"}, "ground_truth": "left"}
          for i in range(2)}
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    assert cli_main(["eval", "run", "--task", "smarthome-ar", "--qa-file", str(tmp_path / "qa.json"), "--base",
                     str(run), "--max-new-tokens", "3", "--device", "cpu", "--video-dir", str(videos), "--clip",
                     str(clip), "--extract-workers", "0", "--output", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["mcq"]["total"] == 2 and summary["mcq"]["missing_video"] == 0
    cached = sorted((tmp_path / "eval" / "video_frames4").glob("*.pkl"))
    assert [p.name for p in cached] == ["clip_0.pkl", "clip_1.pkl"]
    np.testing.assert_array_equal(load_feature(cached[1]), frames)


def test_scene_world_of_the_pooling_study(tmp_path):
    """The pooling study's world: the object shows on one patch in `seen` consecutive frames; its files hold the
    per-frame tokens and the spatio-temporal rows of the same tokens; the MCQ items offer rooms x objects."""
    from llavidal.synthetic import SceneSpec, SceneWorld, make_scene_dataset
    from llavidal.video.clip import pool_spatio_temporal

    spec = SceneSpec(noise=0.0, room=0.0)
    x = SceneWorld(0, spec).tokens((0, 1), np.random.default_rng(0)).astype(np.float32)
    hit = np.abs(x).sum(axis=-1) > 0  # [frames, patches]
    assert hit.sum() == spec.seen and hit.any(axis=0).sum() == 1 and np.ptp(np.nonzero(hit)[0]) == spec.seen - 1
    data = make_scene_dataset(tmp_path, n_train=8, n_test=4, seed=0)
    frames, rows = load_feature(data["frames"] / "scene_train_00001.pkl"), load_feature(data["rows"] / "scene_train_00001.pkl")
    assert frames.shape == (8, 16, 64) and rows.shape == (24, 64)
    np.testing.assert_allclose(rows, pool_spatio_temporal(frames, 8).numpy(), atol=1e-3)
    item = json.loads(data["test"].read_text())["0"]
    assert len(item["choices"]) == 4 and item["ground_truth"] in item["choices"].values()
    # the prompt's layout tells nothing of the answer: every answer comes with the placeholder on both sides
    sides = {}
    for r in json.loads(data["train"].read_text()):
        human, answer = (c["value"] for c in r["conversations"])
        sides.setdefault(answer, set()).add(human.startswith("<video>"))
    assert len(sides) == 4 and all(v == {True, False} for v in sides.values()), sides
    # the background: one vector of the video's own, the same on every patch of every frame
    x = SceneWorld(0, SceneSpec(noise=0.0, room=0.0, object=0.0, background=1.0)).tokens((0, 0), np.random.default_rng(0))
    assert np.abs(x).sum() > 0 and np.all(x == x[0, 0])


def test_demo_answers_a_pooled_model_about_a_raw_video(pooled_run, tmp_path):
    """The web demo's handlers with a pooled model: an uploaded video becomes the kept frames' tokens pooled to the
    model's grid, and the streamed reply is the greedy reply to the kept frames' tokens."""
    pytest.importorskip("gradio")
    from llavidal.demo.app import DemoBackend, DemoConfig, DemoHandlers
    from llavidal.demo.chat import Conversation
    from llavidal.inference import stream_answer
    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.extract import VideoFeaturizer
    from llavidal.video.io import write_video

    _, run = pooled_run
    clip = make_tiny_clip(tmp_path / "clip", seed=0)
    write_video(tmp_path / "kitchen.mp4", np.random.default_rng(1).integers(0, 256, (7, 40, 56, 3), dtype=np.uint8), 8)
    backend = DemoBackend.load(DemoConfig(base=str(run), clip=str(clip), device="cpu", dtype="fp32",
                                          max_new_tokens=6))
    handlers, conv = DemoHandlers(backend), Conversation()
    *_, (conv, status, _, _) = handlers.on_video(str(tmp_path / "kitchen.mp4"), conv)
    assert "4 frames kept (at most 4)" in status and "video features [4, 256, 1024], pooled to 2x2x2 = 8 tokens" in status, status
    frames = VideoFeaturizer(str(clip), device="cpu", kept=4)(tmp_path / "kitchen.mp4")  # [4, 256, 1024]
    np.testing.assert_array_equal(conv.arrays["video"], frames)  # kept as they are; pooled when asked about
    *_, (_, chat, conv, status) = handlers.ask("Where is the person?", conv, 0.0, 6)
    assert status.startswith("Replied"), status
    # (joined stream pieces, as the demo shows them: with a random tiny model they may differ from answer()'s text in
    # how a token cut inside a UTF-8 character is rendered)
    expected = "".join(stream_answer(backend.model, backend.tokenizer, "Where is the person?", video=frames,
                                     options=backend.options()))
    assert expected.strip() == expected and expected
    assert chat[-1]["content"] == expected and conv.history == [("Where is the person?", expected)]
    # the terminal chat (`llavidal chat --video`) keeps the same per-frame tokens
    from llavidal.demo.chat import load_sample

    term = load_sample(backend.model.config, video=str(tmp_path / "kitchen.mp4"), featurizer=backend.featurizer)
    np.testing.assert_array_equal(term.arrays["video"], frames)
    assert "".join(term.stream(backend.model, backend.tokenizer, "Where is the person?", backend.options())) == expected
    # and the OpenAI-compatible server's media resolver (a `video_url` part) hands inference the same tokens
    from llavidal.inference import Query, encode_query
    from llavidal.serve.media import MediaResolver
    from llavidal.serve.protocol import MediaRef

    resolver = MediaResolver(backend.model.config, roots=[tmp_path], clip=str(clip), device="cpu")
    try:
        arr = resolver.array(MediaRef("video", str(tmp_path / "kitchen.mp4"), True, "messages[0].content[1]"))
    finally:
        resolver.close()
    np.testing.assert_array_equal(arr, frames)
    _, arrays = encode_query(backend.model, backend.tokenizer, Query.of("Where?", {"video": arr}), backend.options())
    assert arrays["video"].shape == (8, 1024)

"""The two-token video representation for long videos (docs/design.md#two-token-video): streaming 1-fps extraction in
bounded memory, the context token and its dependence on the question, training and asking on a tiny model, save/load
and merges of the context module, and the refusal to mix representations in one model."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_train import train_flags

from llavidal.representation import RepresentationError, TwoTokenSpec

GRID = 2  # 2 x 2 = 4 patch features per frame
TT_SPEC = TwoTokenSpec(GRID * GRID, 1.0)
CONTEXT_KEYS = {f"model.mm_video_context.{p}.{w}" for p in ("query", "proj") for w in ("weight", "bias")}


# ==================================================================== fixtures
@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip

    spec = TinyClipSpec(vision_hidden_size=32, vision_intermediate_size=32, vision_layers=1, vision_heads=2,
                        text_hidden_size=16, text_intermediate_size=16, text_layers=1, text_heads=2, projection_dim=16)
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", spec=spec)


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """A few one-minute synthetic videos with 32-wide features, in both representations."""
    from llavidal.synthetic import LongWorldSpec, make_long_dataset

    spec = LongWorldSpec(seconds=60, default_frames=10, dim=1024, patches=GRID * GRID)
    return {k: str(v) for k, v in make_long_dataset(tmp_path_factory.mktemp("long"), n_train=4, n_test=2,
                                                      spec=spec).items()}


@pytest.fixture(scope="module")
def trained(tiny_base, long_data, tmp_path_factory):
    """A projector-mode run on the two-token representation (2 steps) and its output folder."""
    from llavidal.train.train import train

    out = tmp_path_factory.mktemp("two_token_run") / "run"
    data = {"train": long_data["train"], "video_folder": long_data["two_token_folder"]}
    summary = train(train_flags(tiny_base, data, out, ("video",), "--video_representation", "two_token",
                                "--video_grid", str(GRID), max_steps=3, learning_rate=5e-2))
    return out, summary


def two_token_model(tiny_base, seed=0):
    from llavidal import load_pretrained
    from llavidal.model.two_token import enable_two_token

    model, tok = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    enable_two_token(model, TT_SPEC, seed)
    return model, tok


def frames(n=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, GRID * GRID, 1024)).astype(np.float16)


# ==================================================================== extraction
def test_sample_indices_one_per_second():
    from llavidal.video.longvideo import sample_indices

    assert sample_indices(120, 4.0).tolist() == list(range(2, 120, 4))  # the middle frame of each second
    assert sample_indices(10, 4.0).tolist() == [2, 6, 9]  # 2.5 s: the partial last second is kept (clamped)
    assert sample_indices(30 * 3600, 30.0).shape == (3600,)  # an hour: 3,600 frames
    thinned = sample_indices(30 * 3600, 30.0, max_frames=100)
    assert thinned.shape == (100,) and np.all(np.diff(thinned) > 0)


def _video(path, seconds, fps=4, seed=0):
    from llavidal.video.io import write_video

    g = np.random.default_rng(seed)
    return write_video(path, g.integers(0, 255, (seconds * fps, 96, 128, 3), dtype=np.uint8), fps=fps)


def _write_peak(fz, video, target) -> int:
    tracemalloc.start()
    try:
        fz.write(video, target)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_streaming_extraction_bounded_memory(small_clip, tmp_path, decoder):
    from llavidal.video.io import read_frames
    from llavidal.video.longvideo import LongVideoConfig, LongVideoFeaturizer, iter_frame_chunks, sample_indices

    short, long = _video(tmp_path / "short.mp4", 6), _video(tmp_path / "long.mp4", 30, seed=1)
    fz = LongVideoFeaturizer(LongVideoConfig(clip=str(small_clip), grid=GRID, chunk=3, decoder=decoder))
    idx = sample_indices(30 * 4, 4.0)
    assert max(len(c) for c in iter_frame_chunks(long, idx, 3, decoder)) == 3
    # streamed to disk: the features of every second, equal to encoding all sampled frames at once
    info = fz.write(long, tmp_path / "long.npy")
    got = np.load(tmp_path / "long.npy")
    assert got.shape == (30, GRID * GRID, 32) and got.dtype == np.float16 and info["sampled"] == 30
    whole, _ = read_frames(long, indices=idx, decoder=decoder)
    np.testing.assert_allclose(got.astype(np.float32), fz.features_from_frames(whole).astype(np.float32), atol=2e-3)
    # bounded memory: five times the video, about the same peak, far below the sampled frames held at once
    peak_short, peak_long = _write_peak(fz, short, tmp_path / "s.npy"), _write_peak(fz, long, tmp_path / "l.npy")
    assert peak_long < 1.5 * peak_short + 64 * 2**10, (peak_short, peak_long)
    assert peak_long < whole.nbytes / 2, (peak_long, whole.nbytes)


def test_extract_long_folder_resumes_and_reports(small_clip, tmp_path):
    from llavidal.cli import main

    _video(tmp_path / "in" / "a.mp4", 4)
    (tmp_path / "in" / "bad.mp4").write_bytes(b"not a video")
    argv = ["extract-long-video", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--clip",
            str(small_clip), "--grid", str(GRID), "--no-progress"]
    assert main(argv) == 1  # one video failed
    summary = json.loads((tmp_path / "out" / "extract_summary.json").read_text())
    assert (summary["written"], summary["failed"], summary["frames"]) == (1, 1, 4)
    assert np.load(tmp_path / "out" / "a.npy").shape == (4, GRID * GRID, 32)
    assert "bad.mp4" in (tmp_path / "out" / "failures.jsonl").read_text()
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "out" / f".a.npy.{dead.pid}.tmp"  # what a run killed mid-write leaves
    stale.write_bytes(b"\x00" * 64)
    main(argv)
    assert json.loads((tmp_path / "out" / "extract_summary.json").read_text())["already_done"] == 1
    assert not stale.exists()


# ==================================================================== the model
def test_default_model_is_unchanged(tiny):
    model, _ = tiny
    assert not any("mm_video_context" in k for k in model.state_dict())
    assert model.config.video_representation is None


def test_context_module_shapes_and_question_dependence(tiny_base):
    from llavidal.inference import GenerationOptions, Query, prepare_inputs
    from llavidal.model.two_token import VideoContextAttention, context_module

    module = VideoContextAttention(hidden_size=16, feature_size=8)
    out = module(torch.randn(5, 4, 8), torch.randn(2, 16), torch.tensor([0, 0, 0, 1, 1]))
    assert out.shape == (5, 16)

    model, tok = two_token_model(tiny_base)
    with torch.no_grad():  # a query that is not near zero, so the attention is far from uniform
        context_module(model).query.weight.normal_(0, 3.0)
    video = frames()
    opts = GenerationOptions(max_new_tokens=1)

    def video_rows(question, system=None):
        b = prepare_inputs(model, tok, [Query(question, video=video)], GenerationOptions(max_new_tokens=1,
                                                                                         system=system))
        marked = [tok.convert_ids_to_tokens(int(i)) for i in b["input_ids"][0][b["query_mask"][0]]]
        emb = model.embed_multimodal(b["input_ids"], video_features=b["video_features"], query_mask=b["query_mask"])
        rows = emb[0][b["input_ids"][0] == model.patch_token_id("video")]  # [2T, H]
        return rows[0::2], rows[1::2], marked

    content_a, context_a, marked = video_rows("What does the person drink?")
    assert "".join(marked).replace("▁", " ").strip() == "What does the person drink?"
    content_b, context_b, _ = video_rows("Which phone rings at the end?")
    assert content_a.shape == context_a.shape == (5, model.config.hidden_size)
    torch.testing.assert_close(content_a, content_b)  # content tokens: the frames only
    assert (context_a - context_b).abs().max() > 1e-3  # context tokens: the question too
    _, context_sys, _ = video_rows("What does the person drink?", system="Another system prompt.")
    torch.testing.assert_close(context_a, context_sys)  # only the question counts, not the template around it
    batch = prepare_inputs(model, tok, [Query("What does the person drink?", video=video)], opts)
    with pytest.raises(ValueError, match="query_mask"):
        model.embed_multimodal(batch["input_ids"], video_features=batch["video_features"])


def test_engine_generate_and_scores_agree(tiny_base):
    from llavidal.inference import GenerationOptions, Query, answer_batch, continuation_scores, prepare_inputs

    model, tok = two_token_model(tiny_base)
    queries = [Query("What does the person drink?", video=frames(5)), Query("Why?", video=frames(3, seed=1))]
    opts = GenerationOptions(max_new_tokens=6)
    replies = answer_batch(model, tok, queries, opts)
    batch = prepare_inputs(model, tok, queries, opts)
    out = model.generate(**batch, **opts.generate_kwargs(tok))
    assert replies == [tok.decode(o, skip_special_tokens=True).strip() for o in out]
    scores = continuation_scores(model, tok, queries[0], ["a cup", "a book"], opts)
    assert len(scores) == 2 and all(np.isfinite(s.logprob) for s in scores)


# ==================================================================== training, saving, loading
def test_train_and_ask_two_token(trained, long_data, tiny_base):
    from safetensors import safe_open

    from llavidal import load_pretrained
    from llavidal.features import load_feature
    from llavidal.inference import answer
    from llavidal.model.two_token import context_module

    out, summary = trained
    assert summary["modalities"] == ["video"] and summary["global_step"] == 3
    with safe_open(str(out / "adapter.safetensors"), "pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
    assert CONTEXT_KEYS <= keys
    assert json.loads(meta["video_representation"]) == TT_SPEC.to_config()
    assert not (out / "mm_projector.bin").exists()  # the original layout cannot hold it
    model, tok = load_pretrained(out, device="cpu", dtype=torch.float32)
    assert model.config.video_representation == TT_SPEC.to_config()
    fresh, _ = two_token_model(tiny_base, seed=7)  # what the run started from (its seed)
    moved = [n for n, p in context_module(model).named_parameters()
             if not torch.equal(p, dict(context_module(fresh).named_parameters())[n])]
    assert moved  # the context module trained in projector mode
    video = load_feature(Path(long_data["two_token_folder"]) / "long_test_0000.npy")
    assert isinstance(answer(model, tok, "What does the person use?", video=video, max_new_tokens=4), str)


def test_trainable_in_projector_mode(tiny_base, long_data, tmp_path):
    from llavidal.train.arguments import parse_args
    from llavidal.train.train import build_model

    data = {"train": long_data["train"], "video_folder": long_data["two_token_folder"]}
    model, _, _ = build_model(*parse_args(train_flags(tiny_base, data, tmp_path, ("video",),
                                                      "--video_representation", "two_token")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    projector = {"model.mm_projector.weight", "model.mm_projector.bias", "model.embed_tokens.rows"}
    assert trainable == projector | CONTEXT_KEYS


def test_save_load_merge_and_full_folder(trained, tiny_base, tmp_path):
    from safetensors import safe_open

    from llavidal import load_pretrained
    from llavidal.model import CheckpointError, export_legacy_projector, save_adapter, save_pretrained
    from llavidal.model.two_token import context_module
    from llavidal.train.merge import merge_adapters

    out, _ = trained
    model, tok = load_pretrained(tiny_base, projector=out / "adapter.safetensors", device="cpu", dtype=torch.float32)
    want = {k: v for k, v in load_pretrained(out, device="cpu")[0].state_dict().items() if "mm_video_context" in k}
    got = {k: v for k, v in model.state_dict().items() if "mm_video_context" in k}
    assert set(got) == CONTEXT_KEYS and all(torch.equal(got[k], want[k]) for k in got)
    # a full folder keeps the module and the record
    save_pretrained(model, tok, tmp_path / "full")
    again, _ = load_pretrained(tmp_path / "full", device="cpu", dtype=torch.float32)
    assert all(torch.equal(context_module(again).state_dict()[k], v)
               for k, v in context_module(model).state_dict().items())
    # an MMPro-style merge with a pose adapter keeps the video projector's context module and the record
    pose_run = tmp_path / "pose.safetensors"
    base_model, _ = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    save_adapter(base_model, tok, pose_run, modalities=["pose"])
    merged = merge_adapters([out, pose_run], tmp_path / "merged.safetensors")
    assert merged["modalities"] == ["video", "pose"]
    with safe_open(str(tmp_path / "merged.safetensors"), "pt") as fh:
        assert CONTEXT_KEYS <= set(fh.keys())
        assert json.loads(fh.metadata()["video_representation"]) == TT_SPEC.to_config()
    m2, _ = load_pretrained(tiny_base, projector=tmp_path / "merged.safetensors", device="cpu")
    assert all(torch.equal(m2.state_dict()[k], want[k]) for k in CONTEXT_KEYS)
    with pytest.raises(CheckpointError, match="two-token"):
        export_legacy_projector(model, tmp_path / "mm_projector.bin")


# ==================================================================== one model, one representation
def test_mixing_representations_is_refused(trained, tiny_base, long_data, tmp_path):
    from llavidal import load_pretrained
    from llavidal.data import ADLXDataset, DataError, read_records
    from llavidal.inference import GenerationOptions, Query, encode_query
    from llavidal.model import CheckpointError, load_projector, save_adapter
    from llavidal.train.train import train

    out, _ = trained
    two, tok = load_pretrained(out, device="cpu", dtype=torch.float32)
    rows = np.zeros((356, 1024), np.float16)
    with pytest.raises(RepresentationError, match="spatio-temporal rows, but this model reads two-token"):
        encode_query(two, tok, Query("q", video=rows), GenerationOptions())
    plain, _ = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    with pytest.raises(RepresentationError, match="per-frame patch tokens .*two-token features.*--video_representation"):
        encode_query(plain, tok, Query("q", video=frames()), GenerationOptions())
    # a data set whose files are of the other representation: a clear error naming the record, never skipped
    records = read_records(long_data["train"])
    ds = ADLXDataset(records, tok, two.config, {"video": long_data["default_folder"]}, missing="skip")
    with pytest.raises(DataError, match="record 0 .*spatio-temporal rows"):
        ds[0]
    # weights: a video projector trained on rows cannot become two-token, nor take a two-token adapter
    plain.config.trained_modalities = ["video"]
    save_adapter(plain, tok, tmp_path / "rows.safetensors", modalities=["video"])
    data = {"train": long_data["train"], "video_folder": long_data["two_token_folder"]}
    with pytest.raises(ValueError, match="one model reads one video representation"):
        train(train_flags(tiny_base, data, tmp_path / "run", ("video",), "--video_representation", "two_token",
                          "--pretrain_mm_mlp_adapter", str(tmp_path / "rows.safetensors")))
    with pytest.raises(CheckpointError, match="one model reads one video representation"):
        load_projector(plain, tok, out / "adapter.safetensors")


# ==================================================================== infer, eval run and the demo on raw videos
def test_infer_eval_run_and_demo_on_raw_video(trained, tmp_path, capsys):
    """A two-token model answers about raw videos through every entry point: features every second, streamed, the
    same answer as :func:`answer` on those features."""
    from llavidal import load_pretrained
    from llavidal.cli import main
    from llavidal.demo.app import DemoBackend, DemoConfig, DemoHandlers
    from llavidal.demo.chat import Conversation
    from llavidal.inference import answer
    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.longvideo import LongVideoConfig, LongVideoFeaturizer

    out, _ = trained
    clip = make_tiny_clip(tmp_path / "clip", seed=0)  # width 1024: the tiny base's video projector
    videos = tmp_path / "videos"
    video = _video(videos / "kitchen.mp4", 5)  # 5 s at 4 fps
    _video(videos / "hall.mp4", 3, seed=2)
    question = "What does the person use?"
    feats = LongVideoFeaturizer(LongVideoConfig(clip=str(clip), grid=GRID, device="cpu", progress=False))(video)
    assert feats.shape == (5, GRID * GRID, 1024)
    model, tok = load_pretrained(out, device="cpu", dtype=torch.float32)
    want = answer(model, tok, question, video=feats, max_new_tokens=6)

    # llavidal infer: the model's representation chooses the featurizer; the cache holds the per-frame .npy
    cache = tmp_path / "cache"
    assert main(["infer", "--base", str(out), "--video", str(video), "--clip", str(clip), "-q", question,
                 "--max-new-tokens", "6", "--device", "cpu", "--json", "--feature-cache", str(cache)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"] == want
    assert np.load(cache / "kitchen.npy").shape == (5, GRID * GRID, 1024)

    # llavidal eval run --clip: raw benchmark videos extracted once (streamed, .npy), every item answered
    qa = {str(i): {"video_id": f"/elsewhere/{name}.mp4", "question": question,
                   "choices": {"1": "a cup", "2": "a phone", "3": "a book", "4": "a laptop"}, "ground_truth": "a book"}
          for i, name in enumerate(["kitchen", "hall", "absent"])}
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    assert main(["eval", "run", "--task", "smarthome-ar", "--qa-file", str(tmp_path / "qa.json"), "--base", str(out),
                 "--max-new-tokens", "4", "--device", "cpu", "--video-dir", str(videos), "--clip", str(clip),
                 "--output", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["mcq"]["total"] == 3 and summary["mcq"]["missing_video"] == 1
    assert summary["video_features"] == {"clip": str(clip), "extracted": 2, "failed": 0}
    assert np.load(tmp_path / "eval" / "video_two_token" / "hall.npy").shape == (3, GRID * GRID, 1024)
    replies = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sum(r["status"] == "ok" for r in replies) == 2

    # the demo: an upload becomes per-second features, and the reply is answer()'s
    backend = DemoBackend.load(DemoConfig(base=str(out), clip=str(clip), device="cpu", dtype="fp32", max_new_tokens=6))
    demo_feats, report = backend.video_features(video)
    np.testing.assert_array_equal(demo_feats, feats)
    assert "5 frames sampled (at 1 per second)" in report and f"[5, {GRID * GRID}, 1024]" in report
    conv = Conversation()
    conv.set_feature("video", demo_feats, "kitchen.mp4")
    *_, (_, _, conv, status) = DemoHandlers(backend).ask(question, conv, 0.0, 6)
    assert "Replied" in status and conv.history == [(question, want)]


def test_long_world_hides_the_late_event_from_the_default_sampler(tmp_path):
    """The synthetic long videos behind ``quickstart --study long-video``: an early event covers a frame of the
    100-frame sampler, a late one falls between two of its frames (its default rows never show it, its 1-fps frames
    do); both representations are written per video, and the control's records are the early-event videos."""
    from llavidal.synthetic import LONG_EVENTS, LongWorld, LongWorldSpec, long_answer, make_long_dataset

    spec = LongWorldSpec(dim=16)
    world = LongWorld(0, spec)
    data = make_long_dataset(tmp_path, n_train=4, n_test=6, spec=spec)
    seen = set(world.default_seconds().tolist())
    items = json.loads(Path(data["test"]).read_text())
    assert [it["when"] for it in items] == ["early", "late"] * 3
    for it in items:
        assert (it["start_second"] in seen) == it["seen_by_default"] == (it["when"] == "early")
        assert it["answer"] in it["choices"] and len(set(it["choices"])) == 4
        event = [long_answer(e) for e in range(len(LONG_EVENTS))].index(it["answer"])
        direction = world.events[event] / np.linalg.norm(world.events[event])
        two = np.load(Path(data["two_token_folder"]) / it["video"]).astype(np.float32).mean(axis=1)  # [120, 16]
        rows = np.load(Path(data["default_folder"]) / it["video"]).astype(np.float32)  # [100 + 4, 16]
        assert two.shape == (spec.seconds, 16) and rows.shape == (100 + spec.patches, 16)
        cos_two, cos_rows = (x @ direction / np.linalg.norm(x, axis=-1) for x in (two, rows[:100]))
        assert int(np.argmax(cos_two)) == it["start_second"] and cos_two.max() > 0.7
        assert (cos_rows.max() > 0.7) == it["seen_by_default"]
    train = json.loads(Path(data["train"]).read_text())
    assert [r["id"] for r in json.loads(Path(data["train_seen"]).read_text())] == [r["id"] for r in train[::2]]


def test_long_pretraining_text_names_the_event_with_one_token_per_frame(tiny_base):
    """Stage 0 of the study: a caption of one word per frame (the scene's, the event's where it happens), each word
    one token of the tiny tokenizer, and the answer names the event whose word the caption holds."""
    from llavidal.model.base import load_tokenizer
    from llavidal.synthetic import LONG_EVENTS, LONG_QUESTION, LONG_SCENES, LONG_WORDS, long_pretraining_text

    tok = load_tokenizer(tiny_base)
    assert all(len(tok.tokenize(" " + w)) == 1 for w in (*LONG_WORDS, *LONG_SCENES))
    texts = long_pretraining_text(200, seed=3)
    named = 0
    for r in texts:
        human, reply = (c["value"] for c in r["conversations"])
        words = human.replace(LONG_QUESTION, "").split()
        assert 2 <= len(words) <= 241 and set(words) <= {*LONG_SCENES, *LONG_WORDS}
        events = {w for w in words if w in LONG_WORDS}
        assert len(events) <= 1
        if events:
            named += 1
            assert reply == f"The person {LONG_EVENTS[LONG_WORDS.index(events.pop())]}."
    assert 160 <= named <= 195  # about 9 in 10


def test_a_config_cannot_read_pooled_tokens_and_two_tokens_at_once():
    """video_pool (pooled per-frame tokens) and the two-token representation are two answers to one question: a
    config holding both is refused where the representation is read, naming both."""
    from types import SimpleNamespace

    from llavidal.representation import two_token_spec

    both = SimpleNamespace(video_pool=[2, 2, 2], video_representation={"kind": "two_token", "patches": 16, "fps": 1.0})
    with pytest.raises(ValueError, match="video_pool .*two tokens per frame"):
        two_token_spec(both)
    assert two_token_spec(SimpleNamespace(video_pool=[2, 2, 2], video_representation=None)) is None

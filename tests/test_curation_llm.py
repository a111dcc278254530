"""ADL-X curation, LLM steps (captions -> describe -> qa) against a real loopback OpenAI-compatible server.

Covers: reply parsing (JSON, fences, Python literals, prose around, cut-off lists), frame sampling, the image sent as
a base64 JPEG data URL, retries on 500/429, malformed replies retried then recorded as failed, an earlier-step
failure for one video not stopping the others, resume after an interruption without repeating requests, sharded
captions merged, the circuit breaker, and the final training JSON read by the project's own data reader.
"""
from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_stub import OpenAIStub, status

from llavidal.curation.captions import CaptionConfig, caption_videos, merge_captions, plan_frames, run_shard
from llavidal.curation.describe import describe_videos
from llavidal.curation.prompts import default_curation_prompts
from llavidal.curation.qa import generate_qa, is_order_question, training_records
from llavidal.curation.steps import CurationConfig as LLMConfig
from llavidal.curation.steps import ReplyError, StepError, parse_description, parse_qa_list
from llavidal.llm import LLMClient, run_bounded

COLORS = {"001_video_001": (200, 30, 30), "001_video_002": (30, 200, 30), "002_video_001": (30, 30, 200)}
ACTIONS = {
    "001_video_001": {"actions": ["drink water", "eat meal"], "sentence": "The person drinks water, then eats."},
    "001_video_002": {"actions": ["sit down", "stand up", "clapping"], "sentence": "Sits, stands, claps."},
    "002_video_001": {"actions": ["brushing teeth", "wipe face"], "sentence": "Brushes teeth, then wipes face."},
}


# ----------------------------------------------------------------------------------------------------------------
# fixtures: tiny videos, a stub that answers like the real models would
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three 1.5 s videos (6 frames at 4 fps, 32x32, one colour each) and one corrupt file."""
    from llavidal.video.io import write_video

    d = tmp_path_factory.mktemp("stitched")
    for name, rgb in COLORS.items():
        frames = np.zeros((6, 32, 32, 3), np.uint8)
        frames[...] = rgb
        write_video(d / f"{name}.mp4", frames, fps=4)
    (d / "003_video_001.mp4").write_bytes(b"this is not a video" * 20)
    (d / "actions.json").write_text(json.dumps({**ACTIONS, "003_video_001": {"actions": ["hopping"],
                                                                             "sentence": "Hops."}}))
    return d


def _text(body: dict) -> str:
    out = []
    for m in body["messages"]:
        c = m["content"]
        out.append(c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p["type"] == "text"))
    return "\n".join(out)


def _video_of(body: dict) -> str:
    return next((v for v in COLORS if v in _text(body)), "?")


def words(n: int, start: str = "The person") -> str:
    return " ".join([start] + ["word"] * (n - len(start.split())))


def qa_json(kind: str, tag: str = "") -> str:
    if kind == "summary":
        qs = ["What happens in the video?", "Can you summarise the video?", "Give an overview."]
    else:
        qs = ["In what order does the person act?", "What does the person hold?", "Where is the person?"]
    return json.dumps([{"Q": q, "A": f"answer {i} {tag}".strip()} for i, q in enumerate(qs)])


def responder(body: dict) -> str:
    """Captions for image requests, 200-word descriptions, QA lists; shapes vary with the video."""
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        return "A person in a room holds a cup near a table."
    text = _text(body)
    if "Write the description now" in text:
        return words(200)
    vid = _video_of(body)
    kind = "summary" if "summary question-answer" in text else "detail"
    if vid == "001_video_002":  # a Python literal in a code fence with prose around it
        pairs = [{"Q": p["Q"], "A": p["A"] + " it's fine"} for p in json.loads(qa_json(kind))]
        return "Here you go:\n```python\n" + repr(pairs) + "\n```\nHope this helps!"
    return qa_json(kind, vid)


@pytest.fixture
def stub():
    with OpenAIStub(responder=responder, model="stub-vlm") as s:
        yield s


def llm(stub: OpenAIStub, **kw) -> LLMConfig:
    base = dict(base_url=stub.base_url, model="stub-vlm", timeout=5.0)
    base.update(kw)
    return LLMConfig(**base)


def cap_cfg(videos: Path, out: Path, stub: OpenAIStub, **kw) -> CaptionConfig:
    base = dict(videos=videos, out=out, llm=llm(stub), concurrency=4, progress=False)
    base.update(kw)
    return CaptionConfig(**base)


# ----------------------------------------------------------------------------------------------------------------
# parsing and sampling
# ----------------------------------------------------------------------------------------------------------------


def test_parse_qa_list_shapes():
    good = [{"Q": "a?", "A": "b"}, {"Q": "c?", "A": "d"}, {"Q": "e?", "A": "f"}]
    j = json.dumps(good)
    for text in (j, f"```json\n{j}\n```", f"Sure! Here's the list:\n{j}\nAnything else [1]?", repr(good),
                 j[1:-1], json.dumps({"qa": good}), j[:-1] + ",", j.replace('"Q"', '"question"'),
                 "<think>plan [x]</think>" + j):
        assert parse_qa_list(text) == (good, 0), text
    assert parse_qa_list(json.dumps(good + [{"Q": "g?", "A": "h"}])) == (good, 1)
    for bad in ("I cannot help.", json.dumps(good[:2]), json.dumps([{"Q": "a?"}] * 3), "", None,
                j[:-8]):  # cut inside the last answer: two complete pairs only
        with pytest.raises(ReplyError):
            parse_qa_list(bad)


def test_parse_description_and_order_questions():
    assert parse_description("Description: The person  walks.\n") == "The person walks."
    assert parse_description("{'Q': 'Describe it', 'A': 'A man sits.'}") == "A man sits."
    assert parse_description('```\n{"description": "x y"}\n```') == "x y"
    with pytest.raises(ReplyError):
        parse_description("   ")
    assert is_order_question("In what order does the person act?")
    assert is_order_question("What does the person do first?")
    assert not is_order_question("What colour is the shirt?")


def test_plan_frames_two_per_second():
    assert plan_frames(6, 4.0, 2.0) == [(0, 0.0), (2, 0.5), (4, 1.0)]
    assert plan_frames(90, 30.0, 2.0) == [(0, 0.0), (15, 0.5), (30, 1.0), (45, 1.5), (60, 2.0), (75, 2.5)]
    assert plan_frames(1, 30.0, 2.0) == [(0, 0.0)]
    assert plan_frames(10, 25.0, 2.0) == [(0, 0.0)]  # 0.4 s: one frame
    assert [i for i, _ in plan_frames(4, 2.0, 4.0)] == [0, 1, 2, 3]  # rate above the video's: no repeats


def test_prompts_are_versioned_and_valid():
    p = default_curation_prompts()
    assert p.ident == "llavidal-curation@1"
    msgs = p["describe"].render(captions="[0.0 s] x", actions="a", min_words=150, max_words=300)
    assert "150" in msgs[0]["content"] and "[0.0 s] x" in msgs[1]["content"]


# ----------------------------------------------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------------------------------------------


def test_captions_end_to_end_image_sent_and_rerun_is_free(videos, tmp_path, stub):
    from PIL import Image

    from llavidal.cli import main

    out = tmp_path / "caps"
    rc = main(["curate", "captions", "--videos", str(videos), "--out", str(out), "--endpoint", stub.base_url,
               "--model", "stub-vlm", "--concurrency", "4", "--no-progress", "--seed", "7"])
    assert rc == 1  # one video failed (recorded), the others are done
    caps = json.loads((out / "captions.json").read_text())
    assert sorted(caps) == sorted(COLORS)  # the corrupt video is not there ...
    for frames in caps.values():
        assert [(f["frame"], f["t"]) for f in frames] == [(0, 0.0), (2, 0.5), (4, 1.0)]
        assert all(f["caption"].startswith("A person") for f in frames)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert "unreadable video" in manifest["failed"]["items"]["003_video_001"]  # ... and says why
    assert manifest["identity"] == {"model": "stub-vlm", "prompt": "llavidal-curation@1", "fps": 2.0}
    assert manifest["backend"]["temperature"] == 0.0 and manifest["backend"]["seed"] == 7
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["item"] for f in failures] == ["003_video_001"]
    assert stub.count == 9

    # the frame really went out as a base64 JPEG data URL in an image_url part, with temperature and seed
    body = next(b for b in stub.requests if "data:image" in json.dumps(b))
    assert body["temperature"] == 0 and body["seed"] == 7 and body["model"] == "stub-vlm"
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (32, 32)
    means = {tuple(int(round(c / 10)) for c in np.asarray(Image.open(io.BytesIO(base64.b64decode(
        b["messages"][-1]["content"][1]["image_url"]["url"].split(",", 1)[1]))).convert("RGB")).reshape(-1, 3)
        .mean(0)) for b in stub.requests}
    assert means == {tuple(int(round(c / 10)) for c in rgb) for rgb in COLORS.values()}

    # a rerun asks nothing and writes the same captions
    stub.reset_counts()
    before = (out / "captions.json").read_bytes()
    assert main(["curate", "captions", "--videos", str(videos), "--out", str(out), "--endpoint", stub.base_url,
                 "--model", "stub-vlm", "--no-progress", "--seed", "7"]) == 1
    assert stub.count == 0 and (out / "captions.json").read_bytes() == before
    assert json.loads((out / "manifest.json").read_text())["counts"]["videos_reused"] == 3

    # results of another model are never mixed in
    with pytest.raises(StepError, match="never mixed"):
        caption_videos(cap_cfg(videos, out, stub, llm=llm(stub, model="other-vlm")))


def test_captions_failed_frames_then_resume_asks_only_missing(videos, tmp_path, stub):
    out = tmp_path / "caps"
    # every request of the first run gets HTTP 500 and max_attempts=1: every frame fails, plans are written
    stub.responder = lambda body: status(500)
    m = caption_videos(cap_cfg(videos, out, stub, llm=llm(stub, max_attempts=1), concurrency=1,
                               limit=1))
    assert m["failed"]["count"] == 1 and "3 of 3 frames have no caption" in m["failed"]["items"]["001_video_001"]
    assert json.loads((out / "captions.json").read_text()) == {}
    assert stub.count == 3
    # the next run: first frame OK; then the healthy server; a kill leaves a torn line at the end of the shard
    stub.responder = responder
    stub.reset_counts()
    run_shard(cap_cfg(videos, out, stub, limit=1, concurrency=1), 0, 1)
    shard = out / "captions.shard0.jsonl"
    lines = shard.read_text().splitlines()
    assert sum('"kind": "frame"' in x for x in lines) == 3
    shard.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # last frame torn mid-write
    stub.reset_counts()
    m = caption_videos(cap_cfg(videos, out, stub, limit=1))
    assert stub.count == 1  # only the torn frame is asked again
    assert m["status"] == "done" and m["failed"]["count"] == 0
    assert len(json.loads((out / "captions.json").read_text())["001_video_001"]) == 3


def test_captions_shards_merge(videos, tmp_path, stub):
    out = tmp_path / "caps"
    cfg = cap_cfg(videos, out, stub)
    s0, s1 = run_shard(cfg, 0, 2), run_shard(cfg, 1, 2)
    assert s0["videos"] + s1["videos"] == 4
    names = [{json.loads(x)["video"] for x in (out / f"captions.shard{i}.jsonl").read_text().splitlines()}
             for i in (0, 1)]
    assert names[0] and names[1] and not names[0] & names[1]  # every video in exactly one shard
    from llavidal.curation.captions import _log

    merged, incomplete = merge_captions(out, _log(cfg, "llavidal-curation@1"))
    assert sorted(merged) == sorted(COLORS) and not incomplete
    stub.reset_counts()
    m = caption_videos(cfg)  # a rerun with one process merges both shard files, asking nothing
    assert stub.count == 0 and m["outputs"]["videos_complete"] == 3


def test_captions_two_processes(videos, tmp_path, stub):
    """``--procs 2``: two spawned processes, one shard file each, merged into captions.json."""
    out = tmp_path / "caps"
    m = caption_videos(cap_cfg(videos, out, stub, procs=2))
    assert m["procs"] == 2 and m["outputs"]["videos_complete"] == 3 and stub.count == 9
    assert (out / "captions.shard0.jsonl").is_file() and (out / "captions.shard1.jsonl").is_file()
    assert m["llm_stats"]["http_requests"] == 9


def make_tiny_vlm(out: Path) -> Path:
    """A tiny random LLaVA (CLIP vision 32x32 + 1-layer LLaMA, the project's tiny sentencepiece tokenizer, a chat
    template) that loads with AutoModelForImageTextToText + AutoProcessor; built offline in about a second."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from llavidal.model.tiny import write_tokenizer

    out.mkdir(parents=True)
    write_tokenizer(out, 1000, 0)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_tokens(["<image>"], special_tokens=True)
    template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == "
                "'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          chat_template=template, num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def test_local_vlm_captions(videos, tmp_path):
    """``--local-vlm``: the same outputs from a transformers VLM on this machine, frames batched."""
    vlm = make_tiny_vlm(tmp_path / "vlm")
    out = tmp_path / "caps"
    m = caption_videos(CaptionConfig(videos=videos, out=out, local_vlm=str(vlm), batch=2, max_new_tokens=4,
                                     device="cpu", progress=False))
    caps = json.loads((out / "captions.json").read_text())
    assert sorted(caps) == sorted(COLORS) and all(len(v) == 3 and v[0]["caption"] for v in caps.values())
    assert m["identity"]["model"] == "local:" + str(vlm.resolve()) and m["backend"]["kind"] == "local"
    assert m["llm_stats"]["generate_calls"] == 6  # 3 videos x (2 + 1 frames)
    assert "unreadable video" in m["failed"]["items"]["003_video_001"]


def test_local_vlm_needs_a_loadable_model(videos, tmp_path):
    with pytest.raises(StepError, match="give either"):
        CaptionConfig(videos=videos, out=tmp_path).validate()
    cfg = CaptionConfig(videos=videos, out=tmp_path / "c", local_vlm=str(tmp_path / "missing"), progress=False)
    with pytest.raises(StepError, match="AutoModelForImageTextToText"):
        caption_videos(cfg)


# ----------------------------------------------------------------------------------------------------------------
# describe
# ----------------------------------------------------------------------------------------------------------------


def _captions_json(path: Path, names) -> Path:
    path.write_text(json.dumps({n: [{"t": 0.0, "frame": 0, "caption": f"{n} a person stands"},
                                    {"t": 0.5, "frame": 2, "caption": "a person holds a cup"}] for n in names}))
    return path


def _actions_json(path: Path, extra: dict | None = None) -> Path:
    path.write_text(json.dumps({**ACTIONS, **(extra or {})}))
    return path


def test_describe_retries_length_skips_missing_and_records(tmp_path, stub):
    caps = _captions_json(tmp_path / "captions.json", ["001_video_001", "001_video_002", "002_video_001"])
    acts = _actions_json(tmp_path / "actions.json", {"003_video_001": {"actions": ["hopping"]},  # no captions
                                                     "004_video_001": {"actions": []}})  # malformed entry
    seen: dict[str, int] = {}

    def resp(body):
        vid = _video_of(body)
        seen[vid] = seen.get(vid, 0) + 1
        if vid == "001_video_002":
            return words(60)  # always too short: asked again once, then accepted and flagged
        if vid == "002_video_001" and seen[vid] == 1:
            return words(40)  # too short once, then fine
        return "```\n" + words(180) + "\n```"

    stub.responder = resp
    out = tmp_path / "descriptions.json"
    with LLMClient(llm(stub, temperature=0.7, seed=3)) as client:
        m = describe_videos(caps, acts, out, client, concurrency=1, progress=False)
    d = json.loads(out.read_text())
    assert sorted(d) == ["001_video_001", "001_video_002", "002_video_001"]
    assert d["001_video_001"] == {"description": words(180), "word_count": 180, "in_range": True}
    assert d["001_video_002"]["in_range"] is False and d["001_video_002"]["word_count"] == 60
    assert d["002_video_001"]["word_count"] == 180
    assert stub.count == 5
    assert m["length"]["out_of_range"] == 1 and m["counts"]["described"] == 3
    assert m["skipped"]["by_kind"] == {"bad_actions": 1, "no_captions": 1}
    assert "captions step failed" in m["skipped"]["items"]["003_video_001"]["reason"]
    assert m["llm"]["temperature"] == 0.7 and m["llm"]["seed"] == 3 and m["identity"]["model"] == "stub-vlm"
    assert m["identity"]["prompt"] == "llavidal-curation@1"
    body = stub.requests[0]
    assert body["temperature"] == 0.7 and body["seed"] == 3
    assert "drinks water, then eats" in _text(body) and "[0.5 s] a person holds a cup" in _text(body)
    results = [json.loads(x) for x in (tmp_path / "descriptions.results.jsonl").read_text().splitlines()]
    assert {r["video"]: r["word_counts_seen"] for r in results}["002_video_001"] == [40, 180]


def test_describe_http_errors_then_success_and_resume_after_kill(tmp_path, stub):
    caps = _captions_json(tmp_path / "captions.json", list(COLORS))
    acts = _actions_json(tmp_path / "actions.json")
    out = tmp_path / "descriptions.json"
    stub.push(status(500), status(429, retry_after=0), status(503))  # first video: three errors, then OK
    with LLMClient(llm(stub)) as client:
        describe_videos(caps, acts, out, client, concurrency=1, progress=False)
        assert client.stats.retries == 3 and client.stats.failures == 0
    assert stub.count == 6 and len(json.loads(out.read_text())) == 3
    # a kill during the next write left a torn line; two results are intact, one is lost
    res = tmp_path / "descriptions.results.jsonl"
    lines = res.read_text().splitlines()
    res.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:40])
    stub.reset_counts()
    with LLMClient(llm(stub)) as client:
        m = describe_videos(caps, acts, out, client, concurrency=2, progress=False)
    assert stub.count == 1 and m["counts"] == {"reused": 2, "described": 1}
    assert len(json.loads(out.read_text())) == 3
    stub.reset_counts()
    with LLMClient(llm(stub)) as client:  # idempotent: nothing left to ask
        describe_videos(caps, acts, out, client, progress=False)
    assert stub.count == 0


def test_endpoint_down_stops_instead_of_looping(tmp_path, stub):
    caps = _captions_json(tmp_path / "captions.json", list(COLORS))
    acts = _actions_json(tmp_path / "actions.json")
    stub.responder = lambda body: status(502)
    with LLMClient(llm(stub, max_attempts=2, max_consecutive_failures=2)) as client:
        m = describe_videos(caps, acts, tmp_path / "d.json", client, concurrency=1, progress=False)
    assert m["status"] == "aborted" and "failed 2 calls in a row" in m["aborted_because"]
    assert stub.count == 4  # two calls of two requests, then nothing more
    assert m["failed"]["count"] == 3 and "not attempted" in m["failed"]["items"]["002_video_001"]
    # a wrong model name (404) is not retried, but fails every call the same way: it stops the step too
    stub.responder = lambda body: status(404)
    stub.reset_counts()
    with LLMClient(llm(stub, max_consecutive_failures=2)) as client:
        m = describe_videos(caps, acts, tmp_path / "d2.json", client, concurrency=1, progress=False)
    assert m["status"] == "aborted" and stub.count == 2 and "http 404" in m["aborted_because"]


# ----------------------------------------------------------------------------------------------------------------
# qa -> training JSON
# ----------------------------------------------------------------------------------------------------------------


def _descriptions_json(path: Path, names) -> Path:
    path.write_text(json.dumps({n: {"description": f"{n}: " + words(160), "word_count": 162, "in_range": True}
                                for n in names}))
    return path


def test_qa_malformed_retried_then_failed_others_kept_and_trainable(tmp_path, stub):
    from llavidal.data.dataset import read_records
    from llavidal.prompting import expand_turns

    desc = _descriptions_json(tmp_path / "descriptions.json", ["001_video_001", "001_video_002", "002_video_001"])
    acts = _actions_json(tmp_path / "actions.json", {"003_video_001": {"actions": ["hopping"]}})  # no description

    def resp(body):
        text = _text(body)
        if _video_of(body) == "002_video_001" and "summary question-answer" in text:
            return "Sorry, I can only answer in prose."  # malformed every time
        if _video_of(body) == "001_video_001" and "detail question-answer" in text and not resp.order_sent:
            resp.order_sent = True  # first detail reply has no question about the order: asked again
            return json.dumps([{"Q": "What colour?", "A": "red"}] * 3)
        return responder(body)

    resp.order_sent = False
    stub.responder = resp
    out = tmp_path / "adlx_train.json"
    with LLMClient(llm(stub, max_parse_failures=3)) as client:
        m = generate_qa(desc, acts, out, client, concurrency=1, progress=False)
    assert m["failed"]["items"]["002_video_001/summary"].startswith("unparsable")
    assert m["skipped"]["by_kind"] == {"no_description": 1}
    assert m["outputs"]["videos"] == 2 and m["outputs"]["records"] == 12
    # 2 ok videos x 2 calls + 1 order retry, 002: detail ok + 3 malformed summary replies
    assert stub.count == 4 + 1 + 1 + 3
    fails = [json.loads(x) for x in (tmp_path / "adlx_train.failures.jsonl").read_text().splitlines()]
    assert [(f["item"], f["attempts"]) for f in fails] == [("002_video_001/summary", 3)]
    res = [json.loads(x) for x in (tmp_path / "adlx_train.results.jsonl").read_text().splitlines()]
    assert {(r["video"], r["kind"]): r["parse_failures"] for r in res}[("001_video_001", "detail")] == 1

    data = json.loads(out.read_text())
    assert data[0] == {"id": "001_video_001", "video": "001_video_001.pkl", "object": "001_video_001_object.pkl",
                       "pose": "001_video_001_pose.pkl", "conversations": [
                           {"from": "human", "value": "What happens in the video?\n<video><object><human_pose>"},
                           {"from": "gpt", "value": "answer 0 001_video_001"}]}
    assert data[1]["conversations"][0]["value"] == "<video><object><human_pose>\nCan you summarise the video?"
    assert data[9]["conversations"][1]["value"] == "answer 0 it's fine"  # the Python literal in a fence, parsed

    recs = read_records(out)  # the project's own reader: the format `llavidal train` takes
    assert len(recs) == 12 and {r["id"] for r in recs} == {"001_video_001", "001_video_002"}
    for r in recs:
        assert (r["video"], r["object"], r["pose"]) == (f"{r['id']}.pkl", f"{r['id']}_object.pkl",
                                                        f"{r['id']}_pose.pkl")
        (user, answer), = expand_turns(r["turns"], {"video": 356, "object": 16, "pose": 256})
        assert user.count("<vid_patch>") == 356 and user.count("<pose_patch>") == 256 and answer
    orders = [r["turns"][0][0] for r in recs if "order" in r["turns"][0][0]]
    assert len(orders) == 2  # one order question per video

    # the failed call is asked again on a rerun, and only it
    stub.responder = responder
    stub.reset_counts()
    with LLMClient(llm(stub)) as client:
        m = generate_qa(desc, acts, out, client, concurrency=4, progress=False)
    assert stub.count == 1 and m["outputs"]["videos"] == 3 and len(read_records(out)) == 18


def test_training_records_options():
    qas = {"b": [{"Q": "q1", "A": "a1"}, {"Q": "q2", "A": "a2"}], "a": [{"Q": "q0", "A": "a0"}]}
    recs = training_records(qas, ("video",), {"video": "feat/{id}.npy"})
    assert [r["id"] for r in recs] == ["a", "b", "b"]
    assert recs[0] == {"id": "a", "video": "feat/a.npy", "conversations": [
        {"from": "human", "value": "q0\n<video>"}, {"from": "gpt", "value": "a0"}]}
    assert recs[1]["conversations"][0]["value"] == "<video>\nq1"


def test_full_chain_through_the_cli(videos, tmp_path, stub):
    """captions -> describe -> qa with the commands of the driver script; the corrupt video is skipped downstream."""
    from llavidal.cli import main
    from llavidal.data.dataset import read_records

    ep = ["--endpoint", stub.base_url, "--model", "stub-vlm", "--no-progress"]
    caps, acts = tmp_path / "caps", videos / "actions.json"
    assert main(["curate", "captions", "--videos", str(videos), "--out", str(caps), *ep]) == 1
    assert main(["curate", "describe", "--captions", str(caps / "captions.json"), "--actions", str(acts),
                 "--out", str(tmp_path / "descriptions.json"), *ep]) == 0
    assert main(["curate", "qa", "--descriptions", str(tmp_path / "descriptions.json"), "--actions", str(acts),
                 "--out", str(tmp_path / "adlx_train.json"), *ep]) == 0
    dm = json.loads((tmp_path / "descriptions.manifest.json").read_text())
    qm = json.loads((tmp_path / "adlx_train.manifest.json").read_text())
    assert dm["skipped"]["by_kind"] == {"no_captions": 1} and qm["skipped"]["by_kind"] == {"no_description": 1}
    assert len(read_records(tmp_path / "adlx_train.json")) == 18
    assert stub.count == 9 + 3 + 6
    with pytest.raises(SystemExit):  # describe needs a model
        main(["curate", "describe", "--captions", "x", "--actions", "y", "--out", "z", "--bogus"])
    assert main(["curate", "describe", "--captions", str(caps / "captions.json"), "--actions", str(acts),
                 "--out", str(tmp_path / "d2.json"), "--endpoint", stub.base_url]) == 2  # no --model: a clear error


def test_run_bounded_limits_in_flight():
    import threading
    import time

    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def fn(x):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        if x == 5:
            raise RuntimeError("boom")
        return x * 2

    got = {}
    run_bounded(range(20), fn, lambda t, r, e: got.__setitem__(t, r if e is None else str(e)), concurrency=3)
    assert state["max"] <= 3 and got[5] == "boom" and got[7] == 14 and len(got) == 20


# ----------------------------------------------------------------------------------------------------------------
# the driver script
# ----------------------------------------------------------------------------------------------------------------

FAKE_CLI = """import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ.get("FAKE_RC_" + sys.argv[2].replace("-", "_"), "0")))
"""


def _run_driver(tmp_path: Path, **env: str):
    import os
    import subprocess

    fake = tmp_path / "fake_llavidal.py"
    fake.write_text(FAKE_CLI)
    log = tmp_path / "calls.jsonl"
    full = {**os.environ, "LLAVIDAL": f"{sys.executable} {fake}", "FAKE_LOG": str(log), "NTU_ROOT": "/data/ntu",
            "WORK": str(tmp_path / "work"), **env}
    script = Path(__file__).resolve().parents[1] / "adlx_curation" / "gen_adlx_videos_and_QA.sh"
    proc = subprocess.run(["bash", str(script)], env=full, capture_output=True, text=True, timeout=120)
    calls = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return proc, calls


def test_driver_script_order_flags_and_failure_policy(tmp_path):
    from llavidal.cli import build_parser

    proc, calls = _run_driver(tmp_path, LIMIT="5", FAKE_RC_crop="1")  # crop: some clips failed -> go on
    assert proc.returncode == 0, proc.stderr
    assert [c[1] for c in calls] == ["crop", "stitch-map", "stitch", "captions", "describe", "qa"]
    parser = build_parser()
    for argv in calls:  # every flag the script passes exists in the real command line
        parser.parse_args(argv)
    work = tmp_path / "work"
    assert calls[1][calls[1].index("--out") + 1] == str(work / "stitch_map.json")
    assert calls[3][calls[3].index("--videos") + 1] == str(work / "stitched") and "--limit" in calls[3]
    assert calls[5][calls[5].index("--out") + 1] == str(work / "adlx_train.json")
    assert "some items failed" in proc.stderr

    (work / "stitch_map.json").write_text("{}")  # a rerun keeps the map; captions aborted -> the script stops
    proc, calls = _run_driver(tmp_path, FAKE_RC_captions="3")
    assert proc.returncode == 3
    assert [c[1] for c in calls] == ["crop", "stitch", "captions"]
    proc, calls = _run_driver(tmp_path, VLM_LOCAL="/models/vlm")
    assert proc.returncode == 0 and "--local-vlm" in calls[2] and "--endpoint" not in calls[2]

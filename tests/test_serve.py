"""``llavidal serve`` as a real process on loopback, driven by the official ``openai`` client: models, replies equal
to in-process ``answer()``, streaming, multi-turn, concurrent clients sharing batches, every way of giving a video,
bad requests, the API key, a client that disconnects mid-stream (its slot is freed), 429 when the queue is full,
timeouts and the body size limit."""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key-0123"


class Server:
    """``python -m llavidal serve ...`` on a free loopback port (``python``: this one, or another environment's);
    stopped (its own pid) at teardown."""

    def __init__(self, args: list[str], env: dict | None = None, python: str = sys.executable):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen([python, "-m", "llavidal", "serve", "--port", "0", "--device", "cpu",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.log: list[str] = []
        deadline = time.time() + 180
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log.append(line)
            if line.startswith("LLAVIDAL serving"):
                self.url = line.split(" on ")[1].split()[0]
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise RuntimeError("the server did not start:\n" + "".join(self.log))

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def client(self, key: str | None = KEY, **kw):
        return openai.OpenAI(base_url=self.url, api_key=key or "none", max_retries=0, timeout=60, **kw)

    def stats(self, key: str = KEY) -> dict:
        r = httpx.get(self.url + "/stats", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_base):
    """A media folder: the tiny model's sample features, a raw video, and a tiny CLIP of the right width."""
    import shutil

    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.io import write_video

    root = tmp_path_factory.mktemp("media")
    for f in (tiny_base / "samples").iterdir():
        shutil.copy(f, root / f.name)
    rng = np.random.default_rng(0)
    write_video(root / "clip.mp4", rng.integers(0, 256, (6, 40, 56, 3), dtype=np.uint8), 8)
    clip = make_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=0)
    (root.parent / "secret.txt").write_text("not for clients")
    return {"root": root, "clip": clip}


@pytest.fixture(scope="module")
def server(tiny_base, media):
    s = Server(["--base", str(tiny_base), "--model-name", "llavidal-tiny", "--max-batch-size", "4", "--max-queue",
                "16", "--media-root", str(media["root"]), "--clip", str(media["clip"]), "--max-new-tokens", "64"],
               env={"LLAVIDAL_API_KEY": KEY})
    yield s
    s.stop()
    assert KEY not in "".join(s.log)  # the key never reaches the log


@pytest.fixture(scope="module")
def tight(tiny_base):
    """One slot, two queue places, short requests: for disconnects, 429 and timeouts."""
    s = Server(["--base", str(tiny_base), "--model-name", "t", "--max-batch-size", "1", "--max-queue", "2",
                "--max-new-tokens", "1900", "--request-timeout", "2", "--max-request-mb", "0.01"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def local(tiny_base):
    """The same model in this process (video replies are deterministic: its projector comes from the base)."""
    from llavidal import load_pretrained

    return load_pretrained(tiny_base, device="cpu")


def _video_part(url: str, kind: str = "video_features") -> dict:
    return {"type": kind, kind: {"url": url}}


def _ask(client, content, model="llavidal-tiny", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def test_models_and_a_reply_equal_to_answer(server, local, tiny_base):
    from llavidal.inference import answer

    client = server.client()
    assert [m.id for m in client.models.list().data] == ["llavidal-tiny"]
    r = _ask(client, [{"type": "text", "text": "What is the person doing?"}, _video_part("001_video_001.pkl")],
             max_tokens=20)
    model, tok = local
    want = answer(model, tok, "What is the person doing?", video=tiny_base / "samples" / "001_video_001.pkl",
                  max_new_tokens=20)
    assert r.choices[0].message.content == want and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 356


def test_streaming_equals_the_whole_reply_and_reports_usage(server):
    client = server.client()
    content = [{"type": "text", "text": "Describe the video."}, _video_part("001_video_001.pkl")]
    whole = _ask(client, content, max_tokens=30).choices[0].message.content
    chunks = list(_ask(client, content, max_tokens=30, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == whole and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_multi_turn_with_system_prompt_equals_answer_with_history(server, local, tiny_base):
    from llavidal.inference import answer

    client = server.client()
    messages = [{"role": "system", "content": "You describe videos."},
                {"role": "user", "content": [{"type": "text", "text": "What happens?"},
                                             _video_part("001_video_001.pkl")]},
                {"role": "assistant", "content": "A person drinks water."},
                {"role": "user", "content": "And then?"}]
    got = client.chat.completions.create(model="llavidal-tiny", messages=messages, max_tokens=15)
    model, tok = local
    want = answer(model, tok, "And then?", video=tiny_base / "samples" / "001_video_001.pkl",
                  history=[("What happens?", "A person drinks water.")], system="You describe videos.",
                  max_new_tokens=15)
    assert got.choices[0].message.content == want


def test_concurrent_clients_share_batches(server):
    client = server.client()
    questions = [f"Question number {i}: what is in the video?" for i in range(8)]
    content = lambda q: [{"type": "text", "text": q}, _video_part("001_video_001.pkl")]  # noqa: E731
    alone = [_ask(client, content(q), max_tokens=24).choices[0].message.content for q in questions[:2]]
    before = server.stats()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda q: _ask(client, content(q), max_tokens=24).choices[0].message.content,
                                questions))
    after = server.stats()
    assert replies[:2] == alone and all(replies)
    steps = after["decode_steps"] - before["decode_steps"]
    slot_steps = after["slot_steps"] - before["slot_steps"]
    assert slot_steps / steps > 1.5  # several requests decoded in the same steps


def test_every_way_of_giving_media(server, media):
    client = server.client()
    root = media["root"]
    feats = "001_video_001.pkl"
    by_path = _ask(client, [{"type": "text", "text": "Q"}, _video_part(feats)], max_tokens=8)
    by_url = _ask(client, [{"type": "text", "text": "Q"}, _video_part((root / feats).as_uri())], max_tokens=8)
    arr = __import__("llavidal.features", fromlist=["load_feature"]).load_feature(root / feats)
    buf = io.BytesIO()
    np.save(buf, arr)
    data = "data:application/x-npy;base64," + base64.b64encode(buf.getvalue()).decode()
    by_data = _ask(client, [{"type": "text", "text": "Q"}, _video_part(data)], max_tokens=8)
    as_video_url = _ask(client, [{"type": "text", "text": "Q"}, _video_part(feats, "video_url")], max_tokens=8)
    assert (by_path.choices[0].message.content == by_url.choices[0].message.content
            == by_data.choices[0].message.content == as_video_url.choices[0].message.content)
    # raw videos: a path and the same bytes inline give the same features, hence the same reply
    raw = _ask(client, [{"type": "text", "text": "Q"}, _video_part("clip.mp4", "video_url")], max_tokens=8)
    b64 = base64.b64encode((root / "clip.mp4").read_bytes()).decode()
    inline = _ask(client, [{"type": "text", "text": "Q"}, _video_part("data:video/mp4;base64," + b64, "video_url")],
                  max_tokens=8)
    assert raw.choices[0].message.content == inline.choices[0].message.content
    # every modality at once
    full = _ask(client, [{"type": "text", "text": "Q"}, _video_part("clip.mp4", "video_url"),
                         _video_part("001_001_video_001_object.pkl", "object_features"),
                         _video_part("001_001_video_001_pose.pickle", "pose_features")], max_tokens=8)
    assert full.usage.prompt_tokens > raw.usage.prompt_tokens + 256


@pytest.mark.parametrize("content,status,param,message", [
    ([{"type": "image_url", "image_url": {"url": "x.png"}}], 400, "messages[0].content[0]", "not supported"),
    ([{"type": "videoo", "videoo": {}}], 400, "messages[0].content[0].type", "unknown content part type"),
    ([_video_part("/etc/passwd", "video_url")], 403, "messages[0].content[0].video_url.url", "outside the media"),
    ([_video_part("../secret.txt")], 403, "messages[0].content[0].video_features.url", "outside the media"),
    ([_video_part("nope.pkl")], 400, "messages[0].content[0].video_features.url", "no such file"),
    ([_video_part("http://example.com/v.mp4", "video_url")], 400, "messages[0].content[0].video_url.url",
     "not fetched"),
    ([_video_part("data:application/x-npy;base64,@@@")], 400, "messages[0].content[0].video_features.url",
     "not valid base64"),
    ([_video_part("001_001_video_001_pose.pickle")], 400, "messages[0].content[0].video_features.url",
     "video features have shape [256, 216]"),
    ([_video_part("001_video_001.pkl"), _video_part("001_video_001.pkl")], 400, "messages[0].content[1]",
     "a second video input"),
])
def test_bad_media_are_4xx_naming_the_field(server, content, status, param, message):
    with pytest.raises(openai.APIStatusError) as err:
        _ask(server.client(), content, max_tokens=4)
    assert err.value.status_code == status
    body = err.value.body
    assert body["param"] == param and message in body["message"], body


def test_bad_requests_are_4xx_naming_the_field(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _ask(client, "hi", model="gpt-4")
    cases = [({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
             ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages[1].role"),
             ({"messages": [{"role": "user", "content": "a"}], "temperature": 5}, "temperature"),
             ({"messages": [{"role": "user", "content": "a"}], "max_tokens": 1000}, "max_tokens"),
             ({"messages": [{"role": "user", "content": "a"}], "stop": ["x"]}, "stop"),
             ({"messages": [{"role": "user", "content": "a"}], "n": 2}, "n")]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="llavidal-tiny", **body)
        assert err.value.body["param"] == param, (body, err.value.body)
    r = httpx.post(server.url + "/chat/completions", content=b"{not json", timeout=10,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_api_key(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key=None).models.list()
    with pytest.raises(openai.AuthenticationError):
        _ask(server.client(key="wrong"), "hi")
    assert httpx.get(server.url.removesuffix("/v1") + "/health", timeout=10).json() == {"status": "ok"}


def test_a_client_that_disconnects_mid_stream_frees_its_slot(tight):
    client = tight.client()
    stream = _ask(client, "Describe the video in detail.", model="t", max_tokens=1900, stream=True)
    got = [next(stream) for _ in range(4)]
    assert got[-1].choices[0].delta.content is not None
    stream.close()  # hang up
    deadline = time.time() + 10
    while time.time() < deadline:
        s = tight.stats()
        if s["busy_slots"] == 0 and s["inflight"] == 0:
            break
        time.sleep(0.05)
    assert s["busy_slots"] == 0 and s["inflight"] == 0 and s["disconnected"] == 1 and s["cancelled"] >= 1
    assert s["generated_tokens"] < 1900 and s["timed_out"] == 0
    # the only slot serves the next request at once
    r = _ask(client, "Hi", model="t", max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_a_full_queue_answers_429_with_retry_after(tight):
    client = tight.client()
    streams = []
    try:
        for _ in range(3):  # one in the slot, two in the queue
            streams.append(_ask(client, "Describe.", model="t", max_tokens=1900, stream=True))
            next(streams[-1])
        with pytest.raises(openai.RateLimitError) as err:
            _ask(client, "Hi", model="t", max_tokens=3)
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert tight.stats()["rejected"] >= 1
    finally:
        for st in streams:
            st.close()


def _idle(server):
    deadline = time.time() + 10
    while server.stats()["inflight"] and time.time() < deadline:
        time.sleep(0.05)


def test_timeouts_and_the_size_limit(tight):
    """Two requests wait behind a long one in the only slot: the time in the queue counts, so both run past the
    2 s limit (a 1900-token reply alone takes the tiny model about 3.5 s on this CPU)."""
    client = tight.client()
    _idle(tight)
    before = tight.stats()["timed_out"]
    hog = _ask(client, "Describe.", model="t", max_tokens=1900, stream=True)
    next(hog)
    try:
        with ThreadPoolExecutor(1) as pool:
            plain = pool.submit(_ask, client, "Describe.", model="t", max_tokens=1900)
            with pytest.raises(openai.APIError, match="--request-timeout"):
                for _ in _ask(client, "Describe.", model="t", max_tokens=1900, stream=True):
                    pass
            with pytest.raises(openai.APIStatusError) as err:
                plain.result()
        assert err.value.status_code == 504 and "--request-timeout" in err.value.body["message"]
    finally:
        hog.close()
    _idle(tight)
    assert tight.stats()["timed_out"] >= before + 2
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client, "x" * 20000, model="t", max_tokens=3)
    assert err.value.status_code == 413 and "--max-request-mb" in err.value.body["message"]

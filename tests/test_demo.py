"""The web demo end to end: a real server on 127.0.0.1, driven by a real headless browser (chromium through
Playwright) and by gradio_client; replies must equal greedy ``llavidal.inference.answer`` for the same inputs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from llavidal.inference import answer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
MAX_NEW = 16
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A tiny CLIP, two small videos, a text file, a damaged 'video' and feature files."""
    from llavidal.features import save_feature
    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.io import write_video

    d = tmp_path_factory.mktemp("demo_media")
    rng = np.random.default_rng(0)
    write_video(d / "kitchen.mp4", (rng.random((8, 48, 64, 3)) * 255).astype(np.uint8), fps=8)
    write_video(d / "long.mp4", (rng.random((24, 32, 32, 3)) * 255).astype(np.uint8), fps=8)  # 3 s
    (d / "notes.txt").write_text("this is not a video\n")
    (d / "broken.mp4").write_bytes(b"\x00\x01garbage" * 64)
    save_feature(rng.standard_normal((256, 216)).astype(np.float32), d / "p_pose.pickle")
    save_feature(rng.standard_normal((5, 7)).astype(np.float32), d / "bad_object.pkl")
    return {"clip": make_tiny_clip(d / "clip"), "dir": d}


@pytest.fixture(scope="module")
def backend(tiny_base, media):
    from llavidal.demo.app import DemoBackend, DemoConfig

    cfg = DemoConfig(base=str(tiny_base), clip=str(media["clip"]), device="cpu", dtype="fp32",
                     max_new_tokens=MAX_NEW, max_video_seconds=2.5, concurrency=2, port=_free_port())
    return DemoBackend.load(cfg)


@pytest.fixture(scope="module")
def server(backend):
    from llavidal.demo.app import launch

    demo = launch(backend, block=False)
    yield f"http://127.0.0.1:{backend.cfg.port}/"
    demo.close()


def _expected(backend, question, video=None, pose=None, history=()):
    return answer(backend.model, backend.tokenizer, question, video=video, pose=pose, history=history,
                  max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def kitchen_features(backend, media):
    return backend.featurizer(media["dir"] / "kitchen.mp4")


# ---------------------------------------------------------------- a real browser
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


OBSERVE = """() => { window.__seen = []; window.__status = [];
  const root = document.querySelector('#chatbot'), status = document.querySelector('#status [data-testid=markdown]');
  new MutationObserver(() => window.__status.push(status.innerText))
    .observe(status, {subtree: true, childList: true, characterData: true});
  new MutationObserver(() => {
    const m = root.querySelectorAll('[data-testid=bot] .message-content');
    if (!m.length) return;
    const t = m[m.length - 1].textContent;
    if (window.__seen[window.__seen.length - 1] !== t) window.__seen.push(t);
  }).observe(root, {subtree: true, childList: true, characterData: true}); }"""


def _status_has(page, text, timeout=30_000):
    page.wait_for_function("t => document.querySelector('#status [data-testid=markdown]').innerText.includes(t)",
                           arg=text, timeout=timeout)
    return page.inner_text("#status [data-testid=markdown]")


def _bot_texts(page):
    return page.eval_on_selector_all("#chatbot [data-testid=bot] .message-content", "es => es.map(e => e.textContent)")


def _wait_replied(page):
    """Wait for the status line to say 'Replied' after the observers were installed (not an older 'Replied')."""
    page.wait_for_function("() => window.__status.some(s => s.includes('Replied'))", timeout=30_000)
    return page.evaluate("window.__seen")


def _ask(page, question):
    page.evaluate(OBSERVE)
    page.fill("#question textarea", question)
    page.press("#question textarea", "Enter")
    return _wait_replied(page)


def test_browser_upload_ask_stream_regenerate_clear(server, browser, backend, media, kitchen_features):
    page = browser.new_page()
    outside = []
    local = ("http://127.0.0.1", "blob:", "data:")
    page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
    page.goto(server, wait_until="domcontentloaded")
    page.wait_for_selector("#video input[type=file]", state="attached", timeout=30_000)
    page.set_input_files("#video input[type=file]", str(media["dir"] / "kitchen.mp4"))
    status = _status_has(page, "Ask a question")  # features computed on upload, no extra button
    assert "kitchen.mp4" in status and "8 frames sampled" in status and "[356, 1024]" in status

    q1, q2 = "What is the person doing?", "What happens next?"
    a1 = _expected(backend, q1, video=kitchen_features)
    seen = _ask(page, q1)
    assert a1 and seen[-1] == a1  # the final bot message is greedy answer() for the same video
    growing = [s for s in seen if s.strip()]
    assert len(growing) >= 3, seen  # it streamed in: several growing versions of the reply were rendered
    assert all(a.strip() and b.startswith(a.rstrip()) for a, b in zip(growing, growing[1:], strict=False))

    a2 = _expected(backend, q2, video=kitchen_features, history=[(q1, a1)])
    assert _ask(page, q2)[-1] == a2 != _expected(backend, q2, video=kitchen_features)  # turn 2 sees turn 1
    assert _bot_texts(page) == [a1, a2]
    assert page.input_value("#question textarea") == ""

    page.evaluate(OBSERVE)
    page.click("#regenerate")  # greedy: the same reply again, still two turns
    seen = _wait_replied(page)
    assert seen[-1] == a2 and any(len(t) < len(a2) for t in seen)  # taken back and generated anew
    assert _bot_texts(page) == [a1, a2]

    page.click("#clear")
    _status_has(page, "Conversation cleared")
    assert _bot_texts(page) == []
    assert _ask(page, q1)[-1] == a1  # a new conversation about the same video
    assert outside == []  # fully offline: no request left 127.0.0.1
    page.close()


def test_browser_friendly_errors(server, browser, media):
    page = browser.new_page()
    page.goto(server, wait_until="domcontentloaded")
    page.wait_for_selector("#video input[type=file]", state="attached", timeout=30_000)
    toasts = "[data-testid=toast-body]"

    page.fill("#question textarea", "What is in the video?")  # nothing uploaded yet
    page.press("#question textarea", "Enter")
    assert "Upload a video" in _status_has(page, "⚠️")
    assert page.input_value("#question textarea") == "What is in the video?"  # the question is kept

    page.set_input_files("#video input[type=file]", str(media["dir"] / "notes.txt"))  # refused by file type
    page.wait_for_function("s => [...document.querySelectorAll(s)].some(e => e.innerText.includes('notes.txt'))",
                           arg=toasts, timeout=10_000)

    page.set_input_files("#video input[type=file]", str(media["dir"] / "broken.mp4"))  # a video name, not a video
    status = _status_has(page, "⚠️ broken.mp4")
    assert "⚠️" in status and "not a video file" in status and "/tmp" not in status
    page.wait_for_function("s => [...document.querySelectorAll(s)].some(e => e.innerText.includes('broken.mp4'))",
                           arg=toasts, timeout=10_000)

    page.set_input_files("#video input[type=file]", str(media["dir"] / "long.mp4"))  # over --max-video-seconds
    status = _status_has(page, "⚠️ long.mp4")
    assert "lasts 3 s" in status and "2.5 s" in status and "--max-video-seconds" in status
    body = page.inner_text("body")
    assert "Traceback" not in body and "File \"" not in body
    page.close()


# ---------------------------------------------------------------- the API (gradio_client)
def test_gradio_client_sessions_stream_and_extra_modalities(server, backend, media, kitchen_features):
    from gradio_client import Client, handle_file

    from llavidal.features import load_feature

    alice, bob = Client(server, verbose=False), Client(server, verbose=False)
    status, chat, _ = alice.predict(handle_file(str(media["dir"] / "kitchen.mp4")), api_name="/upload_video")
    assert status.startswith("✅") and chat == []

    q = "Describe the video."
    job = alice.submit(q, 0.0, MAX_NEW, api_name="/ask")
    textbox, chat, status = job.result()
    a = _expected(backend, q, video=kitchen_features)
    assert textbox == "" and chat[-1]["content"][0]["text"] == a and status.startswith("Replied")
    partial = [o[1][-1]["content"][0]["text"] for o in job.outputs() if o[1]]
    assert len(set(partial)) >= 3 and partial[-1] == a  # streamed: growing replies, then the full one

    # Bob's session is his own: no video there, Alice's conversation untouched
    _, _, status = bob.predict("Anything?", 0.0, MAX_NEW, api_name="/ask")
    assert "Upload a video" in status

    # pose features as an extra modality; a wrong-shaped object file is refused with its shape
    pose = load_feature(media["dir"] / "p_pose.pickle")
    status, chat, _ = alice.predict(handle_file(str(media["dir"] / "p_pose.pickle")), api_name="/upload_pose")
    assert "pose features [256, 216]" in status and chat == []  # a new sample: a new conversation
    status, _, _ = alice.predict(handle_file(str(media["dir"] / "bad_object.pkl")), api_name="/upload_object")
    assert "⚠️" in status and "bad_object.pkl" in status and "[5, 7]" in status and "[n, 8, 512]" in status

    # two users at once (concurrency 2): each gets the reply for their own inputs
    bob.predict(handle_file(str(media["dir"] / "kitchen.mp4")), api_name="/upload_video")
    jobs = {"alice": alice.submit(q, 0.0, MAX_NEW, api_name="/ask"),
            "bob": bob.submit("What is the person holding?", 0.0, MAX_NEW, api_name="/ask")}
    got = {k: j.result()[1][-1]["content"][0]["text"] for k, j in jobs.items()}
    assert got["alice"] == _expected(backend, q, video=kitchen_features, pose=pose) != a  # the pose was used
    assert got["bob"] == _expected(backend, "What is the person holding?", video=kitchen_features)

    chat, status = alice.predict(api_name="/clear")
    assert chat == [] and "cleared" in status


def test_backend_limits_and_cache(backend, media):
    from llavidal.demo.app import DemoError
    from llavidal.video.io import VideoReadError

    with pytest.raises(DemoError, match=r"long.mp4 lasts 3 s; this demo takes videos up to 2.5 s"):
        backend.video_features(media["dir"] / "long.mp4")
    with pytest.raises(VideoReadError, match="no video stream|not a video file"):
        backend.video_features(media["dir"] / "notes.txt")
    feats, report = backend.video_features(media["dir"] / "kitchen.mp4")
    again, _ = backend.video_features(media["dir"] / "kitchen.mp4")  # from the content-hash cache
    assert again is feats and feats.shape == (356, 1024) and feats.dtype == np.float16
    assert "8 frames sampled" in report
    small = type(backend)(backend.model, backend.tokenizer, backend.featurizer,
                          type(backend.cfg)(**{**backend.cfg.__dict__, "max_upload_mb": 1e-4}))
    with pytest.raises(DemoError, match=r"--max-upload-mb"):
        small.video_features(media["dir"] / "kitchen.mp4")


# ---------------------------------------------------------------- the entry points
def test_video_demo_script_keeps_the_original_flags():
    out = subprocess.run([sys.executable, str(REPO / "llavidal/demo/video_demo.py"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=REPO.parent)
    assert out.returncode == 0, out.stderr
    for flag in ("--model-name", "--projection_path", "--vision_tower_name", "--conv-mode", "--concurrency-count",
                 "--controller-url", "--model-list-mode", "--share", "--moderate", "--embed", "--host", "--port"):
        assert flag in out.stdout

    from llavidal.demo import video_demo

    args = video_demo.build_parser().parse_args([
        "--model-name", "LLaVA-7B-Lightening-v1-1", "--projection_path", "llavidal_weights.bin",
        "--vision_tower_name", "clipdir", "--conv-mode", "llavidal_v1", "--concurrency-count", "4",
        "--controller-url", "http://x:1", "--model-list-mode", "reload", "--embed", "--port", "7999"])
    cfg = video_demo.to_config(args)
    assert (cfg.base, cfg.projector, cfg.clip, cfg.template) == ("LLaVA-7B-Lightening-v1-1", "llavidal_weights.bin",
                                                                 "clipdir", "llavidal_v1")
    assert (cfg.concurrency, cfg.title, cfg.port, cfg.host) == (4, False, 7999, "127.0.0.1")
    with pytest.raises(SystemExit, match="--moderate is not supported"):
        video_demo.to_config(video_demo.build_parser().parse_args(["--model-name", "m", "--moderate"]))
    with pytest.raises(SystemExit, match="--conv-mode"):
        video_demo.to_config(video_demo.build_parser().parse_args(["--model-name", "m", "--conv-mode", "nope"]))


def test_llavidal_demo_command_flags():
    from llavidal.cli import build_parser
    from llavidal.demo.cli import demo_config

    args = build_parser().parse_args(["demo", "--base", "b", "--projector", "p.bin", "--clip", "c", "--port", "8000",
                                      "--max-frames", "50", "--max-video-seconds", "0", "--max-new-tokens", "64",
                                      "--temperature", "0.2", "--device", "cpu"])
    cfg = demo_config(args)
    assert (cfg.base, cfg.projector, cfg.clip, cfg.port, cfg.host, cfg.share) == ("b", "p.bin", "c", 8000,
                                                                                  "127.0.0.1", False)
    assert (cfg.max_frames, cfg.max_video_seconds, cfg.max_new_tokens, cfg.temperature) == (50, 0.0, 64, 0.2)


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def test_load_concurrent_sessions_no_cross_talk_queue_and_flat_memory(server, backend, media, kitchen_features):
    """6 sessions on loopback at once against a queue of concurrency 2, 3 rounds (bounded in count and time): every
    session gets the reply to its own question and inputs, none is dropped, and memory does not grow per round."""
    import time

    from gradio_client import Client, handle_file

    from llavidal.features import load_feature

    questions = ["Describe the video.", "What is the person holding?", "Where is this?", "What happens first?",
                 "Is anyone sitting?", "What happens next?"]
    clients = [Client(server, verbose=False) for _ in questions]
    expected = {}
    pose = load_feature(media["dir"] / "p_pose.pickle")
    for i, c in enumerate(clients):  # its own question; every other session also gives pose features
        c.predict(handle_file(str(media["dir"] / "kitchen.mp4")), api_name="/upload_video")
        if i % 2:
            c.predict(handle_file(str(media["dir"] / "p_pose.pickle")), api_name="/upload_pose")
        expected[i] = _expected(backend, questions[i], video=kitchen_features, pose=pose if i % 2 else None)
    rss, seconds = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        jobs = [(i, c.submit(questions[i], 0.0, MAX_NEW, api_name="/ask")) for i, c in enumerate(clients)]
        for i, job in jobs:
            _, chat, status = job.result(timeout=120)
            assert status.startswith("Replied"), status
            assert chat[-1]["content"][0]["text"] == expected[i], i  # its own reply, not a neighbour's
            assert [m["content"][0]["text"] for m in chat if m["role"] == "user"] == [questions[i]]  # its own history
        seconds.append(time.perf_counter() - t0)
        for c in clients:
            c.predict(api_name="/clear")
        rss.append(_rss_mib())
    assert len(set(expected.values())) >= 2  # sessions with and without pose get different replies
    assert rss[-1] - rss[0] < 64, rss  # no growth per round beyond allocator noise
    print(f"\ndemo load: 6 sessions x 3 rounds, concurrency 2: {[round(s, 2) for s in seconds]} s per round, "
          f"RSS {[round(r) for r in rss]} MiB")

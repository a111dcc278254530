"""`llavidal eval report`: one self-contained HTML page from real eval-run and training outputs, checked as text and
in a real headless browser (Debian's chromium through Playwright): charts and video frames must render (pixels of
their colours on screen), the wrong-items filter must hide exactly the right rows, and nothing is fetched."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_benchmarks import judge_stub, write_mvbench, write_videochatgpt, write_zero_shot

CHROMIUM = "/usr/bin/chromium"
FRAME_RGB = {0: (220, 30, 30), 1: (30, 200, 40), 2: (30, 60, 220), 3: (230, 200, 20)}  # one solid colour per clip


def _run(tiny_base, task, qa_file, video_dir, out, *extra):
    from llavidal.cli import main

    assert main(["eval", "run", "--task", task, "--qa-file", str(qa_file), "--video-dir", str(video_dir),
                 "--base", str(tiny_base), "--output", str(out), "--max-new-tokens", "6", "--no-embedding",
                 *extra]) == 0


@pytest.fixture(scope="module")
def results(tiny_base, tmp_path_factory):
    """Two "models" on MVBench (generate / loglik), ActivityNet-QA and Video-ChatGPT generic with a loopback judge,
    and a short training run; the MVBench videos are raw .mp4 files beside their features."""
    from llavidal.video.io import write_video

    root = tmp_path_factory.mktemp("report")
    mvb, zs, vcg = write_mvbench(root), write_zero_shot(root), write_videochatgpt(root)
    for i, rgb in FRAME_RGB.items():
        frames = np.zeros((6, 48, 64, 3), np.uint8) + np.array(rgb, np.uint8)
        write_video(mvb["video_dir"] / f"clip_{i}.mp4", frames, fps=6)
    a, b = root / "results" / "modelA", root / "results" / "modelB"
    _run(tiny_base, "mvbench", mvb["file"], mvb["video_dir"], a / "mvbench")
    _run(tiny_base, "mvbench", mvb["file"], mvb["video_dir"], b / "mvbench", "--mcq-mode", "loglik")
    with judge_stub() as stub:
        judge = ["--judge-model", "stub-judge", "--judge-base-url", stub.base_url, "--judge-api-key", "x"]
        _run(tiny_base, "activitynet-qa", zs["anet_q"], zs["anet_videos"], a / "anet", *judge)
        _run(tiny_base, "vcgbench-generic", vcg["generic"], vcg["video_dir"], a / "vcg", *judge)

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_train import synthetic_data, train_flags

    from llavidal.train.train import train

    data = synthetic_data(root / "data")
    train(train_flags(tiny_base, data, root / "results" / "train", ("video",), max_steps=4))
    return root / "results"


@pytest.fixture(scope="module")
def report(results, tmp_path_factory):
    from llavidal.cli import main

    out = tmp_path_factory.mktemp("page") / "report.html"
    assert main(["eval", "report", str(results / "modelA"), str(results / "modelB"), str(results / "train"),
                 "-o", str(out)]) == 0
    return out


def test_report_is_self_contained_and_complete(results, report):
    from llavidal.eval.report import find_runs, item_outcome

    page = report.read_text()
    for outside in ('src="http', "src='http", 'href="http', "href='http", "<link", "@import", "url(http"):
        assert outside not in page
    runs = find_runs([results / "modelA", results / "modelB", results / "train"])
    assert sorted((r.column, r.task) for r in runs.evals) == [
        ("modelA", "activitynet-qa"), ("modelA", "mvbench"), ("modelA", "vcgbench-generic"), ("modelB", "mvbench")]
    assert [t.column for t in runs.trains] == ["train"] and [h["step"] for h in runs.trains[0].history
                                                               if "loss" in h] == [1, 2, 3, 4]
    # every item of every task is listed once, with its question, and the judge's replies (its reasons) are shown
    assert page.count("<tr class='item") == 4 + 5 + 4
    assert "What did the person do first in clip 0?" in page and "{&#x27;correct&#x27;: &#x27;yes&#x27;" in page
    assert "detail: score 3" in page
    # the Video-ChatGPT table: modelA ran only the generic file, so three criteria and no mean of five
    vcg = page.split("Video-ChatGPT benchmark (mean judge score, 0-5)")[1].split("</table>")[0]
    assert "<th>modelA</th><td class=\"num\">4.00</td><td class=\"num\">3.00</td><td class=\"num\">5.00</td>" \
        "<td class=\"num\">n/a</td><td class=\"num\">n/a</td><td class=\"num\">n/a</td>" in vcg
    assert "modelB" not in vcg
    # the rows marked wrong are those some run got wrong (missing videos included)
    wrong = set()
    for r in runs.evals:
        wrong |= {f"{r.task}/{row['id']}" for row in r.rows if item_outcome(r.kind, row) in
                  ("wrong", "unparsed", "missing")}
    marked = page.count("<tr class='item wrong'")
    assert marked == len(wrong) and marked > 0
    assert page.count("<img class='frame'") == 4 * 4  # 4 MVBench videos x 4 frames; the others have no raw video


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _coloured(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(px - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_report_renders_in_a_real_browser(report, browser):
    from llavidal.eval.report import PALETTE

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    fetched = []
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else fetched.append(r.url))
    page.goto(report.as_uri(), wait_until="load")
    assert fetched == []

    # charts: the overview's bars and the training curve are drawn in the palette's colours
    first = tuple(int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5))
    second = tuple(int(PALETTE[1][i:i + 2], 16) for i in (1, 3, 5))
    overview = _pixels(page.locator("[data-chart=overview] svg").screenshot())
    assert _coloured(overview, first) > 200 and _coloured(overview, second) > 50  # modelA's and modelB's bars
    curve = _pixels(page.locator("[data-chart=training] svg").first.screenshot())
    assert _coloured(curve, first) > 100
    task_chart = _pixels(page.locator("[data-chart=mvbench] svg").screenshot())
    assert _coloured(task_chart, first) + _coloured(task_chart, second) > 100

    # frames: decoded by the browser and showing the clip's colour
    sizes = page.eval_on_selector_all("img.frame", "es => es.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
    assert len(sizes) == 16 and all(ok and w > 0 and h > 0 for ok, w, h in sizes)
    row = page.locator("tr.item[data-id='clip_0'] img.frame").first
    row.scroll_into_view_if_needed()
    px = _pixels(row.screenshot())
    assert _coloured(px, FRAME_RGB[0], tol=45) > 0.8 * px.shape[0] * px.shape[1]

    # the filter hides the items no run got wrong
    visible = "() => [...document.querySelectorAll('tr.item')].filter(r => r.offsetParent !== null).length"
    total = page.evaluate(visible)
    wrong = page.locator("tr.item.wrong").count()
    page.check("#only-wrong")
    assert page.evaluate(visible) == wrong < total
    assert page.locator("[data-shown='items-mvbench']").inner_text().endswith("items shown")
    page.uncheck("#only-wrong")
    assert page.evaluate(visible) == total
    page.close()


def test_report_errors_are_clear(tmp_path, capsys):
    from llavidal.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["eval", "report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no eval results" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
    assert main(["eval", "report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no such results folder" in capsys.readouterr().err


def test_report_reads_tensorboard_logs_without_trainer_state(results, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from torch.utils.tensorboard import SummaryWriter

    from llavidal.eval.report import find_runs

    with SummaryWriter(str(tmp_path / "tb" / "runs" / "x")) as w:
        for step, loss in enumerate([2.0, 1.5, 1.2], start=1):
            w.add_scalar("train/loss", loss, step)
    runs = find_runs([tmp_path / "tb"])
    assert runs.trains[0].source == "tensorboard"
    assert [(h["step"], round(h["loss"], 3)) for h in runs.trains[0].history] == [(1, 2.0), (2, 1.5), (3, 1.2)]
    json.dumps(runs.trains[0].history)


def test_frames_are_never_read_outside_the_video_folder(tmp_path):
    from llavidal.eval.report import EvalRun, video_frames
    from llavidal.video.io import write_video

    write_video(tmp_path / "outside.mp4", np.zeros((4, 32, 32, 3), np.uint8) + 200, fps=4)
    write_video(tmp_path / "videos" / "inside.mp4", np.zeros((4, 32, 32, 3), np.uint8) + 50, fps=4)
    run = EvalRun("r", tmp_path, {"task": "mvbench", "config": {"video_dir": str(tmp_path / "videos")}}, [])
    urls, why = video_frames(run, {"video": "../outside.mp4"}, 2)
    assert urls == [] and "leaves the video folder" in why
    urls, why = video_frames(run, {"video": "inside.avi", "video_alts": []}, 2)  # found under another suffix
    assert len(urls) == 2 and why is None and all(u.startswith("data:image/jpeg;base64,") for u in urls)

"""``llavidal eval report RESULTS_DIR... -o report.html``: one self-contained HTML page of evaluation results.

Each argument is an ``eval run`` output folder (``summary.json`` + ``scored.jsonl``), a training output folder
(``trainer_state.json``, or TensorBoard event files), or a folder holding such folders at any depth up to three
(``run_evals.sh``'s ``OUTPUT_DIR``). Several folders are compared side by side: one column per run folder.

The page has no outside reference (CSS, JavaScript and SVG charts inline; video frames as JPEG data URLs), so it can
be mailed or archived as one file:

* a summary table (score per task and run) and a bar chart of it; the Video-ChatGPT five-criterion row when a run
  has its three tasks;
* per task: a chart of the outcome (multiple choice: correct / wrong / unparsed / missing; descriptions: the score
  of each judge criterion; open-ended QA: accuracy and mean score) and the run records (model, projector, judge,
  protocol, prompt set, seed, commit);
* per item: the question, the options, the truth, and per run the reply, the parsed letter, the judge's scores and
  its replies (its reasons) or failures, with a few frames of the video when the raw video is in the run's
  ``--video-dir``; a switch shows only the items some run got wrong (multiple choice: not the right letter; open QA:
  judged incorrect; descriptions: mean judge score below 2.5 of 5; a missing video counts as wrong);
* training runs: loss (and learning-rate) curves from ``log_history``.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

PALETTE = ("#3b6fd8", "#e0702b", "#2a9d5b", "#c23b5a", "#8a5ad6", "#b58b1e", "#1c9fb5", "#6b6b6b")
OUTCOME_COLOURS = {"correct": "#2a9d5b", "wrong": "#c23b5a", "unparsed": "#e0a22b", "missing": "#9a9a9a"}
LOW_DESCRIPTION_SCORE = 2.5  # a description item whose mean judge score (0-5) is below this counts as wrong


# ================================================================================================== reading runs
@dataclass
class EvalRun:
    """One ``eval run`` output folder."""

    column: str  # the run's column in comparisons (its folder, as given)
    path: Path
    summary: dict
    rows: list[dict]

    @property
    def task(self) -> str:
        return self.summary["task"]

    @property
    def kind(self) -> str:
        from .tasks import TASKS

        info = TASKS.get(self.task)
        return info.kind if info else ("mcq" if "mcq" in self.summary else
                                       "openqa" if "openqa" in self.summary else "description")

    @property
    def video_dir(self) -> str | None:
        return (self.summary.get("config") or {}).get("video_dir")


@dataclass
class TrainRun:
    """One training output folder: its logged history (``loss``, ``learning_rate``, ... by ``step``)."""

    column: str
    path: Path
    history: list[dict]
    source: str


@dataclass
class Runs:
    evals: list[EvalRun] = field(default_factory=list)
    trains: list[TrainRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # folders that could not be read, with the reason

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys([r.column for r in self.evals] + [r.column for r in self.trains]))


def _rows_with_items(path: Path, summary: dict) -> list[dict]:
    """``scored.jsonl`` (else the predictions), with question/options/answer filled from the benchmark file when
    the rows predate them and the file is still there."""
    rows = read_jsonl(path / "scored.jsonl") if (path / "scored.jsonl").is_file() else [
        r for f in sorted(path.glob("predictions*.jsonl")) for r in read_jsonl(f)]
    if rows and "question" not in rows[0] and summary.get("qa_file") and Path(summary["qa_file"]).is_file():
        from .tasks import load_task

        cfg = summary.get("config") or {}
        try:
            items, _ = load_task(summary["task"], summary["qa_file"], answer_file=cfg.get("answer_file"),
                                 video_map=cfg.get("video_map"))
        except (ValueError, KeyError, OSError) as e:
            logger.warning("%s: cannot re-read %s for the questions: %s", path, summary["qa_file"], e)
        else:
            by_id = {it.id: it for it in items}
            for r in rows:
                it = by_id.get(r["id"])
                if it is not None:
                    r.update(question=it.question, options=it.options, answer=it.answer,
                             video_alts=list(it.video_alts))
    return sorted(rows, key=lambda r: r.get("index", 0))


def _train_history(path: Path) -> tuple[list[dict], str] | None:
    """The logged history of a training folder: ``trainer_state.json`` (the folder's, else its newest
    checkpoint's), else TensorBoard scalars when the ``tensorboard`` package is installed."""
    states = [path / "trainer_state.json"] + sorted(path.glob("checkpoint-*/trainer_state.json"),
                                                     key=lambda p: int(p.parent.name.split("-")[-1])
                                                     if p.parent.name.split("-")[-1].isdigit() else -1)[::-1]
    for state in states:
        if state.is_file():
            history = json.loads(state.read_text()).get("log_history") or []
            return [h for h in history if isinstance(h, dict)], str(state.relative_to(path))
    events = sorted(path.rglob("events.out.tfevents.*"))
    if events:
        try:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        except ImportError:
            logger.warning("%s: TensorBoard event files, but the tensorboard package is not installed", path)
            return None
        by_step: dict[int, dict] = {}
        for folder in sorted({e.parent for e in events}):
            acc = EventAccumulator(str(folder))
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                name = tag.split("/", 1)[-1]
                for ev in acc.Scalars(tag):
                    by_step.setdefault(ev.step, {"step": ev.step})[name] = ev.value
        return [by_step[s] for s in sorted(by_step)], "tensorboard"
    return None


def _column(root: Path, run_dir: Path, given: str) -> str:
    rel = run_dir.relative_to(root).parts
    return given if len(rel) <= 1 else f"{given}/{'/'.join(rel[:-1])}"


def find_runs(dirs: Sequence[str | Path], max_depth: int = 3) -> Runs:
    """The eval and training runs under ``dirs`` (each folder as given, then its subfolders up to ``max_depth``)."""
    runs = Runs()
    names = [Path(d).name or str(d) for d in dirs]
    for d, name in zip(dirs, names):
        root = Path(d)
        given = name if names.count(name) == 1 else str(d)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such results folder")
        before = len(runs.evals) + len(runs.trains)
        stack = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            if (folder / "summary.json").is_file():
                try:
                    summary = json.loads((folder / "summary.json").read_text())
                    runs.evals.append(EvalRun(_column(root, folder, given), folder, summary,
                                              _rows_with_items(folder, summary)))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    runs.skipped.append(f"{folder}: unreadable summary.json ({e})")
                continue
            history = _train_history(folder) if ((folder / "trainer_state.json").is_file() or
                                                 any(folder.glob("checkpoint-*/trainer_state.json")) or
                                                 any(folder.glob("runs/**/events.out.tfevents.*"))) else None
            if history is not None:
                runs.trains.append(TrainRun(_column(root, folder, given), folder, *history))
                continue
            if depth < max_depth:
                stack.extend((sub, depth + 1) for sub in sorted(folder.iterdir(), reverse=True)
                             if sub.is_dir() and not sub.name.startswith(".") and not sub.name.startswith("checkpoint-"))
        if len(runs.evals) + len(runs.trains) == before:
            runs.skipped.append(f"{root}: no eval results (summary.json) or training logs (trainer_state.json) found")
    runs.evals.sort(key=lambda r: (r.task, r.column))
    return runs


# ================================================================================================== item outcomes
def description_mean(row: dict) -> float | None:
    scores = [v.get("score") for v in (row.get("judge") or {}).values() if isinstance(v, dict)]
    scores = [s for s in scores if isinstance(s, (int, float))]
    return sum(scores) / len(scores) if scores else None


def item_outcome(kind: str, row: dict) -> str:
    """``correct``, ``wrong``, ``unparsed``, ``missing`` or ``unscored`` (a description without judge scores)."""
    if row.get("status") == "missing_video":
        return "missing"
    if kind == "mcq":
        if row.get("letter") is None:
            return "unparsed"
        return "correct" if row.get("letter") == row.get("answer") else "wrong"
    if kind == "openqa":
        return {True: "correct", False: "wrong"}.get(row.get("match"), "unscored")
    mean = description_mean(row)
    if mean is None:
        return "unscored"
    return "correct" if mean >= LOW_DESCRIPTION_SCORE else "wrong"


# ================================================================================================== SVG charts
def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def bar_chart(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, ymax: float = 100.0,
              title: str = "", ylabel: str = "", colours: Sequence[str] = PALETTE, stacked: bool = False,
              width: int = 640, height: int = 260) -> str:
    """Grouped (or stacked) vertical bars: one group per category, one bar per series. Missing values draw nothing
    and are written as n/a in the tooltip."""
    left, right, top, bottom = 48, 12, 28, 80
    w, h = width - left - right, height - top - bottom
    n_cat, n_ser = max(len(categories), 1), max(len(series), 1)
    group = w / n_cat
    bar = group * 0.8 / (1 if stacked else n_ser)
    parts = [(f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">'),
             f'<text x="{left}" y="16" class="title">{_esc(title)}</text>']
    for k in range(5):  # grid
        y = top + h - h * k / 4
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{ymax * k / 4:g}</text>')
    if ylabel:
        parts.append(f'<text x="12" y="{top + h / 2:.1f}" class="tick" transform="rotate(-90 12 {top + h / 2:.1f})" '
                     f'text-anchor="middle">{_esc(ylabel)}</text>')
    for i, cat in enumerate(categories):
        x0 = left + i * group + group * 0.1
        base = 0.0
        for j, (name, values) in enumerate(series):
            v = values[i] if i < len(values) else None
            colour = colours[j % len(colours)]
            if v is None:
                continue
            v = max(0.0, min(float(v), ymax))
            bh = h * v / ymax
            x = x0 if stacked else x0 + j * bar
            y = top + h - bh - (h * base / ymax if stacked else 0)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.92:.1f}" height="{bh:.1f}" '
                         f'fill="{colour}"><title>{_esc(cat)} · {_esc(name)}: {_fmt(values[i], 2)}</title></rect>')
            if stacked:
                base += v
        parts.append(f'<text x="{left + i * group + group / 2:.1f}" y="{top + h + 14}" class="tick" '
                     f'text-anchor="end" transform="rotate(-30 {left + i * group + group / 2:.1f} {top + h + 14})">'
                     f'{_esc(cat[:28])}</text>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" class="axis"/>')
    names = [n for n, _ in series]
    parts.append(_legend(names, colours, max(left + 7.0 * len(title) + 20, width - right - _legend_width(names)), 16))
    parts.append("</svg>")
    return "".join(parts)


def _legend_width(names: Sequence[str]) -> float:
    return sum(24 + 6.5 * min(len(n), 40) for n in names)


def _legend(names: Sequence[str], colours: Sequence[str], x: float, y: float) -> str:
    out, cursor = [], x
    for j, name in enumerate(names):
        out.append(f'<rect x="{cursor:.0f}" y="{y - 9}" width="10" height="10" fill="{colours[j % len(colours)]}"/>'
                   f'<text x="{cursor + 14:.0f}" y="{y}" class="tick">{_esc(name[:40])}</text>')
        cursor += 24 + 6.5 * min(len(name), 40)
    return "".join(out)


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, title: str = "", xlabel: str = "",
               ylabel: str = "", width: int = 640, height: int = 260) -> str:
    """Lines of (x, y) points, one per series, on shared linear axes."""
    left, right, top, bottom = 66, 12, 28, 44
    w, h = width - left - right, height - top - bottom
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if y is not None and math.isfinite(y)]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + w * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + h - h * (y - y0) / (y1 - y0)

    parts = [(f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">'),
             f'<text x="{left}" y="16" class="title">{_esc(title)}</text>']
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" class="tick" text-anchor="end">{yv:.3g}</text>')
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        parts.append(f'<text x="{px(xv):.1f}" y="{top + h + 16}" class="tick" text-anchor="middle">{xv:.4g}</text>')
    parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 8}" class="tick" text-anchor="middle">{_esc(xlabel)}'
                 f'</text><text x="12" y="{top + h / 2:.1f}" class="tick" transform="rotate(-90 12 {top + h / 2:.1f})"'
                 f' text-anchor="middle">{_esc(ylabel)}</text>')
    for j, (name, sx, sy) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(sx, sy) if y is not None and math.isfinite(y))
        colour = PALETTE[j % len(PALETTE)]
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2.5">'
                     f'<title>{_esc(name)}</title></polyline>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" class="axis"/>')
    parts.append(_legend([n for n, _, _ in series], PALETTE, left + 8, top + 12))
    parts.append("</svg>")
    return "".join(parts)


# ================================================================================================== frames
def video_frames(run: EvalRun, row: dict, n: int, width: int = 128) -> tuple[list[str], str | None]:
    """Up to ``n`` evenly spaced frames of the item's raw video as JPEG data URLs (empty when the raw video is not
    in the run's video folder), and why not when it cannot be read."""
    if n <= 0 or not run.video_dir or not row.get("video"):
        return [], None
    from PIL import Image

    from ..io_utils import stays_inside
    from ..video.io import VIDEO_SUFFIXES, VideoReadError, read_frames
    from .tasks import find_video

    names = [str(v) for v in [row["video"], *(row.get("video_alts") or [])]]
    if not all(stays_inside(v) for v in names):  # a results file never makes the report read outside the folder
        return [], f"video path {row['video']!r} leaves the video folder"
    path = find_video(run.video_dir, names, VIDEO_SUFFIXES)
    if path is None:
        return [], None
    try:
        frames, _ = read_frames(path, max_frames=n)
    except (VideoReadError, OSError) as e:
        return [], str(e)
    out = []
    for f in frames:
        img = Image.fromarray(f)
        img.thumbnail((width, width))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=75)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return out, None


# ================================================================================================== HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px} .muted{color:#666} .small{font-size:12px}
table{border-collapse:collapse;margin:6px 0} th,td{border:1px solid #ddd;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#f4f5f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
svg.chart{background:#fff;border:1px solid #e3e3e3;margin:6px 12px 6px 0}
svg .grid{stroke:#ececec} svg .axis{stroke:#888} svg .tick{font-size:11px;fill:#555} svg .title{font-size:13px;font-weight:600}
.charts{display:flex;flex-wrap:wrap}
table.items td{max-width:360px} .reply{white-space:pre-wrap} .opt{display:block} .truth{font-weight:600}
.badge{display:inline-block;border-radius:3px;padding:0 5px;color:#fff;font-size:12px}
.b-correct{background:#2a9d5b}.b-wrong{background:#c23b5a}.b-unparsed{background:#e0a22b}.b-missing{background:#9a9a9a}
.b-unscored{background:#bbb}
img.frame{height:72px;margin:1px;border:1px solid #ccc}
details summary{cursor:pointer;color:#345} .reason{white-space:pre-wrap;color:#444;font-size:12px}
body.only-wrong tr.item:not(.wrong){display:none}
.controls{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #eee;z-index:1}
"""

JS = """
document.getElementById('only-wrong').addEventListener('change', function (e) {
  document.body.classList.toggle('only-wrong', e.target.checked);
  document.querySelectorAll('[data-shown]').forEach(function (el) {
    var table = document.getElementById(el.getAttribute('data-shown'));
    var rows = table.querySelectorAll('tr.item');
    var shown = 0;
    rows.forEach(function (r) { if (r.offsetParent !== null) shown++; });
    el.textContent = shown + ' of ' + rows.length + ' items shown';
  });
});
"""


@dataclass
class ReportConfig:
    frames: int = 4  # frames per item (0: none)
    frame_items: int = 100  # items per run and task that get frames
    max_items: int | None = None  # items listed per task (None: all)
    title: str = "LLAVIDAL evaluation report"


def _score_cell(run: EvalRun) -> str:
    s = run.summary
    score = s.get("score")
    extra = ""
    if "mcq" in s:
        extra = f' <span class="muted small">({s["mcq"]["correct"]}/{s["mcq"]["total"]})</span>'
    elif "openqa" in s:
        q = s["openqa"]
        extra = f' <span class="muted small">({q["correct"]}/{q["total"]}, score {_fmt(q["mean_score"], 2)})</span>'
    kind = s.get("score_kind")
    if kind:
        extra += f'<br><span class="muted small">{_esc(kind)}</span>'
    return f'<td class="num">{_fmt(score)}{extra}</td>'


def _by_task(runs: Runs) -> dict[str, dict[str, EvalRun]]:
    out: dict[str, dict[str, EvalRun]] = {}
    for r in runs.evals:
        column = r.column
        while column in out.setdefault(r.task, {}):  # two runs of one task in one folder
            column = f"{column} ({r.path.name})"
        out[r.task][column] = r
    return out


def _summary_section(runs: Runs, tasks: dict[str, dict[str, EvalRun]]) -> str:
    from .tasks import TASKS

    columns = list(dict.fromkeys(c for per in tasks.values() for c in per))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for task, per in tasks.items():
        title = TASKS[task].title if task in TASKS else task
        cells = "".join(_score_cell(per[c]) if c in per else "<td></td>" for c in columns)
        body.append(f"<tr><th>{_esc(title)} <span class='muted small'>{_esc(task)}</span></th>{cells}</tr>")
    chart = bar_chart(list(tasks), [(c, [tasks[t][c].summary.get("score") if c in tasks[t] else None
                                         for t in tasks]) for c in columns],
                      title="Score per task (0-100)", ylabel="score")
    out = [f'<h2 id="summary">Summary</h2><table class="summary"><tr><th>task</th>{head}</tr>{"".join(body)}</table>',
           f'<div class="charts" data-chart="overview">{chart}</div>', _videochatgpt_table(tasks, columns)]
    return "".join(out)


VCG_CRITERIA = (("vcgbench-generic", "correctness"), ("vcgbench-generic", "detail"), ("vcgbench-generic", "context"),
                ("vcgbench-temporal", "temporal"), ("vcgbench-consistency", "consistency"))


def _videochatgpt_table(tasks: dict[str, dict[str, EvalRun]], columns: list[str]) -> str:
    """The Video-ChatGPT benchmark as the field reports it: the mean 0-5 judge score of each criterion."""
    rows = []
    for c in columns:
        values = []
        for task, crit in VCG_CRITERIA:
            run = tasks.get(task, {}).get(c)
            judge = ((run.summary.get("description_scores") or {}).get("judge") or {}) if run else {}
            values.append(((judge.get("criteria") or {}).get(crit) or {}).get("mean_raw"))
        if all(v is None for v in values):
            continue
        mean = sum(values) / len(values) if all(v is not None for v in values) else None
        rows.append(f"<tr><th>{_esc(c)}</th>" + "".join(f'<td class="num">{_fmt(v, 2)}</td>' for v in values)
                    + f'<td class="num">{_fmt(mean, 2)}</td></tr>')
    if not rows:
        return ""
    head = "".join(f"<th>{_esc(k)}</th>" for _, k in VCG_CRITERIA)
    return ("<h3>Video-ChatGPT benchmark (mean judge score, 0-5)</h3>"
            f"<table><tr><th>run</th>{head}<th>mean</th></tr>{''.join(rows)}</table>")


def _task_chart(task: str, per: dict[str, EvalRun]) -> str:
    runs = list(per.values())
    kind = runs[0].kind
    if kind == "mcq":
        cats = ["correct", "wrong", "unparsed", "missing_video"]
        series = [(c, [100.0 * r.summary["mcq"][k] / max(r.summary["mcq"]["total"], 1) for k in cats])
                  for c, r in per.items()]
        return bar_chart(["correct", "wrong", "unparsed", "missing"], series, title=f"{task}: outcomes (% of items)",
                         ylabel="% of items")
    if kind == "openqa":
        series = [(c, [r.summary["openqa"]["accuracy"], r.summary["openqa"]["accuracy_judged"],
                       None if r.summary["openqa"]["mean_score"] is None else 20 * r.summary["openqa"]["mean_score"]])
                  for c, r in per.items()]
        return bar_chart(["accuracy", "accuracy (judged)", "mean score x 20"], series,
                         title=f"{task}: accuracy and score", ylabel="0-100")
    crit = list(dict.fromkeys(k for r in runs for k in
                              (((r.summary.get("description_scores") or {}).get("judge") or {}).get("criteria") or {})))
    if not crit:
        series = [(c, [((r.summary.get("description_scores") or {}).get("offline") or {}).get("rouge_l")])
                  for c, r in per.items()]
        return bar_chart(["ROUGE-L"], series, title=f"{task}: offline metric (no judge)", ylabel="0-100")
    series = [(c, [((((r.summary.get("description_scores") or {}).get("judge") or {}).get("criteria") or {})
                    .get(k) or {}).get("score") for k in crit]) for c, r in per.items()]
    return bar_chart(crit, series, title=f"{task}: judge criteria (score x 20)", ylabel="0-100")


def _record_table(per: dict[str, EvalRun]) -> str:
    keys = ("model", "projector", "projector_sha256", "protocol", "prompt_set", "judge_prompt_set", "mcq_mode",
            "mcq_parser", "seed", "temperature", "commit", "items_in_file", "missing_videos", "segments_not_cut")
    head = "".join(f"<th>{_esc(c)}</th>" for c in per)
    rows = []
    for k in keys + ("judge",):
        vals = [r.summary.get(k) for r in per.values()]
        if all(v is None for v in vals):
            continue
        if k == "judge":
            vals = [f"{v.get('model')} @ {v.get('base_url')} (T={v.get('temperature')})" if isinstance(v, dict) else v
                    for v in vals]
        rows.append(f"<tr><th>{k}</th>" + "".join(f"<td class='small'>{_esc(v)}</td>" for v in vals) + "</tr>")
    rows.append("<tr><th>folder</th>" + "".join(f"<td class='small'>{_esc(r.path)}</td>" for r in per.values())
                + "</tr>")
    return f"<details><summary>run records</summary><table><tr><th></th>{head}</tr>{''.join(rows)}</table></details>"


def _judge_details(row: dict) -> str:
    judge = row.get("judge") or {}
    parts = []
    for key, v in judge.items():
        if not isinstance(v, dict):
            continue
        if "score" in v or "match" in v:
            verdict = {True: "yes", False: "no"}.get(v.get("match"), None) if "match" in v else None
            score = v.get("score")
            head = f"{key}: " + " ".join(x for x in (verdict and f"correct={verdict}",
                                                     None if score is None else f"score {score}") if x)
        else:
            head = f"{key}: letter {v.get('letter')}"
        if v.get("error"):
            head += " — failed"
        reason = v.get("error") or v.get("reply") or ""
        parts.append(f"<details><summary>{_esc(head)}</summary><div class='reason'>{_esc(reason)}</div></details>")
    return "".join(parts)


def _run_cell(run: EvalRun, row: dict | None) -> tuple[str, str]:
    if row is None:
        return "<td class='muted'>not in this run</td>", "unscored"
    outcome = item_outcome(run.kind, row)
    badge = f"<span class='badge b-{outcome}'>{outcome}</span>"
    if row.get("status") == "missing_video":
        return f"<td>{badge}</td>", outcome
    replies = [(k, row[k]) for k in ("reply", "cons_reply1", "cons_reply2") if row.get(k) is not None]
    if not replies and row.get("clip_replies"):
        replies = [("clip replies", " | ".join(row["clip_replies"]))]
    text = "".join(f"<div class='reply'>{'' if k == 'reply' else f'<b>{k}:</b> '}{_esc(v)}</div>" for k, v in replies)
    info = []
    if run.kind == "mcq":
        info.append(f"letter <b>{_esc(row.get('letter'))}</b> <span class='muted small'>({_esc(row.get('method'))})"
                    "</span>")
        if row.get("scores"):
            info.append("<span class='small'>" + ", ".join(f"{k}: {v:.2f}" for k, v in row["scores"].items())
                        + "</span>")
    elif run.kind == "description" and description_mean(row) is not None:
        info.append(f"mean judge score <b>{description_mean(row):.2f}</b>/5")
    return f"<td>{badge} {text}<div>{' · '.join(info)}</div>{_judge_details(row)}</td>", outcome


def _items_section(task: str, per: dict[str, EvalRun], cfg: ReportConfig) -> str:
    runs = list(per.items())
    by_run = [{r["id"]: r for r in run.rows} for _, run in runs]
    ids = list(dict.fromkeys(i for rows in by_run for i in rows))
    listed = ids if cfg.max_items is None else ids[:cfg.max_items]
    table_id = f"items-{task}"
    head = "".join(f"<th>{_esc(c)}</th>" for c, _ in runs)
    body, framed, frame_failures = [], [0] * len(runs), 0
    for item_id in listed:
        first = next(rows[item_id] for rows in by_run if item_id in rows)
        frames = ""
        for j, (_, run) in enumerate(runs):  # frames from the first run whose video folder has the video
            if frames or framed[j] >= cfg.frame_items or item_id not in by_run[j]:
                continue
            urls, why = video_frames(run, by_run[j][item_id], cfg.frames)
            frame_failures += why is not None
            if urls:
                framed[j] += 1
                frames = "".join(f"<img class='frame' alt='frame {k}' src='{u}'>" for k, u in enumerate(urls))
        opts = first.get("options") or {}
        options = "".join(f"<span class='opt{' truth' if k == first.get('answer') else ''}'>({_esc(k)}) {_esc(v)}"
                          "</span>" for k, v in opts.items())
        truth = "" if opts else f"<div class='small'><b>reference:</b> {_esc(first.get('answer'))}</div>"
        cells, outcomes = [], []
        for j, (_, run) in enumerate(runs):
            cell, outcome = _run_cell(run, by_run[j].get(item_id))
            cells.append(cell)
            outcomes.append(outcome)
        wrong = any(o in ("wrong", "unparsed", "missing") for o in outcomes)
        body.append(f"<tr class='item{' wrong' if wrong else ''}' data-id='{_esc(item_id)}'>"
                    f"<td class='small'>{_esc(item_id)}<br><span class='muted'>{_esc(first.get('video'))}</span>"
                    f"<div>{frames}</div></td><td>{_esc(first.get('question'))}{options}{truth}</td>"
                    f"{''.join(cells)}</tr>")
    note = f"{len(listed)} of {len(ids)} items listed" if len(listed) < len(ids) else f"{len(ids)} items"
    if frame_failures:
        note += f"; {frame_failures} videos could not be read for frames"
    return (f"<h3>Items <span class='muted small' data-shown='{table_id}'>{len(listed)} of {len(listed)} items shown"
            f"</span> <span class='muted small'>({note})</span></h3>"
            f"<table class='items' id='{table_id}'><tr><th>item</th><th>question / options (truth in bold)</th>"
            f"{head}</tr>{''.join(body)}</table>")


def _training_section(runs: Runs) -> str:
    if not runs.trains:
        return ""
    charts = []
    for key, label in (("loss", "training loss"), ("eval_loss", "evaluation loss"),
                       ("learning_rate", "learning rate"), ("grad_norm", "gradient norm")):
        series = [(t.column, [h["step"] for h in t.history if key in h and "step" in h],
                   [float(h[key]) for h in t.history if key in h and "step" in h]) for t in runs.trains]
        series = [s for s in series if s[1]]
        if series:
            charts.append(line_chart(series, title=label, xlabel="step", ylabel=key))
    rows = "".join(f"<tr><th>{_esc(t.column)}</th><td class='small'>{_esc(t.path)}</td><td>{_esc(t.source)}</td>"
                   f"<td class='num'>{len(t.history)}</td></tr>" for t in runs.trains)
    return (f"<h2 id='training'>Training</h2><table><tr><th>run</th><th>folder</th><th>read from</th>"
            f"<th>log entries</th></tr>{rows}</table><div class='charts' data-chart='training'>{''.join(charts)}</div>")


def render(runs: Runs, cfg: ReportConfig | None = None) -> str:
    """The whole page."""
    from .tasks import TASKS

    cfg = cfg or ReportConfig()
    tasks = _by_task(runs)
    sections = [_summary_section(runs, tasks)] if tasks else []
    sections.append(_training_section(runs))
    for task, per in tasks.items():
        title = TASKS[task].title if task in TASKS else task
        sections.append(f"<h2 id='task-{_esc(task)}'>{_esc(title)} <span class='muted small'>{_esc(task)}</span></h2>"
                        f"<div class='charts' data-chart='{_esc(task)}'>{_task_chart(task, per)}</div>"
                        f"{_record_table(per)}{_items_section(task, per, cfg)}")
    skipped = "".join(f"<li>{_esc(s)}</li>" for s in runs.skipped)
    toc = " · ".join(f"<a href='#task-{_esc(t)}'>{_esc(t)}</a>" for t in tasks)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(cfg.title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_esc(cfg.title)}</h1>"
            f"<div class='muted small'>{len(runs.evals)} evaluation runs, {len(runs.trains)} training runs"
            f"{' · ' + toc if toc else ''}</div>"
            f"{'<ul class=small>' + skipped + '</ul>' if skipped else ''}"
            f"<div class='controls'><label><input type='checkbox' id='only-wrong'> only items some run got wrong"
            f"</label></div>{''.join(sections)}<script>{JS}</script></body></html>")


def build_parser(prog: str = "llavidal eval report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="One self-contained HTML page of evaluation results (and "
                                "training curves): summary, charts, every item with reply, letter, judge scores and "
                                "reasons, and video frames; several folders are compared side by side.")
    p.add_argument("results", nargs="+", help="eval run output folders, training folders, or folders holding them")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--frames", type=int, default=4, help="video frames shown per item (0: none; default 4)")
    p.add_argument("--frame-items", type=int, default=100, help="items per task and run that get frames (default 100)")
    p.add_argument("--max-items", type=int, help="items listed per task (default: all)")
    p.add_argument("--title", default=ReportConfig.title)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    runs = find_runs(args.results)
    if not runs.evals and not runs.trains:
        print("error: nothing to report:\n  " + "\n  ".join(runs.skipped), file=sys.stderr)
        return 2
    cfg = ReportConfig(frames=args.frames, frame_items=args.frame_items, max_items=args.max_items, title=args.title)
    page = render(runs, cfg)
    atomic_write_text(args.output, page)
    print(f"{args.output}: {len(runs.evals)} evaluation runs, {len(runs.trains)} training runs, "
          f"{len(page) / 2**20:.1f} MiB", file=sys.stderr)
    for s in runs.skipped:
        print(f"  skipped: {s}", file=sys.stderr)
    return 0


__all__ = ["EvalRun", "ReportConfig", "Runs", "TrainRun", "bar_chart", "find_runs", "item_outcome", "line_chart",
           "main", "render", "video_frames"]

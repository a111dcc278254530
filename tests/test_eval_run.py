"""`llavidal eval run` end to end on the tiny model: batched generation, log-likelihood mode, missing videos,
append-only results and resume."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from llavidal.synthetic import WorldSpec, make_dataset

    root = tmp_path_factory.mktemp("evalrun")
    data = make_dataset(root / "data", n_train=0, n_test=6, seed=1, spec=WorldSpec(video_rows=8, pose_rows=6))
    return data


def _run(tiny_base, data, out, *extra):
    from llavidal.cli import main

    return main(["eval", "run", "--task", "smarthome-ar", "--qa-file", str(data["test"]), "--video-dir",
                 str(data["video_folder"]), "--base", str(tiny_base), "--output", str(out), "--max-new-tokens", "8",
                 "--batch-size", "4", *extra])


def test_generate_mode_counts_every_item_and_missing_videos(tiny_base, bench, tmp_path, capsys):
    items = json.loads(bench["test"].read_text())
    victim = items["2"]["video_id"].rsplit("/", 1)[1].replace(".mp4", ".pkl")
    moved = bench["video_folder"] / victim
    hidden = tmp_path / victim
    moved.rename(hidden)
    try:
        assert _run(tiny_base, bench, tmp_path / "out") == 0
    finally:
        hidden.rename(moved)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    mcq = summary["mcq"]
    assert mcq["total"] == 6 and summary["missing_videos"] == 1 and mcq["missing_video"] == 1
    assert mcq["correct"] + mcq["wrong"] + mcq["unparsed"] + mcq["missing_video"] == 6
    assert summary["prompt_set"] and summary["seed"] == 0 and summary["model"] == str(tiny_base)
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sum(r["status"] == "missing_video" for r in rows) == 1
    assert all("reply" in r for r in rows if r["status"] == "ok")
    assert "### smarthome-ar" in capsys.readouterr().out


def test_resume_appends_only_missing_items(tiny_base, bench, tmp_path):
    out = tmp_path / "out"
    assert _run(tiny_base, bench, out, "--limit", "3") == 0
    first = (out / "predictions.jsonl").read_text().splitlines()
    assert len(first) == 3
    (out / "predictions.jsonl").write_text("\n".join(first) + "\n" + '{"id": "torn')  # killed mid-write
    assert _run(tiny_base, bench, out) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines() if x.endswith("}")]
    assert [r["id"] for r in rows[:3]] == [json.loads(x)["id"] for x in first]
    assert len({r["id"] for r in rows}) == 6


def test_loglik_mode_scores_options_without_generation(tiny_base, bench, tmp_path):
    assert _run(tiny_base, bench, tmp_path / "ll", "--mcq-mode", "loglik") == 0
    rows = [json.loads(x) for x in (tmp_path / "ll" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["method"] == "loglik" and set(r["scores"]) == {"A", "B", "C", "D"} for r in rows)
    assert all(r["letter"] == max(r["scores"], key=r["scores"].get) for r in rows)
    summary = json.loads((tmp_path / "ll" / "summary.json").read_text())
    assert summary["mcq"]["unparsed"] == 0 and summary["mcq_mode"] == "loglik"

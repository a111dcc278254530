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


def test_items_without_a_file_in_a_modality_folder_are_counted(tiny_base, bench, tmp_path, capsys):
    """--object-dir holds files (named as the videos) for 4 of the 6 items: the other 2 are answered without object
    features, and the summary and the table say how many."""
    import shutil

    objects = tmp_path / "objects"
    objects.mkdir()
    videos = sorted(bench["video_folder"].glob("*.pkl"))
    sources = sorted(bench["object_folder"].glob("*_object.pkl"))
    for video, source in list(zip(videos, sources))[:4]:
        shutil.copy(source, objects / video.name)
    assert _run(tiny_base, bench, tmp_path / "out", "--object-dir", str(objects)) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["answered_without"] == {"object": 2} and summary["missing_videos"] == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(tuple(r["features"]) for r in rows) == [("object", "video")] * 4 + [("video",)] * 2
    assert "| answered without object features (no file in --object-dir) | 2 |" in capsys.readouterr().out


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


def _desc_fixture(root, data):
    """A Charades-Description file and a TSU-Description file over the synthetic videos' features."""
    import shutil

    feats = sorted(p for p in data["video_folder"].iterdir())
    charades = [{"video_name": p.stem, "Q": "What does the person do?", "A": "The person sits down and drinks.",
                 "cons_Q1": "Describe the video.", "cons_Q2": "What happens?", "cons_A": "The person drinks."}
                for p in feats[:3]]
    (root / "charades_desc.json").write_text(json.dumps(charades))
    tsu_dir = root / "tsu"
    tsu_dir.mkdir()
    for i, p in enumerate(feats[:3], start=1):  # clips 1, 2, 10 must be read in this order
        shutil.copy(p, tsu_dir / f"P02T01C07_clip{ {1: 1, 2: 2, 3: 10}[i] }.pkl")
    (root / "tsu_desc.json").write_text(json.dumps({"P02T01C07": "A person walks in and makes tea."}))
    return root / "charades_desc.json", root / "tsu_desc.json", tsu_dir


def test_description_tasks_with_a_loopback_judge(tiny_base, bench, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from openai_stub import OpenAIStub

    from llavidal.cli import main

    charades, tsu, tsu_dir = _desc_fixture(tmp_path, bench)
    seen = []

    def responder(body):
        text = body["messages"][-1]["content"]
        seen.append(text)
        if "clip" in body["messages"][0]["content"].lower() and "score" not in body["messages"][0]["content"]:
            return "The person walks in, then makes tea."  # a TSU summary
        return "{'score': 4}"

    with OpenAIStub(responder=responder) as stub:
        common = ["--base", str(tiny_base), "--max-new-tokens", "6", "--judge-model", "stub-judge",
                  "--judge-base-url", stub.base_url, "--judge-api-key", "x"]
        assert main(["eval", "run", "--task", "charades-desc", "--qa-file", str(charades), "--video-dir",
                     str(bench["video_folder"]), "--output", str(tmp_path / "cd"), *common]) == 0
        s = json.loads((tmp_path / "cd" / "summary.json").read_text())
        judge = s["description_scores"]["judge"]
        assert s["score"] == pytest.approx(80.0) and judge["final"] == pytest.approx(80.0)  # 4 x 20
        assert s["judge"]["model"] == "stub-judge" and s["judge_prompt_set"]
        assert s["description_scores"]["offline"]["rouge_l"] is not None
        n_requests = stub.requests if hasattr(stub, "requests") else len(seen)
        # a second run costs nothing: every judge call is a cache hit
        assert main(["eval", "run", "--task", "charades-desc", "--qa-file", str(charades), "--video-dir",
                     str(bench["video_folder"]), "--output", str(tmp_path / "cd"), *common]) == 0
        assert (stub.requests if hasattr(stub, "requests") else len(seen)) == n_requests
        assert json.loads((tmp_path / "cd" / "summary.json").read_text())["judge_stats"]["cache_hits"] == 15

        assert main(["eval", "run", "--task", "tsu-desc", "--qa-file", str(tsu), "--video-dir", str(tsu_dir),
                     "--output", str(tmp_path / "tsu"), *common]) == 0
    row = json.loads((tmp_path / "tsu" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["clips"] == ["P02T01C07_clip1.pkl", "P02T01C07_clip2.pkl", "P02T01C07_clip10.pkl"]
    assert len(row["clip_replies"]) == 3
    t = json.loads((tmp_path / "tsu" / "summary.json").read_text())
    assert t["score"] == pytest.approx(80.0) and t["description_scores"]["summary_failures"] == 0


def test_description_without_judge_reports_offline_metrics(tiny_base, bench, tmp_path):
    from llavidal.cli import main

    charades, _, _ = _desc_fixture(tmp_path, bench)
    assert main(["eval", "run", "--task", "charades-desc", "--qa-file", str(charades), "--video-dir",
                 str(bench["video_folder"]), "--base", str(tiny_base), "--output", str(tmp_path / "o"),
                 "--max-new-tokens", "6", "--no-embedding"]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["description_scores"]["judge"] is None and s["score_kind"].startswith("rouge_l")
    assert 0 <= s["score"] <= 100


def test_llm_parser_through_the_judge(tiny_base, bench, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from openai_stub import OpenAIStub

    from llavidal.cli import main

    items = json.loads(bench["test"].read_text())
    with OpenAIStub(default="B") as stub:
        assert main(["eval", "run", "--task", "smarthome-ar", "--qa-file", str(bench["test"]), "--video-dir",
                     str(bench["video_folder"]), "--base", str(tiny_base), "--output", str(tmp_path / "p"),
                     "--max-new-tokens", "4", "--mcq-parser", "llm", "--judge-model", "stub-judge",
                     "--judge-base-url", stub.base_url, "--judge-api-key", "x"]) == 0
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["llm_parsed"] == 6 and s["llm_parse_failures"] == 0 and s["mcq_parser"] == "llm"
    rows = [json.loads(x) for x in (tmp_path / "p" / "scored.jsonl").read_text().splitlines()]
    assert all(r["letter"] == "B" and r["method"] == "llm" for r in rows)
    truth_b = sum(1 for k in sorted(items, key=int)
                  if [items[k]["choices"][c] for c in sorted(items[k]["choices"])].index(items[k]["ground_truth"]) == 1)
    assert s["mcq"]["correct"] == truth_b  # every reply judged "B": accuracy is the share of B answers
    with pytest.raises(SystemExit):
        main(["eval", "run", "--task", "smarthome-ar", "--qa-file", str(bench["test"]), "--base", str(tiny_base),
              "--output", str(tmp_path / "q"), "--mcq-parser", "nonsense"])


def test_torchrun_two_ranks_share_the_items(tiny_base, bench, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "llavidal.eval.runner", "--task", "smarthome-ar", "--qa-file", str(bench["test"]), "--video-dir",
           str(bench["video_folder"]), "--base", str(tiny_base), "--output", str(tmp_path / "d"),
           "--mcq-mode", "loglik", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r0 = (tmp_path / "d" / "predictions.rank0.jsonl").read_text().splitlines()
    r1 = (tmp_path / "d" / "predictions.rank1.jsonl").read_text().splitlines()
    assert len(r0) == 3 and len(r1) == 3  # every other item each
    ids = {json.loads(x)["id"] for x in r0} | {json.loads(x)["id"] for x in r1}
    assert len(ids) == 6
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["mcq"]["total"] == 6 and summary["mcq"]["not_run"] == 0
    # the same letters as a single-process run
    from llavidal.cli import main

    assert main(["eval", "run", "--task", "smarthome-ar", "--qa-file", str(bench["test"]), "--video-dir",
                 str(bench["video_folder"]), "--base", str(tiny_base), "--output", str(tmp_path / "s"),
                 "--mcq-mode", "loglik"]) == 0
    single = {json.loads(x)["id"]: json.loads(x)["letter"]
              for x in (tmp_path / "s" / "predictions.jsonl").read_text().splitlines()}
    both = {json.loads(x)["id"]: json.loads(x)["letter"] for x in r0 + r1}
    assert both == single

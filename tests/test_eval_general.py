"""The general video benchmarks in `llavidal eval run`: the Video-ChatGPT benchmark (generic, temporal, consistency),
zero-shot open-ended QA (ActivityNet-QA, MSRVTT-QA, MSVD-QA) and MVBench, read from files in their released formats,
run on the tiny model, judged by a loopback OpenAI-compatible server, with resume and torchrun sharding."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers_benchmarks import (
    CRITERION_SCORES,
    judge_stub,
    write_mvbench,
    write_videochatgpt,
    write_zero_shot,
)

from llavidal.eval.tasks import TaskFormatError, load_task


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("general")
    return {"vcg": write_videochatgpt(root), "zs": write_zero_shot(root), "mvb": write_mvbench(root)}


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------------ loaders
def test_loaders_read_the_released_formats(bench):
    vcg, zs, mvb = bench["vcg"], bench["zs"], bench["mvb"]
    items, problems = load_task("vcgbench-generic", vcg["generic"])
    assert problems == [] and [i.video for i in items] == ["v_Zx1.mp4", "v_Zx2.mp4", "v_Zx3.mp4", "v_missing.mp4"]
    assert items[0].prompt == "What is happening in video 0?" and items[0].answer.startswith("A man walks")
    items, _ = load_task("vcgbench-consistency", vcg["consistency"])
    assert items[0].extra == {"cons_Q1": "What is the man holding?", "cons_Q2": "Which object is in his hand?",
                              "cons_A": "A glass of water."}

    items, problems = load_task("activitynet-qa", zs["anet_q"])  # the answer file is found beside the questions
    assert problems == [] and [i.answer for i in items] == zs["answers"]
    assert items[0].id == "clip0_0" and items[0].videos == ("clip0.mp4", "v_clip0.mp4")
    assert items[2].extra["type"] == 3
    items, _ = load_task("msrvtt-qa", zs["msrvtt"])
    assert [i.video for i in items] == ["video7010.mp4", "video7011.mp4", "video7012.mp4"] and items[0].id == "100"
    items, problems = load_task("msvd-qa", zs["msvd"])  # youtube_mapping.txt beside it maps vid<N> -> clip
    assert [i.video for i in items] == ["-4wsuPCjDBc_5_15.avi", "0lh_UWF9ZP4_62_69.avi", "1dfR0A_BXjw_590_600.avi"]
    assert len(problems) == 1 and "vid99" in problems[0].reason and problems[0].index == 3

    items, problems = load_task("mvbench", mvb["file"])
    assert problems == [] and items[0].options == {"A": "Opened the door.", "B": "Sat on the bed.",
                                                   "C": "Took the towel."}
    assert [i.answer for i in items] == ["A", "B", "C", "A"] and items[0].extra == {"start": 1.5, "end": 6.0}
    assert "(A) Opened the door. (B) Sat on the bed." in items[0].prompt


def test_loaders_refuse_what_is_not_their_format(bench, tmp_path):
    q = tmp_path / "val_q.json"
    q.write_text(bench["zs"]["anet_q"].read_text())
    with pytest.raises(TaskFormatError, match="answer file"):
        load_task("activitynet-qa", q)  # no val_a.json beside it
    with pytest.raises(TaskFormatError, match="MVBench"):
        load_task("mvbench", bench["vcg"]["generic"])
    bad = tmp_path / "mvb.json"
    bad.write_text(json.dumps([{"video": "a.mp4", "question": "q?", "candidates": ["x", "y"], "answer": "z"},
                               {"video": "../b.mp4", "question": "q?", "candidates": ["x", "y"], "answer": "x"}]))
    with pytest.raises(TaskFormatError, match="leaves the video folder"):
        load_task("mvbench", bad)
    bad.write_text(json.dumps([{"video": "a.mp4", "question": "q?", "candidates": ["x", "y"], "answer": "z"}]))
    items, problems = load_task("mvbench", bad)
    assert items == [] and "matches no candidate" in problems[0].reason


# ------------------------------------------------------------------------------------------------ end to end
def _run(tiny_base, task, qa_file, video_dir, out, *extra):
    from llavidal.cli import main

    return main(["eval", "run", "--task", task, "--qa-file", str(qa_file), "--video-dir", str(video_dir),
                 "--base", str(tiny_base), "--output", str(out), "--max-new-tokens", "6", "--batch-size", "4",
                 "--no-embedding", *extra])


def _judge_flags(stub):
    return ["--judge-model", "stub-judge", "--judge-base-url", stub.base_url, "--judge-api-key", "x"]


def test_videochatgpt_benchmark_with_a_loopback_judge(tiny_base, bench, tmp_path):
    vcg = bench["vcg"]
    with judge_stub() as stub:
        for task, key in (("vcgbench-generic", "generic"), ("vcgbench-temporal", "temporal"),
                          ("vcgbench-consistency", "consistency")):
            assert _run(tiny_base, task, vcg[key], vcg["video_dir"], tmp_path / key, *_judge_flags(stub)) == 0
        calls = stub.count
    generic = json.loads((tmp_path / "generic" / "summary.json").read_text())
    crit = generic["description_scores"]["judge"]["criteria"]
    assert set(crit) == {"correctness", "detail", "context"}  # only the generic file's criteria
    assert {c: v["score"] for c, v in crit.items()} == {c: 20.0 * CRITERION_SCORES[c] for c in crit}
    assert generic["score"] == pytest.approx(20 * (4 + 3 + 5) / 3) and generic["missing_videos"] == 1
    temporal = json.loads((tmp_path / "temporal" / "summary.json").read_text())
    assert list(temporal["description_scores"]["judge"]["criteria"]) == ["temporal"] and temporal["score"] == 40.0
    cons = json.loads((tmp_path / "consistency" / "summary.json").read_text())
    assert cons["score"] == 20.0 and cons["description_scores"]["consistency_not_judged"] == 0
    # 3 items x 3 criteria + 3 x 1 + 2 x 1 judge calls; the consistency task asks only the two paraphrases
    assert calls == 9 + 3 + 2
    rows = _rows(tmp_path / "consistency" / "predictions.jsonl")
    assert all(set(r) >= {"cons_reply1", "cons_reply2"} and "reply" not in r for r in rows)
    scored = _rows(tmp_path / "generic" / "scored.jsonl")
    judged = [r for r in scored if r["status"] == "ok"]
    assert all(r["judge"]["detail"]["score"] == 3 and r["judge"]["detail"]["reply"] == "{'score': 3}" for r in judged)
    assert "### vcgbench-generic" in (tmp_path / "generic" / "summary.md").read_text()


def test_zero_shot_qa_accuracy_and_score(tiny_base, bench, tmp_path):
    zs = bench["zs"]
    with judge_stub() as stub:
        assert _run(tiny_base, "activitynet-qa", zs["anet_q"], zs["anet_videos"], tmp_path / "anet",
                    *_judge_flags(stub)) == 0
        assert _run(tiny_base, "msvd-qa", zs["msvd"], zs["msvd_videos"], tmp_path / "msvd", *_judge_flags(stub)) == 0
    s = json.loads((tmp_path / "anet" / "summary.json").read_text())
    q = s["openqa"]
    # answers dog, red, yes, two (+ kitchen, whose video is missing): the judge says yes to dog and yes
    assert (q["total"], q["answered"], q["correct"], q["incorrect"], q["missing_videos"]) == (5, 4, 2, 2, 1)
    assert q["accuracy"] == pytest.approx(40.0) and q["accuracy_judged"] == pytest.approx(50.0)
    assert q["mean_score"] == pytest.approx((5 + 1 + 5 + 1) / 4) and s["score"] == pytest.approx(40.0)
    assert s["judge"]["model"] == "stub-judge" and s["judge_prompt_set"] == "llavidal-openqa@1"
    rows = {r["id"]: r for r in _rows(tmp_path / "anet" / "scored.jsonl")}
    assert rows["clip0_0"]["match"] is True and rows["clip0_0"]["judge"]["openqa"]["score"] == 5
    assert rows["clip4_4"]["status"] == "missing_video"
    m = json.loads((tmp_path / "msvd" / "summary.json").read_text())
    assert m["openqa"]["total"] == 4 and m["openqa"]["correct"] == 1 and len(m["unreadable_records"]) == 1


def test_zero_shot_qa_judge_failures_are_counted_not_scored(tiny_base, bench, tmp_path):
    from openai_stub import reply

    zs = bench["zs"]
    with judge_stub() as stub:
        stub.push(*[reply("I cannot tell.")] * 2)  # the first item's judge never parses (asked again, then failed)
        assert _run(tiny_base, "msrvtt-qa", zs["msrvtt"], zs["msrvtt_videos"], tmp_path / "m", *_judge_flags(stub),
                    "--judge-max-parse-failures", "2", "--judge-concurrency", "1") == 0
    q = json.loads((tmp_path / "m" / "summary.json").read_text())["openqa"]
    assert q["judge_failures"] == 1 and q["correct"] + q["incorrect"] == 2 and q["total"] == 3
    failed = [r for r in _rows(tmp_path / "m" / "scored.jsonl") if r["match"] is None]
    assert len(failed) == 1 and failed[0]["judge"]["openqa"]["error"]


def test_zero_shot_qa_offline_without_a_judge(tiny_base, bench, tmp_path):
    zs = bench["zs"]
    assert _run(tiny_base, "msrvtt-qa", zs["msrvtt"], zs["msrvtt_videos"], tmp_path / "o") == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["score_kind"].startswith("accuracy by answer-in-reply") and s["openqa"]["mean_score"] is None
    replies = {r["id"]: r["reply"] for r in _rows(tmp_path / "o" / "predictions.jsonl")}
    from llavidal.eval.openqa import answer_in_reply

    expected = sum(answer_in_reply(a, replies[str(100 + i)]) for i, a in enumerate(zs["answers"][:3]))
    assert s["openqa"]["correct"] == expected
    assert answer_in_reply("red", "The car is Red.") and not answer_in_reply("red", "it is reddish")


def test_mvbench_generate_and_loglik(tiny_base, bench, tmp_path):
    mvb = bench["mvb"]
    assert _run(tiny_base, "mvbench", mvb["file"], mvb["video_dir"], tmp_path / "g") == 0
    g = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert g["mcq"]["total"] == 4 and g["segments_not_cut"] == 2
    assert g["mcq"]["correct"] + g["mcq"]["wrong"] + g["mcq"]["unparsed"] == 4
    assert _run(tiny_base, "mvbench", mvb["file"], mvb["video_dir"], tmp_path / "l", "--mcq-mode", "loglik") == 0
    rows = _rows(tmp_path / "l" / "predictions.jsonl")
    assert all(set(r["scores"]) == {"A", "B", "C"} and r["letter"] == max(r["scores"], key=r["scores"].get)
               for r in rows)


def test_resume_and_paper_protocol_refused(tiny_base, bench, tmp_path):
    zs = bench["zs"]
    out = tmp_path / "r"
    assert _run(tiny_base, "activitynet-qa", zs["anet_q"], zs["anet_videos"], out, "--limit", "2") == 0
    first = (out / "predictions.jsonl").read_text().splitlines()
    assert _run(tiny_base, "activitynet-qa", zs["anet_q"], zs["anet_videos"], out) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert lines[:2] == first and len(lines) == 5  # the first two items were not asked again
    from llavidal.cli import main

    assert main(["eval", "run", "--task", "mvbench", "--qa-file", str(bench["mvb"]["file"]), "--base",
                 str(tiny_base), "--output", str(tmp_path / "p"), "--protocol", "paper"]) == 2


def test_torchrun_two_ranks_with_the_judge(tiny_base, bench, tmp_path):
    zs = bench["zs"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with judge_stub() as stub:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "llavidal.eval.runner", "--task", "activitynet-qa", "--qa-file", str(zs["anet_q"]),
               "--video-dir", str(zs["anet_videos"]), "--base", str(tiny_base), "--output", str(tmp_path / "d"),
               "--max-new-tokens", "6", "--device", "cpu", *_judge_flags(stub)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _run(tiny_base, "activitynet-qa", zs["anet_q"], zs["anet_videos"], tmp_path / "s",
                    *_judge_flags(stub)) == 0
    r0 = _rows(tmp_path / "d" / "predictions.rank0.jsonl")
    r1 = _rows(tmp_path / "d" / "predictions.rank1.jsonl")
    assert len(r0) == 3 and len(r1) == 2  # every other item each
    both = json.loads((tmp_path / "d" / "summary.json").read_text())["openqa"]
    single = json.loads((tmp_path / "s" / "summary.json").read_text())["openqa"]
    assert both == single
    assert {r["id"]: r.get("reply") for r in r0 + r1} == \
        {r["id"]: r.get("reply") for r in _rows(tmp_path / "s" / "predictions.jsonl")}


def test_prepare_lists_the_items_and_finds_their_videos(bench, capsys):
    from llavidal.cli import main

    zs = bench["zs"]
    assert main(["eval", "prepare", "--task", "activitynet-qa", "--qa-file", str(zs["anet_q"]), "--video-dir",
                 str(zs["anet_videos"])]) == 0
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert [line["answer"] for line in lines] == zs["answers"]
    assert [line["video_found"] for line in lines] == [True, True, True, True, False]  # found as v_clip<i>.pkl
    assert lines[0]["features"].endswith("v_clip0.pkl") and "5 items, 0 unreadable records, 1 missing" in out.err


def test_pose_features_are_found_under_the_name_the_video_was_found_under(tiny_base, bench, tmp_path):
    """ActivityNet videos are found as v_{name}: the pose file beside them is named alike and is read."""
    from llavidal.features import save_feature

    zs = bench["zs"]
    arr = np.random.default_rng(0).standard_normal((6, 216)).astype(np.float32)
    save_feature(arr, tmp_path / "pose" / "v_clip0.pkl")
    save_feature(arr, tmp_path / "other" / "v_clip9.pkl")
    replies = {}
    for name, extra in (("none", []), ("pose", ["--pose-dir", str(tmp_path / "pose")]),
                        ("other", ["--pose-dir", str(tmp_path / "other")])):
        assert _run(tiny_base, "activitynet-qa", zs["anet_q"], zs["anet_videos"], tmp_path / name, "--limit", "1",
                    *extra) == 0
        replies[name] = _rows(tmp_path / name / "predictions.jsonl")[0]["reply"]
    assert replies["pose"] != replies["none"] and replies["other"] == replies["none"]

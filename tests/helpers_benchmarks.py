"""Fixtures of the general video benchmarks, written in their released formats (Video-ChatGPT's three QA files,
MSVD-QA / MSRVTT-QA test_qa.json, ActivityNet-QA's question and answer files, an MVBench task file), over small
feature files the tiny model reads; and a loopback judge that answers every kind of judge prompt."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub import OpenAIStub

ROWS, WIDTH = 8, 1024  # video feature rows of the fixtures (the tiny model reads any number of rows of width 1024)
#: what the loopback judge grades each Video-ChatGPT criterion (score x 20 in the summary)
CRITERION_SCORES = {"correctness": 4, "detail": 3, "context": 5, "temporal": 2, "consistency": 1}
MARKERS = {"correctness": "CORRECTNESS", "detail": "DETAIL", "context": "CONTEXTUAL", "temporal": "TEMPORAL",
           "consistency": "CONSISTENCY"}


def _feature(folder: Path, rel: str, seed: int) -> None:
    from llavidal.features import save_feature

    rng = np.random.default_rng(seed)
    path = folder / Path(rel).with_suffix(".pkl")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_feature(rng.standard_normal((ROWS, WIDTH)).astype(np.float16), path)


def write_videochatgpt(root: Path) -> dict:
    """generic_qa.json / temporal_qa.json: lists of {video_name, Q, A}; consistency_qa.json: {video_name, Q1, Q2,
    A}; features for every video but ``v_missing``."""
    videos = root / "vcg_videos"
    names = ["v_Zx1", "v_Zx2", "v_Zx3", "v_missing"]
    for i, n in enumerate(names[:3]):
        _feature(videos, n, i)
    generic = [{"video_name": n, "Q": f"What is happening in video {i}?",
                "A": "A man walks into the kitchen and then pours a glass of water."} for i, n in enumerate(names)]
    temporal = [{"video_name": n, "Q": "What does the man do after entering?", "A": "He pours water, then drinks."}
                for n in names[:3]]
    consistency = [{"video_name": n, "Q1": "What is the man holding?", "Q2": "Which object is in his hand?",
                    "A": "A glass of water."} for n in names[:2]]
    out = {"video_dir": videos}
    for key, data in (("generic", generic), ("temporal", temporal), ("consistency", consistency)):
        out[key] = root / f"{key}_qa.json"
        out[key].write_text(json.dumps(data, indent=1))
    return out


def write_zero_shot(root: Path) -> dict:
    """ActivityNet-QA test_q.json + test_a.json (videos as v_{name}); MSRVTT-QA and MSVD-QA test_qa.json (MSVD
    with its youtube_mapping.txt)."""
    anet, msr, msvd = root / "anet", root / "msrvtt", root / "msvd"
    for d in (anet, msr, msvd):
        d.mkdir(parents=True, exist_ok=True)
    answers = ["dog", "red", "yes", "two", "kitchen"]
    questions = [{"video_name": f"clip{i}", "question_id": f"clip{i}_{i}", "question": f"question {i}?"}
                 for i in range(5)]
    for i in range(4):  # clip4's video is missing
        _feature(anet / "videos", f"v_clip{i}", 10 + i)
    (anet / "test_q.json").write_text(json.dumps(questions))
    (anet / "test_a.json").write_text(json.dumps(
        [{"answer": a, "type": 3 if a == "yes" else 5, "question_id": f"clip{i}_{i}"} for i, a in enumerate(answers)]))
    msr_records = [{"answer": a, "id": 100 + i, "question": f"what is in video {i}?", "video_id": 7010 + i}
                   for i, a in enumerate(answers[:3])]
    for i in range(3):
        _feature(msr / "videos", f"video{7010 + i}", 20 + i)
    (msr / "test_qa.json").write_text(json.dumps(msr_records))
    clips = ["-4wsuPCjDBc_5_15", "0lh_UWF9ZP4_62_69", "1dfR0A_BXjw_590_600"]
    (msvd / "youtube_mapping.txt").write_text("".join(f"{c} vid{i + 1}\n" for i, c in enumerate(clips)))
    for i, c in enumerate(clips):
        _feature(msvd / "videos", c, 30 + i)
    msvd_records = [{"answer": a, "id": i, "question": f"who is in clip {i}?", "video_id": i + 1}
                    for i, a in enumerate(["man", "woman", "cat"])]
    msvd_records.append({"answer": "dog", "id": 3, "question": "not mapped?", "video_id": 99})
    (msvd / "test_qa.json").write_text(json.dumps(msvd_records))
    return {"anet_q": anet / "test_q.json", "anet_a": anet / "test_a.json", "anet_videos": anet / "videos",
            "msrvtt": msr / "test_qa.json", "msrvtt_videos": msr / "videos", "msvd": msvd / "test_qa.json",
            "msvd_videos": msvd / "videos", "answers": answers}


def write_mvbench(root: Path) -> dict:
    """An MVBench task file (action_sequence.json style): {video, question, candidates, answer[, start, end]}."""
    folder = root / "mvbench"
    records = []
    for i in range(4):
        video = f"clip_{i}.mp4"
        _feature(folder / "videos", video, 40 + i)
        rec = {"video": video, "question": f"What did the person do first in clip {i}?",
               "candidates": ["Opened the door.", "Sat on the bed.", "Took the towel."], "answer":
                   ["Opened the door.", "Sat on the bed.", "Took the towel."][i % 3]}
        if i < 2:
            rec.update(start=1.5 + i, end=6.0 + i)
        records.append(rec)
    path = folder / "action_sequence.json"
    path.write_text(json.dumps(records))
    return {"file": path, "video_dir": folder / "videos"}


def judge_reply(body: dict) -> str:
    """The loopback judge: Video-ChatGPT criteria get CRITERION_SCORES; zero-shot QA is 'yes' when the reference
    answer is 'dog', 'yes' or 'man' (score 5) and 'no' otherwise (score 1); MCQ matching says (B)."""
    system = body["messages"][0]["content"]
    user = body["messages"][-1]["content"]
    if "short factual questions" in system:
        ref = re.search(r"Reference answer: (.*)", user).group(1).strip()
        good = ref in ("dog", "yes", "man")
        return f"{{'correct': '{'yes' if good else 'no'}', 'score': {5 if good else 1}}}"
    for criterion, marker in MARKERS.items():
        if f"Criterion: {marker}" in system:
            return f"{{'score': {CRITERION_SCORES[criterion]}}}"
    if "multiple-choice" in system:
        return "(B)"
    return "A summary."


def judge_stub(**kw) -> OpenAIStub:
    return OpenAIStub(responder=judge_reply, **kw)

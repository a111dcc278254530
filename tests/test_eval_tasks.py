"""ADL-X benchmark loaders (llavidal.eval.tasks) on hand-written fixtures in the published formats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llavidal.eval.tasks import (
    LETTERS, MCQ_INSTRUCTION, PROMPT_SET_VERSION, TASKS, TSU_DESC_QUESTION, EvalItem, Problem, TaskFormatError,
    build_mcq_prompt, clip_number, detect_task, list_clips, load_task, load_task_data, parse_numbered_lists,
    prepare_main, task_info, video_path,
)

DATA = Path(__file__).parent / "data" / "eval"
FIXTURES = {
    "charades-ar": DATA / "charades_ar.json",
    "smarthome-ar": DATA / "smarthome_ar.json",
    "lemma-tc": DATA / "lemma_tc.json",
    "tsu-tc": DATA / "tsu_tc.json",
    "charades-desc": DATA / "charades_desc.json",
    "tsu-desc": DATA / "tsu_desc.json",
}


def test_task_table():
    adlx = {n: t for n, t in TASKS.items() if t.family == "adlx"}
    assert set(adlx) == {"smarthome-ar", "charades-ar", "lemma-tc", "tsu-tc", "charades-desc", "tsu-desc"}
    assert {n: t.kind for n, t in adlx.items()} == {
        "smarthome-ar": "mcq", "charades-ar": "mcq", "lemma-tc": "mcq", "tsu-tc": "mcq",
        "charades-desc": "description", "tsu-desc": "description"}
    general = {n: (t.family, t.kind) for n, t in TASKS.items() if t.family != "adlx"}
    assert general == {
        "vcgbench-generic": ("videochatgpt", "description"), "vcgbench-temporal": ("videochatgpt", "description"),
        "vcgbench-consistency": ("videochatgpt", "description"), "msvd-qa": ("zeroshot-qa", "openqa"),
        "msrvtt-qa": ("zeroshot-qa", "openqa"), "activitynet-qa": ("zeroshot-qa", "openqa"),
        "mvbench": ("mvbench", "mcq")}
    assert TASKS["lemma-tc"].num_options == 6 and TASKS["tsu-tc"].num_options == 4
    assert TASKS["charades-ar"].numbered and TASKS["smarthome-ar"].numbered and not TASKS["tsu-tc"].numbered
    assert TASKS["tsu-desc"].num_options is None
    assert task_info("Charades-AR").name == "charades-ar"
    assert task_info("TSU_Description").name == "tsu-desc"
    with pytest.raises(KeyError, match="unknown task"):
        task_info("kinetics")
    assert PROMPT_SET_VERSION and MCQ_INSTRUCTION


@pytest.mark.parametrize("task", list(FIXTURES))
def test_every_fixture_loads_cleanly(task):
    items, problems = load_task(task, FIXTURES[task])
    assert problems == []
    assert items and all(isinstance(i, EvalItem) and i.task == task for i in items)
    assert [i.index for i in items] == list(range(len(items)))
    assert len({i.id for i in items}) == len(items)
    assert detect_task(json.loads(FIXTURES[task].read_text())) == task
    for item in items:
        if TASKS[task].kind == "mcq":
            assert item.answer in item.options
            assert item.prompt == build_mcq_prompt(item.question, item.options)
        else:
            assert item.options is None and item.answer


def test_mcq_prompt_layout():
    prompt = build_mcq_prompt("  What happens next? ", {"A": "walk", "B": "sit down"})
    assert prompt == f"What happens next? {MCQ_INSTRUCTION} (A) walk (B) sit down"


def test_charades_ar():
    items, _ = load_task("charades-ar", FIXTURES["charades-ar"])
    first = items[0]
    assert (first.id, first.video, first.answer, first.numbered) == ("K7Q2M", "K7Q2M.mp4", "B", True)
    assert list(first.options) == ["A", "B", "C", "D"]
    assert first.options["B"] == "Sitting on a sofa/couch, Holding a phone/camera, Playing with a phone/camera"
    assert first.extra["option_parts"]["A"] == ["Opening a door", "Walking through a doorway"]
    assert first.prompt.startswith("What is the sequence of actions being performed in the video? ")
    assert "(A) Opening a door, Walking through a doorway (B) Sitting on a sofa/couch" in first.prompt

    # commas, both quote kinds, a "]" and a fake "3. [" inside action names
    tricky = items[1]
    assert tricky.extra["option_parts"] == {
        "A": ["Tidying a shelf, then a desk", "Someone's cup is washed"],
        "B": ["Putting a book on the shelf [top] 3. [row]", "Reading a book"],
        "C": ["Holding a 'special' towel", "Throwing a towel somewhere"],
        "D": ["Turning on a light", "Laughing"],
    }
    assert tricky.answer == "C"
    assert items[2].answer == "A"  # ['Lying on a bed'] alone, not the options that also contain it


def test_parse_numbered_lists():
    assert parse_numbered_lists("1. ['a', 'b'] 2. [\"c, d\"]") == [(1, ["a", "b"]), (2, ["c, d"])]
    for bad in ("1. ['a'", "['a'] ['b']", "1. 'a' 2. ['b']", "1. []", "1. [1, 2]", "1. [open('x')]"):
        with pytest.raises(ValueError):
            parse_numbered_lists(bad)


def test_charades_ar_bad_records_are_reported_not_fatal():
    items, problems = load_task("charades-ar", DATA / "charades_ar_bad_records.json")
    assert [i.id for i in items] == ["GOOD1", "GOOD1#6"]  # a repeated id is made unique, both kept
    assert items[1].answer == "D" and items[1].extra["duplicate_id"] == "GOOD1"
    assert [p.index for p in problems] == [1, 2, 3, 4, 5]
    reasons = {p.index: p.reason for p in problems}
    assert "matches no option" in reasons[1]
    assert "cannot parse 'Options'" in reasons[2]
    assert "not an object" in reasons[3]
    assert "missing field 'Q'" in reasons[4]
    assert "cannot parse 'Options'" in reasons[5]  # a call inside the literal is refused, never evaluated
    assert problems[0].key == "NOGT2" and str(problems[0]).startswith("record 1 ('NOGT2'): ")


def test_smarthome_ar():
    items, _ = load_task("smarthome-ar", FIXTURES["smarthome-ar"])
    first = items[0]
    assert first.id == "0"
    assert first.video == "Cook.Stir_p04_r02_v05_c01.mp4"  # basename of the absolute path
    assert first.extra["source_video"].startswith("/mnt/storage/")
    assert first.options == {"A": "using a stove", "B": "stirring", "C": "reading a book", "D": "walk"}
    assert first.answer == "B" and first.answer_text == "stirring" and first.numbered
    assert items[1].answer == "C" and items[2].answer == "D"
    # the stale output fields are not carried
    assert "output" not in first.extra and "prediction" not in first.extra
    assert first.question.endswith("among the options:")


def test_smarthome_bad_records():
    items, problems = load_task("smarthome-ar", DATA / "smarthome_ar_bad_records.json")
    assert [i.id for i in items] == ["0", "3"]
    assert items[1].answer == "A"  # "using telephone" vs "Using Telephone": case is tolerated
    assert [(p.index, p.key) for p in problems] == [(1, "1"), (2, "2")]
    assert "'leaving' matches no choice" in problems[0].reason
    assert "numbered 1, 2, 5, 4" in problems[1].reason


def test_lemma_tc():
    items, _ = load_task("lemma-tc", FIXTURES["lemma-tc"])
    assert items[0].video == "12k-3-2-1_0_420.mp4"
    assert items[1].video == "12k-3-2-1_505_1133.mp4"
    assert list(items[1].options) == list("ABCDEF")
    assert items[1].answer == "F" and items[1].answer_text == "watch TV" and not items[1].numbered
    assert items[1].extra["person_id"] == "P2" and items[1].extra["start_frame"] == 505
    assert items[1].prompt.endswith("(E) throw trash in bin (F) watch TV")


def test_tsu_tc():
    items, _ = load_task("tsu-tc", FIXTURES["tsu-tc"])
    assert items[0].video == "P05/P05T02C03/clips/clip_4.mp4" and items[0].id == items[0].video
    assert items[1].answer == "C" and items[1].options["B"] == "Cook.Stir"
    assert video_path(items[0], "/videos/tsu") == Path("/videos/tsu/P05/P05T02C03/clips/clip_4.mp4")


def test_charades_desc():
    items, _ = load_task("charades-desc", FIXTURES["charades-desc"])
    first = items[0]
    assert (first.id, first.video, first.prompt) == ("R2D4Q", "R2D4Q.mp4", "Describe the video in detail.")
    assert first.answer.startswith("A man walks into a small kitchen")
    assert first.extra["cons_Q1"] == "What does the man do in the kitchen?"
    assert set(first.extra) == {"cons_Q1", "cons_Q2", "cons_A"}


def test_tsu_desc():
    items, _ = load_task("tsu-desc", FIXTURES["tsu-desc"])
    assert [i.id for i in items] == ["P02T01C07", "P14T18C01"]
    assert items[0].video == "P02T01C07" and items[0].prompt == TSU_DESC_QUESTION
    assert items[0].extra["cons_A"] == items[0].answer
    assert items[0].extra["cons_Q1"] != items[0].extra["cons_Q2"]


def test_tsu_clips_in_numeric_order(tmp_path):
    for name in ("P02T01C07_clip10.mp4", "P02T01C07_clip2.mp4", "P02T01C07_clip1.mp4", "P02T01C07_clip3.mp4",
                 "P02T01C070_clip1.mp4", "P02T01C07_clip4.txt", "P02T01C07_notes_clip5.mp4", "P14T18C01_clip1.mp4"):
        (tmp_path / name).write_bytes(b"")
    clips = list_clips(tmp_path, "P02T01C07")
    assert [c.name for c in clips] == ["P02T01C07_clip1.mp4", "P02T01C07_clip2.mp4", "P02T01C07_clip3.mp4",
                                       "P02T01C07_clip10.mp4"]
    assert list_clips(tmp_path, "P99T01C01") == [] and list_clips(tmp_path / "absent", "P02T01C07") == []
    assert clip_number("x/P02T01C07_clip12.mp4", "P02T01C07") == 12
    assert clip_number("P02T01C07_clip_7.mp4", "P02T01C07") == 7
    assert clip_number("P02T01C070_clip1.mp4", "P02T01C07") is None


@pytest.mark.parametrize("task,other", [
    ("charades-ar", "tsu-tc"),        # both lists, other records
    ("tsu-tc", "charades-desc"),
    ("smarthome-ar", "lemma-tc"),     # both dicts, other records
    ("lemma-tc", "tsu-tc"),           # list where a dict is expected
    ("tsu-desc", "smarthome-ar"),     # dict of records where a dict of strings is expected
    ("charades-desc", "tsu-desc"),
])
def test_wrong_format_is_a_clear_error(task, other):
    with pytest.raises(TaskFormatError) as err:
        load_task(task, FIXTURES[other])
    msg = str(err.value)
    assert str(FIXTURES[other]) in msg and TASKS[task].title in msg and "expected" in msg
    assert f"looks like a {TASKS[other].title}" in msg


def test_not_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(TaskFormatError, match="invalid JSON"):
        load_task("tsu-tc", bad)
    with pytest.raises(FileNotFoundError):
        load_task("tsu-tc", tmp_path / "missing.json")


def test_in_memory_records_and_letter_rules():
    data = [
        {"video_path": "a.mp4", "question": "q?", "options": {"a": "x", "b": "y"}, "correct_answer": "(b)"},
        {"video_path": "b.mp4", "question": "q?", "options": {"A": "x", "C": "y"}, "correct_answer": "A"},
        {"video_path": "c.mp4", "question": "q?", "options": {"A": "x", "B": "y"}, "correct_answer": "C"},
        {"video_path": "d.mp4", "question": "q?", "options": {k: k.lower() for k in "ABCDEFG"},
         "correct_answer": "A"},
    ]
    items, problems = load_task_data("tsu-tc", data)
    assert len(items) == 1 and items[0].options == {"A": "x", "B": "y"} and items[0].answer == "B"
    assert [p.index for p in problems] == [1, 2, 3]
    assert "consecutive letters" in problems[0].reason
    assert "not one of the options" in problems[1].reason
    assert f"'G' in 'options' is not a letter A-{LETTERS[-1]}" in problems[2].reason
    assert isinstance(problems[0], Problem)
    with pytest.raises(TaskFormatError, match="holds no records"):  # an empty benchmark is an error, not 0 items
        load_task_data("tsu-tc", [])


def test_prepare_cli(capsys):
    assert prepare_main(["--task", "lemma-tc", "--qa-file", str(FIXTURES["lemma-tc"])]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert set(lines[0]) >= {"id", "video", "prompt", "options", "answer"}
    assert lines[1]["answer"] == "F" and lines[1]["video"] == "12k-3-2-1_505_1133.mp4"
    assert lines[1]["options"]["F"] == "watch TV"
    assert "2 items, 0 unreadable records" in err


def test_prepare_cli_reports_problems_and_videos(capsys, tmp_path):
    (tmp_path / "GOOD1.mp4").write_bytes(b"")
    rc = prepare_main(["--task", "charades-ar", "--qa-file", str(DATA / "charades_ar_bad_records.json"),
                       "--video-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["id"], x["video_found"]) for x in lines] == [("GOOD1", True), ("GOOD1#6", True)]
    assert "2 items, 5 unreadable records, 0 missing videos:" in err
    assert "record 1 ('NOGT2'): 'Ground Truth' matches no option" in err
    assert prepare_main(["--task", "charades-ar", "--qa-file", str(DATA / "charades_ar_bad_records.json"),
                         "--strict"]) == 1


def test_prepare_cli_description_and_clips(capsys, tmp_path):
    for i in (1, 2, 10):
        (tmp_path / f"P02T01C07_clip{i}.mp4").write_bytes(b"")
    assert prepare_main(["--task", "tsu-desc", "--qa-file", str(FIXTURES["tsu-desc"]),
                         "--video-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(c).name for c in lines[0]["clips"]] == [f"P02T01C07_clip{i}.mp4" for i in (1, 2, 10)]
    assert lines[0]["video_found"] and not lines[1]["video_found"]
    assert lines[0]["options"] is None and lines[0]["cons_A"] == lines[0]["answer"]
    assert "1 missing videos" in err


def test_prepare_cli_wrong_file(capsys):
    assert prepare_main(["--task", "tsu-tc", "--qa-file", str(FIXTURES["lemma-tc"])]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "TSU-TC" in err
    assert prepare_main(["--task", "nope", "--qa-file", str(FIXTURES["lemma-tc"])]) == 2
    assert "unknown task" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# the combined MCQ format (the release's current evaluation files) and path safety
# ----------------------------------------------------------------------------------------------------------------

MCQ_TASKS = [t for t, info in TASKS.items() if info.kind == "mcq" and info.family == "adlx"]


@pytest.mark.parametrize("task", MCQ_TASKS)
def test_legacy_fixtures_converted_to_the_combined_format_read_the_same(task, tmp_path):
    legacy, _ = load_task(task, FIXTURES[task])
    out = tmp_path / "combined.json"
    from llavidal.cli import main

    assert main(["eval", "convert", "--task", task, "--qa-file", str(FIXTURES[task]), "-o", str(out)]) == 0
    records = json.loads(out.read_text())
    assert isinstance(records, list) and all(set(r) == {"video_filename", "question", "answer_choices",
                                                        "ground_truth_letter"} for r in records)
    items, problems = load_task(task, out)
    assert problems == [] and [i.format for i in items] == ["combined"] * len(legacy)
    assert [i.index for i in items] == list(range(len(legacy)))
    for a, b in zip(legacy, items):
        assert (b.video, b.question, b.options, b.answer, b.prompt) == (a.video, a.question, a.options, a.answer,
                                                                        a.prompt)
        assert a.format == "legacy"


def test_combined_format_handwritten_six_options_extra_keys_and_bad_records(tmp_path, capsys):
    records = [
        {"video_filename": "kitchen/p1_0_90.mp4", "question": "What does the person do next?",
         "answer_choices": {"A": "sit", "B": "walk", "C": "cook", "D": "read", "E": "wash", "F": "sleep"},
         "ground_truth_letter": "F", "video_id": "p1", "source": "lemma"},
        {"video_filename": "kitchen/p2_0_40.mp4", "question": "And then?",
         "answer_choices": {"A": "sit", "B": "walk"}, "ground_truth_letter": "(b)"},
        {"video_filename": "kitchen/p3.mp4", "question": "Bad answer?",
         "answer_choices": {"A": "sit", "B": "walk"}, "ground_truth_letter": "C"},
    ]
    path = tmp_path / "lemma_combined.json"
    path.write_text(json.dumps(records))
    items, problems = load_task("lemma-tc", path)
    assert [i.answer for i in items] == ["F", "B"] and items[0].extra == {"video_id": "p1", "source": "lemma"}
    assert len(problems) == 1 and problems[0].index == 2 and "not one of the options" in problems[0].reason
    assert prepare_main(["--task", "lemma-tc", "--qa-file", str(path)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["index"], x["format"]) for x in lines] == [(0, "combined"), (1, "combined")]


def test_a_file_in_neither_format_is_one_clear_error(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"clip": "a.mp4", "q": "?", "choices": ["x", "y"], "gt": 0}]))
    with pytest.raises(TaskFormatError) as e:
        load_task("tsu-tc", path)
    msg = str(e.value)
    assert str(path) in msg and "combined MCQ format" in msg and "legacy" in msg
    assert "['choices', 'clip', 'gt', 'q']" in msg  # the keys found


@pytest.mark.parametrize("task,record", [
    ("tsu-tc", {"video_filename": "../../etc/passwd.mp4", "question": "q", "answer_choices": {"A": "a", "B": "b"},
                "ground_truth_letter": "A"}),
    ("charades-ar", {"video_filename": "/abs/video.mp4", "question": "q", "answer_choices": {"A": "a", "B": "b"},
                     "ground_truth_letter": "A"}),
    ("tsu-tc", {"video_path": "P01/../../x.mp4", "question": "q", "options": {"A": "a", "B": "b"},
                "correct_answer": "A"}),
])
def test_video_paths_that_leave_the_folder_are_refused_naming_the_record(task, record, tmp_path):
    ok = {"video_filename": "fine.mp4", "question": "q", "answer_choices": {"A": "a", "B": "b"},
          "ground_truth_letter": "A"} if "video_filename" in record else {
        "video_path": "P01/fine.mp4", "question": "q", "options": {"A": "a", "B": "b"}, "correct_answer": "A"}
    path = tmp_path / "b.json"
    path.write_text(json.dumps([ok, record]))
    with pytest.raises(TaskFormatError, match=r"record 1: video path .* leaves the video folder"):
        load_task(task, path)


def test_lemma_video_id_cannot_climb_out_either(tmp_path):
    path = tmp_path / "lemma.json"
    path.write_text(json.dumps({"0": {"video_id": "../secret", "person_id": 1, "question": "q",
                                      "choices": {"A": "a", "B": "b"}, "answer": "A", "start_frame": 0,
                                      "end_frame": 5}}))
    with pytest.raises(TaskFormatError, match=r"record 0 \('0'\): video path '../secret_0_5.mp4'"):
        load_task("lemma-tc", path)


def test_features_are_found_by_relative_path_and_by_name_only_when_unambiguous(tmp_path):
    from llavidal.eval.tasks import find_feature, shared_basenames

    flat = tmp_path / "flat"
    nested = tmp_path / "nested"
    for d, rel in ((flat, "clip_1.pkl"), (flat, "clip_7.pkl"), (nested, "P01/c/clip_1.pkl"),
                   (nested, "P02/c/clip_1.pkl")):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"x")
    videos = ["P01/c/clip_1.mp4", "P02/c/clip_1.mp4", "P03/c/clip_7.mp4"]
    shared = shared_basenames(videos)
    assert shared == {"clip_1.mp4"}
    # nested features: each video its own file
    assert find_feature(nested, videos[0], "clip_1.mp4" not in shared) == nested / "P01/c/clip_1.pkl"
    assert find_feature(nested, videos[1], False) == nested / "P02/c/clip_1.pkl"
    # a flat folder: a shared name is never taken from another video; a unique one is
    assert find_feature(flat, videos[0], by_basename=False) is None
    assert find_feature(flat, videos[2], by_basename=True) == flat / "clip_7.pkl"

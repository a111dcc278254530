"""Reply -> option letter parsing and fixed-denominator accuracy (llavidal.eval.mcq)."""
from __future__ import annotations

from pathlib import Path

import pytest

from llavidal.eval.mcq import (
    McqScore, ParseResult, grade, normalize_text, parse_choice, parse_choice_detailed, parse_item_reply, score_mcq,
)
from llavidal.eval.tasks import load_task

DATA = Path(__file__).parent / "data" / "eval"

SH = {"A": "walk", "B": "sit down", "C": "drinking from cup", "D": "drinking from bottle"}
DRINK = {"A": "sit down", "B": "walk", "C": "eat snack", "D": "drink water"}
SIX = {"A": "wash cup", "B": "cut bread with knife", "C": "put milk in cup", "D": "close drawer",
       "E": "sweep floor with broom", "F": "watch TV"}
TSU = {"A": "Walk", "B": "Make_tea.Insert_tea_bag", "C": "Pour.From_bottle", "D": "Read"}


@pytest.mark.parametrize("reply,letter", [
    ("C", "C"), ("(C)", "C"), ("C.", "C"), ("C)", "C"), ("c", "C"), ("**C**", "C"), ("  (C).</s>", "C"),
    ("[C]", "C"), ("A", "A"), ("A.", "A"),
    ("Answer: C", "C"), ("answer: c.", "C"), ("The answer is (C)", "C"), ("The answer is C.", "C"),
    ("The correct answer is option B", "B"), ("The best answer is: D", "D"),
    ("The answer to the question is D, drinking from bottle.", "D"),
    ("Answer - B", "B"), ("Answer:(B)", "B"),
    ("C) drinking from cup", "C"), ("(C) drinking from cup", "C"), ("C. drinking from cup", "C"),
    ("C: drinking from cup", "C"), ("C - drinking from cup", "C"), ("B sit down", "B"),
    ("A. walk", "A"), ("A) The person walks", "A"), ("A walk", "A"),
    ("I think it is (B).", "B"), ("I would choose D", "D"), ("Option C", "C"), ("My choice: B", "B"),
    ("The answer is C. Option A is wrong.", "C"),  # the answer cue outranks the option marker
    ("The answer is 'C'.", "C"), ('"B"', "B"),
])
def test_letter_replies(reply, letter):
    assert parse_choice(reply, SH) == letter


@pytest.mark.parametrize("reply", [
    "A person is sitting on the floor",  # sentence-initial article, no option text
    "The answer is A person standing",
    "A man holds something",
    "Vitamin-C",
    "C'mon, the person is just standing",  # apostrophe + letters: a word, not a letter
    "Answer: a person walking in",       # lowercase 'a' followed by words is an article
    "To answer this, I watched the video",
    "E", "(F)", "The answer is (E)",     # not among four options
    "",
    "   ",
])
def test_no_letter_from_words(reply):
    assert parse_choice(reply, SH) is None


def test_drink_water_is_not_d():
    # "Drink water" has a capital D inside a word; with no option text it is unparsed, never D
    assert parse_choice("Drink water", SH) is None
    assert parse_choice("Drink water", letters="ABCD") is None
    # when "drink water" IS an option's text, it is found by text, not as the letter D
    assert parse_choice_detailed("Drink water", DRINK) == ParseResult("D", "option-text")
    assert parse_choice("Drinking water from a cup", DRINK) is None  # no option text at word boundaries


def test_sentence_initial_a():
    assert parse_choice("A person is drinking from a bottle.", SH) == "D"   # by text, articles ignored
    assert parse_choice_detailed("A person is walking", SH).method == "unparsed"  # walking != walk: no stemming
    assert parse_choice("A. The person sits down", SH) == "A"    # punctuation: a letter, not an article
    assert parse_choice("The answer is A", SH) == "A"
    assert parse_choice("The answer is A, walk", SH) == "A"


def test_six_options_and_f():
    assert parse_choice("F", SIX) == "F"
    assert parse_choice("The answer is (F)", SIX) == "F"
    assert parse_choice("F. watch TV", SIX) == "F"
    assert parse_choice("The person will most likely watch TV.", SIX) == "F"
    assert parse_choice("E) sweep floor with broom", SIX) == "E"
    assert parse_choice("The answer is (F)", letters="ABCDEF") == "F"
    assert parse_choice("The answer is (F)", letters="ABCD") is None


@pytest.mark.parametrize("reply,letter", [
    ("drinking from cup", "C"),
    ("Drinking From Cup.", "C"),
    ("The person is drinking from a cup in the kitchen.", "C"),
    ("sit-down", "B"),
    ("The person walks to the door and sits down", None),  # "sits" is not "sit"
    ("The person is drinking from cup and then drinking from bottle", None),  # two options -> ambiguous
    ("Nothing in the video matches", None),
])
def test_option_text(reply, letter):
    assert parse_choice(reply, SH) == letter


def test_most_specific_option_text_wins():
    opts = {"A": "walk", "B": "walk to the door", "C": "sit down", "D": "open door"}
    assert parse_choice("The person will walk to the door.", opts) == "B"   # "walk" lies inside "walk to the door"
    assert parse_choice("walk", opts) == "A"
    assert parse_choice("They walk, then walk to the door", opts) is None  # a separate "walk" too: ambiguous
    same = {"A": "walk", "B": "Walk", "C": "sit", "D": "read"}
    assert parse_choice("walk", same) is None  # duplicate texts cannot be told apart


def test_tsu_style_option_names():
    assert parse_choice("make tea, insert tea bag", TSU) == "B"
    assert parse_choice("The person will pour from the bottle", TSU) == "C"
    assert parse_choice("The person pours from the bottle", TSU) is None  # no stemming
    assert parse_choice("Pour.From_bottle", TSU) == "C"


@pytest.mark.parametrize("reply,letter", [
    ("2", "B"), ("2.", "B"), ("2</s>", "B"), ("(2)", "B"), ("2) sit down", "B"), ("2. sit down", "B"),
    ("option 2", "B"), ("The answer is 4", "D"), ("Answer: 3.", "C"), ("Choice number 1", "A"),
    ("2 people are sitting", None), ("2:30 pm", None), ("option 12", None), ("option 2.5", None), ("5", None),
    ("4. Drinking from cup", None),  # the number says D, the text says C: self-contradiction -> ambiguous
])
def test_numbered_options(reply, letter):
    assert parse_choice(reply, SH, numbered=True) == letter


def test_numbers_ignored_without_numbering():
    assert parse_choice("2", SH) is None
    assert parse_choice("option 2", SH) is None
    assert parse_choice("2. sit down", SH) == "B"  # still found by its text


def test_ambiguous_letters():
    assert parse_choice_detailed("(A) walk (B) sit down (C) drinking from cup", SH) == ParseResult(
        None, "ambiguous", ("A", "B", "C"))
    assert parse_choice("Answer: B. Answer: C.", SH) is None
    assert parse_choice("It is either (B) or (C)", SH) is None
    assert parse_choice("(A) sit down", SH) is None  # letter A, text of B
    assert parse_choice("(B) sit down", SH) == "B"   # letter and text agree


def test_option_parts_charades():
    items, _ = load_task("charades-ar", DATA / "charades_ar.json")
    first = items[0]
    reply = "The person is sitting on a sofa/couch, holding a phone/camera and playing with a phone/camera."
    assert parse_item_reply(first, reply) == ParseResult("B", "option-parts")
    assert parse_item_reply(first, "The person is holding a phone/camera.").letter is None  # partial: no answer
    assert parse_item_reply(first, "B").letter == "B"
    assert parse_item_reply(first, "2. Sitting on a sofa").letter == "B"  # numbered task
    lying = items[2]
    assert parse_item_reply(lying, "Lying on a bed").letter == "A"
    # B and C both have all their names mentioned (A is a subset of both): ambiguous
    assert parse_item_reply(lying, "The person is lying on a bed and sneezing.").letter is None
    assert parse_item_reply(lying, "Awakening in bed, lying on a bed, snuggling with a pillow").letter == "D"


def test_parse_item_reply_needs_mcq():
    items, _ = load_task("charades-desc", DATA / "charades_desc.json")
    with pytest.raises(ValueError, match="not a multiple-choice"):
        parse_item_reply(items[0], "A")


def test_normalize_text():
    assert normalize_text("Make_coffee.Pour_water") == "make coffee pour water"
    assert normalize_text("  Taking a cup/glass from THE shelf ") == "taking cup glass from shelf"


def test_grade():
    assert grade("C", "C") == "correct" and grade("C", "c") == "correct"
    assert grade("C", "B") == "wrong" and grade("C", None) == "unparsed"


def test_score_fixed_denominator():
    items, problems = load_task("smarthome-ar", DATA / "smarthome_ar_bad_records.json")
    assert len(items) == 2 and len(problems) == 2
    s = score_mcq(items, {"0": "A"}, missing_videos=["3"], unreadable=problems)
    assert (s.total, s.correct, s.missing_video, s.unreadable, s.not_run) == (4, 1, 1, 2, 0)
    assert s.accuracy == pytest.approx(0.25)

    items, _ = load_task("smarthome-ar", DATA / "smarthome_ar.json")  # answers B, C, D
    s = score_mcq(items, {"0": "B", "1": None})
    assert isinstance(s, McqScore) and s.task == "smarthome-ar"
    assert (s.total, s.correct, s.wrong, s.unparsed, s.not_run) == (3, 1, 0, 1, 1)
    assert s.accuracy == pytest.approx(1 / 3) and s.accuracy_answered == pytest.approx(1.0)
    assert "accuracy 33.33% (1/3)" in str(s) and "unparsed 1" in str(s)
    assert s.as_dict()["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not in the benchmark"):
        score_mcq(items, {"99": "A"})


def test_parse_the_stale_smarthome_outputs():
    # the fixture's stale "output" fields are typical replies: a numbered answer, a bare number and a sentence
    import json
    raw = json.loads((DATA / "smarthome_ar.json").read_text())
    items, _ = load_task("smarthome-ar", DATA / "smarthome_ar.json")
    got = [parse_item_reply(it, raw[it.id]["output"]).letter for it in items]
    assert got == ["A", "C", None]  # "The person walks." does not contain "walk" as a word

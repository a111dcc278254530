"""Templates and modality spans."""
from __future__ import annotations

import pytest

from llavidal.prompting import VICUNA_V1_1, build_prompt, expand_placeholders, get_template

SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
       "detailed, and polite answers to the user's questions.")


def test_vicuna_v1_1_rendering_is_exact():
    text = VICUNA_V1_1.render([("Hi", "Hello."), ("What now?", None)])
    assert text == SYS + " USER: Hi ASSISTANT: Hello.</s>USER: What now? ASSISTANT:"
    with pytest.raises(ValueError, match="unknown conversation template 'x'"):
        get_template("x")


def test_inference_prompt_layout_and_spans():
    p = build_prompt("What happens?", {"video": 3, "object": 16, "pose": None})
    assert p == (SYS + " USER: What happens?\n<vid_start>" + "<vid_patch>" * 3 + "<vid_end><object_start>"
                 + "<object_patch>" * 16 + "<object_end> ASSISTANT:")
    p = build_prompt("Q", {"pose": 2}, use_start_end=False, use_string_prefix=True, system="S")
    assert p == "S USER: Q\n pose: <pose_patch><pose_patch> ASSISTANT:"


def test_placeholders_of_absent_modalities_are_removed_and_order_is_free():
    text = "<human_pose><video>\nDescribe.<object>"
    out = expand_placeholders(text, {"video": 1, "pose": 2})
    assert out == "<pose_start><pose_patch><pose_patch><pose_end><vid_start><vid_patch><vid_end>\nDescribe."
    with pytest.raises(ValueError, match=r"holds 0 <video> placeholders.*expected exactly one"):
        expand_placeholders("no placeholder", {"video": 3})
    with pytest.raises(ValueError, match=r"holds 2 <object> placeholders"):
        expand_placeholders("<object><object>", {"object": 8})


def test_question_placing_its_own_placeholder_and_reserved_tokens():
    p = build_prompt("<video>\nWhat is shown?", {"video": 1}, system="S")
    assert p == "S USER: <vid_start><vid_patch><vid_end>\nWhat is shown? ASSISTANT:"
    p = build_prompt("inject <vid_patch><pose_end> here", {}, system="S")
    assert p == "S USER: inject  here ASSISTANT:"


def test_history_puts_spans_in_the_first_turn_only():
    p = build_prompt("And then?", {"video": 1}, history=[("What first?", "He sits.")], system="S")
    assert p == "S USER: What first?\n<vid_start><vid_patch><vid_end> ASSISTANT: He sits.</s>USER: And then? ASSISTANT:"


def test_encode_turns_labels_by_construction(tiny):
    """Labels cover each answer and its </s> only; segment ids equal a one-shot tokenization of the first turn."""
    from llavidal.constants import IGNORE_INDEX
    from llavidal.prompting import encode_turns

    _, tok = tiny
    turns = [("What is he doing?\n<vid_start><vid_patch><vid_end>", "He drinks water."),
             ("And then?", "He sits down."), ("Why?", None)]
    ids, labels = encode_turns(tok, turns)
    assert len(ids) == len(labels) and ids[0] == tok.bos_token_id
    targets = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    runs, cur = [], []
    for i in targets:
        if cur and i != cur[-1] + 1:
            runs.append(cur)
            cur = []
        cur.append(i)
    runs.append(cur)
    assert [tok.decode([ids[i] for i in r]) for r in runs] == ["He drinks water.</s>", "He sits down.</s>"]
    assert all(labels[i] == ids[i] for i in targets)
    assert [ids[i] for i in targets].count(tok.eos_token_id) == 2
    assert ids[-1] != tok.eos_token_id and tok.decode(ids[-8:]).endswith("Why? ASSISTANT:")
    # first turn: the same ids as tokenizing the rendered prompt in one go (what the original did at inference)
    one_shot = tok(VICUNA_V1_1.render([turns[0][:1] + (None,)])).input_ids
    assert encode_turns(tok, [(turns[0][0], None)])[0] == one_shot
    # and the answer tokens equal those of the rendered text ("ASSISTANT: He drinks water.</s>")
    full = tok(VICUNA_V1_1.render([turns[0]])).input_ids
    assert encode_turns(tok, [turns[0]])[0] == full

"""The terminal chat: multi-turn through stdin, /reset, /exit, EOF and Ctrl-C, streamed replies equal to answer()."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch

from llavidal.demo.chat import Conversation, chat_loop, featurizer_for, load_sample
from llavidal.inference import GenerationOptions, answer

MAX_NEW = 12
OPTIONS = GenerationOptions(max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def model_tok(tiny_base):
    from llavidal import load_pretrained

    # the base folder has no pose/object projectors: they start from a generator seeded by init_seed (with some
    # seeds this random model's reply to turn 2 does not change with the history; the prompt always does, see
    # test_multi_turn_reset_and_exit)
    return load_pretrained(tiny_base, device="cpu", dtype=torch.float32, init_seed=1)


@pytest.fixture(scope="module")
def sample(tiny_base, model_tok):
    s = tiny_base / "samples"
    return {"video": s / "001_video_001.pkl", "pose": s / "001_001_video_001_pose.pickle",
            "object": s / "001_001_video_001_object.pkl"}


class CountingWriter(io.StringIO):
    """stdout that remembers each write, to see that a reply arrives in pieces."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, s):
        self.writes.append(s)
        return super().write(s)


def _run(model_tok, conv, text, options=OPTIONS):
    out, err = CountingWriter(), io.StringIO()
    rc = chat_loop(*model_tok, conv, options, stdin=io.StringIO(text), stdout=out, stderr=err)
    return rc, out, err.getvalue()


def test_multi_turn_reset_and_exit(model_tok, sample, tiny_base):
    model, tok = model_tok
    conv = load_sample(model.config, video=str(sample["video"]), pose=str(sample["pose"]))
    q1, q2, q3 = "What is the person doing?", "Where is the person?", "Never asked."
    feats = dict(video=sample["video"], pose=sample["pose"], max_new_tokens=MAX_NEW)
    a1 = answer(model, tok, q1, **feats)
    a2 = answer(model, tok, q2, history=[(q1, a1)], **feats)
    assert a1 and a2 and a2 != answer(model, tok, q2, **feats)  # turn 2 depends on turn 1
    from llavidal.inference import GenerationOptions, Query, prepare_inputs

    with_turn1, alone = (prepare_inputs(model, tok, [Query(q2, video=sample["video"], history=h)],
                                        GenerationOptions())["input_ids"] for h in (((q1, a1),), ()))
    assert with_turn1.shape[1] > alone.shape[1] and q1 in tok.decode(with_turn1[0])  # the prompt holds turn 1

    rc, out, err = _run(model_tok, conv, f"{q1}\n\n{q2}\n/reset\n{q1}\n/exit\n{q3}\n")
    assert rc == 0
    expected = (f"USER: {q1}\nASSISTANT: {a1}\nUSER: \nUSER: {q2}\nASSISTANT: {a2}\nUSER: /reset\n"
                f"USER: {q1}\nASSISTANT: {a1}\nUSER: /exit\n")
    assert out.getvalue() == expected  # after /reset the same question gets the first-turn reply again
    assert "new conversation" in err and "video [356, 1024]" in err and "pose [256, 216]" in err
    assert conv.history == [(q1, a1)]  # /exit stopped before q3
    # streamed: the first reply was written in several pieces, which together are the non-streamed reply
    start = out.writes.index("ASSISTANT: ")
    pieces = out.writes[start + 1:out.writes.index("\n", start)]
    assert len(pieces) >= 2 and "".join(pieces).strip() == a1


def test_eof_ctrl_c_and_unknown_commands(model_tok, sample):
    model, tok = model_tok
    conv = load_sample(model.config, video=str(sample["video"]))
    rc, out, err = _run(model_tok, conv, "/frobnicate\n/help\n")  # EOF without /exit
    assert rc == 0 and out.getvalue() == "USER: /frobnicate\nUSER: /help\nUSER: \n"
    assert "unknown command /frobnicate" in err and "/reset" in err

    class CtrlC(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    out = io.StringIO()
    assert chat_loop(model, tok, conv, OPTIONS, stdin=CtrlC(), stdout=out, stderr=io.StringIO()) == 0
    assert out.getvalue() == "USER: \n"


def test_long_conversations_drop_the_oldest_turns(model_tok, sample):
    model, tok = model_tok
    conv = load_sample(model.config, video=str(sample["video"]))
    long_turn = ("Describe every detail of the kitchen scene in order. " * 12).strip()
    conv.history = [(f"{i} {long_turn}", long_turn) for i in range(12)]  # far more than 2048 positions
    options = GenerationOptions(max_new_tokens=64)
    dropped = conv.fit(model, tok, "And now?", options)
    assert 0 < dropped < 12 and conv.history[0][0].startswith(f"{dropped} ")  # the oldest went first
    assert conv.fit(model, tok, "And now?", options) == 0  # it fits now

    conv.history = [(f"{i} {long_turn}", long_turn) for i in range(12)]
    rc, out, err = _run(model_tok, conv, "And now?\n", options=options)
    assert rc == 0 and f"dropped the {dropped} oldest turn(s)" in err  # reported, not silent
    assert out.getvalue().count("ASSISTANT: ") == 1 and len(conv.history) == 12 - dropped + 1


def test_sample_errors_are_clear(model_tok, sample, tmp_path):
    from llavidal.features import FeatureError
    from llavidal.video.clip import TinyClipSpec, make_tiny_clip
    from llavidal.video.io import write_video

    model, _ = model_tok
    with pytest.raises(ValueError, match=r"--object .*clip.mp4: expected a object feature file"):
        load_sample(model.config, object=str(write_video(tmp_path / "clip.mp4", np.zeros((2, 16, 16, 3), np.uint8))))
    with pytest.raises(FeatureError, match=r"pose features have shape \[2, 8, 512\]"):
        load_sample(model.config, pose=str(sample["object"]))
    with pytest.raises(ValueError, match=r"a raw video needs a CLIP"):
        load_sample(model.config, video=str(tmp_path / "clip.mp4"))
    narrow = make_tiny_clip(tmp_path / "narrow", spec=TinyClipSpec(vision_hidden_size=64, vision_layers=1))
    with pytest.raises(ValueError, match=r"vision width is 64, but the model's video projector expects 1024"):
        featurizer_for(str(narrow), model.config)
    conv = Conversation()
    with pytest.raises(ValueError, match="unknown modality"):
        conv.set_feature("audio", np.zeros((1, 1)))


def test_chat_command_on_a_raw_video(tiny_base, model_tok, tmp_path, monkeypatch, capsys):
    """``llavidal chat`` as a user runs it: a raw video (features from --clip), questions piped on stdin."""
    from llavidal.cli import main
    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.extract import VideoFeaturizer
    from llavidal.video.io import write_video

    model, tok = model_tok
    clip = make_tiny_clip(tmp_path / "clip")
    rng = np.random.default_rng(3)
    video = write_video(tmp_path / "kitchen.mp4", (rng.random((6, 40, 56, 3)) * 255).astype(np.uint8), fps=6)
    q = "What is the person doing?"
    expected = answer(model, tok, q, video=VideoFeaturizer(str(clip))(video), max_new_tokens=8)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{q}\n/exit\n"))
    rc = main(["chat", "--base", str(tiny_base), "--clip", str(clip), "--video", str(video), "--device", "cpu",
               "--max-new-tokens", "8", "--feature-cache", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out == f"USER: {q}\nASSISTANT: {expected}\nUSER: /exit\n"
    assert (tmp_path / "cache" / "kitchen.pkl").is_file()  # --feature-cache kept the features


def test_chat_command_reports_a_missing_file(tiny_base, capsys):
    from llavidal.cli import main

    assert main(["chat", "--base", str(tiny_base), "--video", "missing.mp4"]) == 2
    assert "--video missing.mp4: no such file" in capsys.readouterr().err


def test_a_reply_outlived_by_a_reset_is_not_kept(model_tok, sample):
    model, tok = model_tok
    conv = load_sample(model.config, video=str(sample["video"]))
    stream = conv.stream(model, tok, "What is the person doing?", OPTIONS)
    next(stream)
    conv.reset()  # e.g. the web user cleared the chat or uploaded another video while the reply streamed in
    rest = list(stream)
    assert rest and conv.history == []
    half = conv.stream(model, tok, "What is the person doing?", OPTIONS)
    next(half)
    half.close()  # abandoned half-way (the browser went away)
    assert conv.history == []

"""Generation: stops at </s> from the tokenizer, batching equals single calls, streaming, seeding, the CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers_generation import chain_model as _chain_model
from llavidal.inference import GenerationOptions, Query, answer, answer_batch, stream_answer

H = 64


def test_generation_stops_at_eos_of_the_tokenizer(tiny, tiny_base):
    model, tok = tiny
    _chain_model(model, tok, ["▁drinks", "▁water"], "▁kitchen")
    feats = np.random.default_rng(0).standard_normal((356, 1024)).astype(np.float32)
    reply = answer(model, tok, "hi", video=feats, max_new_tokens=30)
    assert reply == "drinks water"  # no trailing </s>, no characters stripped off words
    # the same model with the folder's wrong eos id (1) would run on past </s>
    batch = __import__("llavidal.inference", fromlist=["prepare_inputs"]).prepare_inputs(
        model, tok, [Query("hi", video=feats)], GenerationOptions(max_new_tokens=6))
    raw = model.generate(**batch, max_new_tokens=6, eos_token_id=1, pad_token_id=0, do_sample=False)
    assert "kitchen" in tok.decode(raw[0], skip_special_tokens=True)


def test_batched_generation_equals_one_by_one(tiny, rng):
    model, tok = tiny
    v = rng.standard_normal((356, 1024)).astype(np.float16)
    o = rng.standard_normal((3, 8, 512)).astype(np.float32)
    p = rng.standard_normal((256, 216)).astype(np.float32)
    queries = [Query("What is the person doing?", video=v), Query("Describe.", video=v, object=o, pose=p),
               Query("And the objects on the kitchen table?", object=o), Query("Pose?", pose=p[:75])]
    opts = GenerationOptions(max_new_tokens=8)
    batched = answer_batch(model, tok, queries, opts, batch_size=4)
    single = [answer_batch(model, tok, [q], opts)[0] for q in queries]
    assert batched == single
    assert len(set(batched)) > 1  # different inputs, different replies


def test_stream_yields_the_same_reply(tiny, rng):
    model, tok = tiny
    v = rng.standard_normal((356, 1024)).astype(np.float16)
    pieces = list(stream_answer(model, tok, "What happens?", video=v, max_new_tokens=10))
    assert len(pieces) >= 2
    assert "".join(pieces).strip() == answer(model, tok, "What happens?", video=v, max_new_tokens=10)


def test_sampling_is_seedable(tiny, rng):
    model, tok = tiny
    v = rng.standard_normal((356, 1024)).astype(np.float16)
    a = answer(model, tok, "Q", video=v, temperature=1.0, seed=7, max_new_tokens=12)
    b = answer(model, tok, "Q", video=v, temperature=1.0, seed=7, max_new_tokens=12)
    assert a == b
    with pytest.raises(TypeError, match="unknown generation options"):
        answer(model, tok, "Q", video=v, temprature=1.0)


def test_prompt_too_long_is_reported(tiny, rng):
    model, tok = tiny
    v = rng.standard_normal((1900, 1024)).astype(np.float32)
    with pytest.raises(ValueError, match=r"exceeds the model's 2048 positions"):
        answer(model, tok, "Q", video=v, max_new_tokens=512)


def test_cli_make_tiny_and_infer_every_modality(tmp_path, capsys):
    from llavidal.cli import main

    base = tmp_path / "tiny"
    assert main(["make-tiny", str(base), "--seed", "3"]) == 0
    s = base / "samples"
    code = main(["infer", "--base", str(base), "--video", str(s / "001_video_001.pkl"),
                 "--object", str(s / "001_001_video_001_object.pkl"), "--pose", str(s / "001_001_video_001_pose.pickle"),
                 "-q", "What is the person doing?", "--max-new-tokens", "6", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["modalities"] == ["video", "object", "pose"] and isinstance(out["answer"], str) and out["answer"]


def test_cli_errors_are_clear(tmp_path, tiny_base, capsys):
    from llavidal.cli import main

    np.save(tmp_path / "bad.npy", np.zeros((216, 256), dtype=np.float32))
    code = main(["infer", "--base", str(tiny_base), "--pose", str(tmp_path / "bad.npy"), "-q", "Q"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.npy: pose features have shape [216, 256], expected [N, 216]" in err
    assert main(["infer", "--base", str(tiny_base), "--video", str(tmp_path / "clip.mp4"), "-q", "Q"]) == 2
    assert "clip.mp4: no such file" in capsys.readouterr().err
    (tmp_path / "real.mp4").write_bytes(b"\x00" * 64)  # a raw video needs a CLIP; the hub is offline in tests
    assert main(["infer", "--base", str(tiny_base), "--video", str(tmp_path / "real.mp4"), "-q", "Q"]) == 2
    assert "hub is offline" in capsys.readouterr().err


def test_console_entry_points():
    r = subprocess.run([sys.executable, "-m", "llavidal", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "make-tiny" in r.stdout and "infer" in r.stdout
    exe = shutil.which("llavidal")
    if exe is None:
        pytest.skip("package not installed (pip install -e .): no llavidal console script on PATH")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("llavidal ")


def test_option_logprobs_equal_a_direct_computation(tiny, rng):
    from llavidal.inference import option_logprobs, prepare_inputs

    model, tok = tiny
    v = rng.standard_normal((12, 1024)).astype(np.float32)
    options = ["He drinks water.", "He reads a book in the kitchen.", "Sits."]
    got = option_logprobs(model, tok, Query("What?", video=v), options)
    prompt = prepare_inputs(model, tok, [Query("What?", video=v)], GenerationOptions(max_new_tokens=0))
    for opt, value in zip(options, got):
        ans = tok(opt + "</s>", add_special_tokens=False).input_ids
        ids = torch.cat([prompt["input_ids"], torch.tensor([ans])], dim=1)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids, video_features=prompt["video_features"]).logits[0].float(), -1)
        n = prompt["input_ids"].shape[1]
        expect = sum(logp[n - 1 + j, t].item() for j, t in enumerate(ans))
        assert value == pytest.approx(expect, abs=1e-4)


def test_closing_the_stream_stops_generation(tiny):
    """A consumer that stops reading (a web client gone, a chat reset) ends the generation at the next token."""
    import time

    model, tok = tiny
    calls = []
    original = model.forward

    def counting_forward(*a, **k):
        calls.append(time.perf_counter())
        return original(*a, **k)

    model.forward = counting_forward
    video = np.zeros((4, 1024), np.float32)
    full = "".join(stream_answer(model, tok, "Describe the video.", video=video, max_new_tokens=120))
    assert full and len(calls) >= 100  # read to the end, this reply runs (nearly) to the limit
    calls.clear()
    gen = stream_answer(model, tok, "Describe the video.", video=video, max_new_tokens=120)
    next(gen)
    gen.close()  # joins the generation thread
    n = len(calls)
    assert n < 30, f"generation went on for {n} forward passes after the stream was closed"
    time.sleep(0.2)
    assert len(calls) == n


@pytest.mark.parametrize("pieces", [
    ["  \n", " Hello", " world", "\n", " \t"],
    ["Hello", "\n\n", " again", " ", ""],
    [" ", "", "\n"],
    ["a ", " b", "  "],
    [],
])
def test_streamed_pieces_join_to_the_stripped_reply(pieces):
    """Whitespace that answer() strips never reaches a stream: leading dropped, trailing held until text follows."""
    from llavidal.inference import _Trim

    trim = _Trim()
    out = [t for t in map(trim, pieces) if t]
    assert "".join(out) == "".join(pieces).strip()
    assert all(out)  # no empty pieces


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_streamed_text_joins_to_the_decoding_of_the_whole_reply(family, tmp_path):
    """Random id sequences (byte-fallback pieces that form invalid runs, words after newlines, special and added
    tokens in between) fed to the stream's detokenizer a few ids at a time: the pieces join to exactly what decoding
    all the ids at once gives, stripped — the text answer() returns. TextStreamer's chunked decoding failed this."""
    from llavidal.inference import _TextPieces
    from llavidal.model.base import load_tokenizer
    from llavidal.model.tiny import make_tiny

    tok = load_tokenizer(make_tiny(tmp_path / family, seed=0, family=family))
    rng = np.random.default_rng(7)
    for _ in range(400):
        ids = rng.integers(0, len(tok), size=int(rng.integers(1, 40))).tolist()
        text, out, i = _TextPieces(tok), [], 0
        while i < len(ids):
            n = int(rng.integers(1, 4))
            out += text.put(ids[i:i + n])
            i += n
        out += text.end()
        assert "".join(out) == tok.decode(ids, skip_special_tokens=True).strip(), tok.convert_ids_to_tokens(ids)
        assert all(out)

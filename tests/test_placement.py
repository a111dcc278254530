"""Small-GPU loading: --load-in-8bit/--load-in-4bit (bitsandbytes) and --device-map, with their error paths."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from llavidal.inference import answer
from llavidal.model.placement import PlacementError, check_bitsandbytes, parse_max_memory


def _video():
    return np.random.default_rng(0).standard_normal((356, 1024)).astype(np.float16)


def test_missing_bitsandbytes_is_a_clear_error_before_loading(tiny_base, monkeypatch, capsys):
    from llavidal.cli import main

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(PlacementError, match=r"--load-in-4bit needs the bitsandbytes package: pip install "
                                             r"'llavidal\[quant\]'"):
        check_bitsandbytes("4bit", torch.device("cpu"))
    code = main(["infer", "--base", str(tiny_base), "-q", "Q", "--load-in-8bit", "--device", "cpu"])
    assert code == 2 and "--load-in-8bit needs the bitsandbytes package" in capsys.readouterr().err


def test_a_device_bitsandbytes_cannot_run_is_named():
    pytest.importorskip("bitsandbytes")
    with pytest.raises(PlacementError, match=r"--load-in-4bit: bitsandbytes .* cannot run 4bit weights on meta"):
        check_bitsandbytes("4bit", torch.device("meta"))


def test_max_memory_spec():
    assert parse_max_memory("0=6GiB, cpu=48GiB") == {0: "6GiB", "cpu": "48GiB"}
    assert parse_max_memory("cuda:1=10GB") == {1: "10GB"}
    with pytest.raises(PlacementError, match="expected DEVICE=SIZE pairs"):
        parse_max_memory("lots")


def test_device_map_auto_answers_like_the_plain_load(tiny_base, capsys):
    from llavidal import load_pretrained
    from llavidal.cli import main

    torch.manual_seed(0)  # a base folder's object/pose projectors are drawn from the global generator
    plain, tok = load_pretrained(tiny_base, device="cpu")
    torch.manual_seed(0)
    mapped, _ = load_pretrained(tiny_base, device="cpu", device_map="auto")
    v = _video()
    assert answer(mapped, tok, "What?", video=v, max_new_tokens=12) == answer(plain, tok, "What?", video=v,
                                                                             max_new_tokens=12)
    samples = tiny_base / "samples"
    assert main(["infer", "--base", str(tiny_base), "--device", "cpu", "--device-map", "auto", "--max-memory",
                 "cpu=8GiB", "--video", str(samples / "001_video_001.pkl"), "-q", "Q", "--max-new-tokens", "4",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"]


@pytest.fixture(scope="module")
def base_for_4bit(tmp_path_factory):
    """bitsandbytes' CPU 4-bit kernels need output widths divisible by 32 (LLaMA-7B's are; the default tiny
    model's MLP width, 172, is not)."""
    from llavidal.model.tiny import TinySpec, make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny4") / "base", spec=TinySpec(intermediate_size=192))


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_quantized_load_keeps_projectors_and_answers(base_for_4bit, kind):
    bnb = pytest.importorskip("bitsandbytes")
    from llavidal import load_pretrained

    torch.manual_seed(0)  # a base folder's object/pose projectors are drawn from the global generator
    plain, tok = load_pretrained(base_for_4bit, device="cpu")
    torch.manual_seed(0)
    q, _ = load_pretrained(base_for_4bit, device="cpu", quantization=kind)
    layer = q.model.layers[0].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if kind == "8bit" else bnb.nn.Linear4bit)
    for name in ("lm_head", "model.mm_projector", "model.mm_projector_forobject", "model.mm_projector_forpose"):
        mod = q.get_submodule(name)
        assert type(mod) is torch.nn.Linear and torch.equal(mod.weight, plain.get_submodule(name).weight)
    assert q.get_memory_footprint() < plain.get_memory_footprint()
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        diff = (q(ids).logits - plain(ids).logits).abs().max().item()
    assert 0 < diff < 1.0  # quantized: close, not equal
    reply = answer(q, tok, "What?", video=_video(), max_new_tokens=6)
    assert isinstance(reply, str) and reply

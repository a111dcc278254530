"""The vLLM backend without vLLM (tests/test_vllm_real.py runs a real one): the exported LLaMA backbone and the prompt
embeddings that vLLM is fed reproduce our engine's greedy replies when run by transformers' plain LlamaForCausalLM;
sampling parameters; the clear errors when vllm is not installed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llavidal.engine import Engine, EngineConfig
from llavidal.engine.vllm_backend import (
    VllmUnavailable, backbone_vocab, export_backbone, prompt_embeds, require_vllm, sampling_kwargs,
)
from llavidal.inference import GenerationOptions, Query, make_request


def _requests(model, tok, opts):
    rng = np.random.default_rng(3)
    v = rng.standard_normal((356, 1024)).astype(np.float16)
    o = rng.standard_normal((2, 8, 512)).astype(np.float32)
    p = rng.standard_normal((256, 216)).astype(np.float32)
    queries = [Query("What is the person doing?", video=v), Query("Describe.", video=v, object=o, pose=p),
               Query("Which objects?", object=o)]
    return [make_request(model, tok, q, opts) for q in queries]


def test_backbone_and_prompt_embeds_reproduce_the_engine(tiny, tmp_path):
    from transformers import LlamaForCausalLM

    model, tok = tiny
    opts = GenerationOptions(max_new_tokens=16)
    want = [r.token_ids for r in Engine(model, tok, EngineConfig(max_batch_size=3)).generate(
        _requests(model, tok, opts))]
    out = export_backbone(model, tok, tmp_path / "backbone", source="tiny")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == len(tok) - 9 and cfg["eos_token_id"] == 2
    llama = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert "mm_projector" not in " ".join(n for n, _ in llama.named_parameters())
    for request, tokens in zip(_requests(model, tok, opts), want):
        embeds = prompt_embeds(model, request)  # [L, H], what vLLM gets as {"prompt_embeds": ...}
        assert embeds.shape == (len(request.input_ids), model.config.hidden_size)
        with torch.inference_mode():
            got = llama.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                                 max_new_tokens=16, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)[0].tolist()
        assert got[:len(tokens)] == tokens and (len(got) == len(tokens) or got[len(tokens)] == tok.eos_token_id)


def test_export_is_reused_for_the_same_source_only(tiny, tmp_path):
    model, tok = tiny
    out = export_backbone(model, tok, tmp_path / "b", source="a")
    shard = next(out.glob("*.safetensors"))
    stamp = shard.stat().st_mtime_ns
    export_backbone(model, tok, out, source="a")
    assert shard.stat().st_mtime_ns == stamp
    export_backbone(model, tok, out, source="b")
    assert next(out.glob("*.safetensors")).stat().st_mtime_ns != stamp


def test_modality_tokens_must_be_the_last_rows(tiny, monkeypatch):
    model, _ = tiny
    assert backbone_vocab(model) == model.config.vocab_size - 9
    monkeypatch.setattr(model, "never_generated_token_ids", lambda: [5, *range(model.config.vocab_size - 8,
                                                                               model.config.vocab_size)])
    with pytest.raises(ValueError, match="not the last rows"):
        backbone_vocab(model)


def test_sampling_parameters():
    from llavidal.engine import GenerationRequest

    greedy = sampling_kwargs(GenerationRequest([1, 2], max_new_tokens=7), eos_id=2)
    assert greedy == {"max_tokens": 7, "stop_token_ids": [2], "detokenize": False, "repetition_penalty": 1.0,
                      "temperature": 0.0}
    sampled = sampling_kwargs(GenerationRequest([1], max_new_tokens=3, temperature=0.7, top_p=0.9, seed=5), 2)
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9 and sampled["seed"] == 5


def test_missing_vllm_is_a_clear_error(tiny_base, tmp_path, monkeypatch, capsys):
    from llavidal.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(VllmUnavailable, match="pip install vllm"):
        require_vllm()
    qa = Path(__file__).parent / "data" / "eval" / "charades_ar.json"
    code = main(["eval", "run", "--task", "charades-ar", "--qa-file", str(qa), "--base", str(tiny_base),
                 "--output", str(tmp_path / "out"), "--backend", "vllm"])
    assert code == 2 and "--backend vllm needs the vllm package" in capsys.readouterr().err
    code = main(["serve", "--base", str(tiny_base), "--port", "0", "--backend", "vllm"])
    assert code == 2 and "--backend vllm needs the vllm package" in capsys.readouterr().err

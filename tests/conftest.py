"""Shared fixtures: one tiny LLaVA-Lightening-style base folder per session, built offline."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from llavidal.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "base", seed=0)


@pytest.fixture
def tiny(tiny_base):
    """A fresh (model, tokenizer) on CPU in fp32; tests may modify it."""
    from llavidal import load_pretrained

    return load_pretrained(tiny_base, device="cpu", dtype=torch.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def ids_for(tokenizer, names):
    return [tokenizer.convert_tokens_to_ids(n) for n in names]

"""Seeded inputs of the numerical-parity check (docs/parity.md): weights, features and token ids.

Everything here comes from ``numpy.random.default_rng`` (PCG64, whose streams numpy keeps stable across releases)
and plain numpy arithmetic, so the reference figures in ``tests/data/parity_reference.json`` can be reproduced
bit for bit without storing any weights and without depending on how torch or transformers initialise a model.

The pieces:

* :func:`llama_state` - every tensor of the tiny LLaMA base folder (``make_tiny`` sizes: hidden 64, 2 layers,
  4 heads, intermediate 172, vocab 1003 = 1000 sentencepiece pieces + the 3 LLaVA tokens), plus the base folder's
  ``model.mm_projector``. The test writes them over the shards of a ``make_tiny`` folder, keeping its layout.
* :func:`projector_state` - a projector file in the original key layout (current 9-token vocabulary, 1012 rows),
  whose base rows equal the base folder's embedding rows (the original loads the whole matrix, we load the added
  rows by name; equal base rows make both see the same embeddings).
* :func:`case_inputs` - token ids and per-sample features of each case.
* :func:`probe_positions` / :data:`PROBE_VOCAB` - where the pinned logits are read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- sizes (make_tiny's TinySpec)
HIDDEN = 64
INTERMEDIATE = 172
LAYERS = 2
HEADS = 4
SP_VOCAB = 1000
BASE_VOCAB = 1003  # + <im_patch> <im_start> <im_end>
VIDEO_DIM, OBJECT_DIM, POSE_DIM = 1024, 512, 216
VIDEO_ROWS, POSE_ROWS, OBJECT_FRAMES = 356, 256, 8

# The current layout: 9 added tokens after the base vocabulary, in this id order (1003..1011).
ADDED = ("<vid_patch>", "<object_patch>", "<pose_patch>", "<vid_start>", "<vid_end>",
         "<object_start>", "<object_end>", "<pose_start>", "<pose_end>")
TOKEN_IDS = {name: BASE_VOCAB + i for i, name in enumerate(ADDED)}
VOCAB = BASE_VOCAB + len(ADDED)  # 1012
BOS = 1

SEED_LLAMA = 20240
SEED_PROJECTOR = 20241
SEED_INPUTS = 20242

# 32 vocabulary ids whose logits are pinned: unk/bos/eos, a spread of sentencepiece pieces, the LLaVA tokens and
# every added modality token.
PROBE_VOCAB = (0, 1, 2, 3, 13, 29, 64, 100, 128, 200, 257, 300, 333, 400, 500, 512, 640, 777, 900, 999,
               1000, 1001, 1002) + tuple(range(1003, 1012))


def _normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float64) * std).astype(np.float32)


def llama_state(seed: int = SEED_LLAMA) -> dict[str, np.ndarray]:
    """All tensors of the tiny base folder, float32, under their checkpoint names.

    Scales are chosen so that the logits are of order one (std about 2), which makes 1e-4 a strict tolerance.
    """
    rng = np.random.default_rng(seed)
    h, f = HIDDEN, INTERMEDIATE
    sd: dict[str, np.ndarray] = {"model.embed_tokens.weight": _normal(rng, (BASE_VOCAB, h), 0.5)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{name}.weight"] = _normal(rng, (h, h), h ** -0.5)
        sd[p + "mlp.gate_proj.weight"] = _normal(rng, (f, h), h ** -0.5)
        sd[p + "mlp.up_proj.weight"] = _normal(rng, (f, h), h ** -0.5)
        sd[p + "mlp.down_proj.weight"] = _normal(rng, (h, f), f ** -0.5)
        sd[p + "input_layernorm.weight"] = 1.0 + _normal(rng, (h,), 0.1)
        sd[p + "post_attention_layernorm.weight"] = 1.0 + _normal(rng, (h,), 0.1)
    sd["model.norm.weight"] = 1.0 + _normal(rng, (h,), 0.1)
    sd["lm_head.weight"] = _normal(rng, (BASE_VOCAB, h), 0.25)
    # LLaVA's image projector in the base folder: it initialises the video projector and must be overridden by
    # the projector file (so it differs from the file's).
    sd["model.mm_projector.weight"] = _normal(rng, (h, VIDEO_DIM), 0.5 * VIDEO_DIM ** -0.5)
    sd["model.mm_projector.bias"] = _normal(rng, (h,), 0.1)
    return sd


def projector_state(base_embed: np.ndarray, seed: int = SEED_PROJECTOR) -> dict[str, np.ndarray]:
    """A projector file in the original layout: three projectors and a 1012-row ``model.embed_tokens.weight``
    whose first 1003 rows are ``base_embed`` and whose 9 added rows are seeded."""
    if base_embed.shape != (BASE_VOCAB, HIDDEN):
        raise ValueError(f"base embedding has shape {base_embed.shape}, expected {(BASE_VOCAB, HIDDEN)}")
    rng = np.random.default_rng(seed)
    sd = {}
    for key, dim in (("mm_projector", VIDEO_DIM), ("mm_projector_forobject", OBJECT_DIM),
                     ("mm_projector_forpose", POSE_DIM)):
        sd[f"model.{key}.weight"] = _normal(rng, (HIDDEN, dim), 0.5 * dim ** -0.5)
        sd[f"model.{key}.bias"] = _normal(rng, (HIDDEN,), 0.2)
    added = _normal(rng, (len(ADDED), HIDDEN), 0.5)
    sd["model.embed_tokens.weight"] = np.concatenate([base_embed.astype(np.float32), added], axis=0)
    return sd


# ----------------------------------------------------------------------------- cases
@dataclass
class Sample:
    """One prompt and its features; ``objects`` is [n, 8, 512] (object-major), ``video`` float16 like the files."""

    ids: np.ndarray  # int64 [L]
    video: np.ndarray | None = None  # float16 [356, 1024]
    objects: np.ndarray | None = None  # float32 [n, 8, 512]
    pose: np.ndarray | None = None  # float32 [256, 216]


def _span(name: str, n: int) -> list[int]:
    return [TOKEN_IDS[f"<{name}_start>"]] + [TOKEN_IDS[f"<{name}_patch>"]] * n + [TOKEN_IDS[f"<{name}_end>"]]


def _text(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(3, SP_VOCAB, size=n).tolist()


def _video(rng):
    return (rng.standard_normal((VIDEO_ROWS, VIDEO_DIM)) * 0.5).astype(np.float16)


def _objects(rng, n):
    return (rng.standard_normal((n, OBJECT_FRAMES, OBJECT_DIM)) * 0.3).astype(np.float32)


def _pose(rng):
    return rng.standard_normal((POSE_ROWS, POSE_DIM)).astype(np.float32)


def case_inputs(case: str, seed: int = SEED_INPUTS) -> list[Sample]:
    """The samples of a case; all samples of a case have the same length (the original cannot pad).

    * ``"all"``: video, object and pose spans with text before, between and after; sample 0 has 2 objects,
      sample 1 has 1 object and its text is distributed differently (spans at other positions). L = 657.
    * ``"video"``: a video span only, text before and after, 2 samples. L = 387.
    """
    rng = np.random.default_rng([seed, {"all": 0, "video": 1}[case]])
    samples = []
    if case == "all":
        # text lengths before / between video-object / between object-pose / after, and the object count
        for (a, b, c, d), n_obj in (((10, 3, 3, 6), 2), ((14, 5, 4, 7), 1)):
            ids = ([BOS] + _text(rng, a) + _span("vid", VIDEO_ROWS) + _text(rng, b)
                   + _span("object", OBJECT_FRAMES * n_obj) + _text(rng, c) + _span("pose", POSE_ROWS)
                   + _text(rng, d))
            samples.append(Sample(np.asarray(ids, dtype=np.int64), _video(rng), _objects(rng, n_obj), _pose(rng)))
    elif case == "video":
        for a, d in ((20, 8), (12, 16)):
            ids = [BOS] + _text(rng, a) + _span("vid", VIDEO_ROWS) + _text(rng, d)
            samples.append(Sample(np.asarray(ids, dtype=np.int64), _video(rng)))
    else:
        raise ValueError(f"unknown case {case!r}")
    if len({len(s.ids) for s in samples}) != 1:
        raise AssertionError("samples of a case must have one length")
    return samples


CASES = ("all", "video")


def probe_positions(ids: np.ndarray) -> list[int]:
    """Positions whose logits are pinned: the first token, each span's start, first patch, middle patch, last
    patch, end and the token after it, and the last 8 positions. Sorted, unique."""
    ids = np.asarray(ids)
    L = len(ids)
    pos = {0, 1}
    for name in ("vid", "object", "pose"):
        (start,) = np.nonzero(ids == TOKEN_IDS[f"<{name}_start>"])[0][:1].tolist() or (None,)
        if start is None:
            continue
        (end,) = np.nonzero(ids == TOKEN_IDS[f"<{name}_end>"])[0][:1].tolist()
        pos.update({start, start + 1, (start + end) // 2, end - 1, end, min(end + 1, L - 1)})
    pos.update(range(L - 8, L))
    return sorted(pos)

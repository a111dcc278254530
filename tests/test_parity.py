"""Numerical parity with the original LLAVIDAL implementation (docs/parity.md).

The reference figures in ``tests/data/parity_reference.json`` were measured once by running the original code
(commit 7368801, outside this repository) on the same seeded weights and inputs; this test recomputes them with
our model and requires agreement within 1e-4 (fp32, both eager and sdpa attention).

Weights: a ``make_tiny(seed=0)`` folder whose weight shards are rewritten (same shard files and keys) with the
numpy-seeded tensors of :mod:`parity_inputs`, so that the figures depend neither on torch's RNG nor on how a
transformers release initialises a LLaMA. The projector file is written in the original key layout.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import parity_inputs as P  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "parity_reference.json"
TOL = 1e-4


# ----------------------------------------------------------------------------- building the weights
def write_seeded_base(folder: Path) -> None:
    """Replace the weights of a make_tiny folder by the seeded ones, keeping its sharded ``.bin`` layout."""
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    weight_map: dict[str, str] = index["weight_map"]
    state = P.llama_state()
    if set(weight_map) != set(state):
        raise AssertionError(f"make_tiny's weights changed: only in folder {sorted(set(weight_map) - set(state))}, "
                             f"only in parity_inputs {sorted(set(state) - set(weight_map))}")
    cfg = json.loads((folder / "config.json").read_text())
    sizes = {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                 "vocab_size")}
    want = {"hidden_size": P.HIDDEN, "intermediate_size": P.INTERMEDIATE, "num_hidden_layers": P.LAYERS,
            "num_attention_heads": P.HEADS, "vocab_size": P.BASE_VOCAB}
    if sizes != want:
        raise AssertionError(f"make_tiny's sizes changed: {sizes}, parity inputs need {want}")
    for shard in sorted(set(weight_map.values())):
        part = {k: torch.from_numpy(state[k]).contiguous() for k, s in weight_map.items() if s == shard}
        torch.save(part, folder / shard)
    total = sum(v.nbytes for v in state.values())
    index["metadata"] = {"total_size": total}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def write_projector(path: Path) -> Path:
    """The seeded projector file in the original layout (torch-pickled state dict, 1012-row embed_tokens)."""
    base_embed = P.llama_state()["model.embed_tokens.weight"]
    torch.save({k: torch.from_numpy(v) for k, v in P.projector_state(base_embed).items()}, path)
    return path


def run_ours(model, case: str) -> np.ndarray:
    """Our logits [B, L, 1012] (float32) for a parity case: per-sample feature lists, packed by the model."""
    samples = P.case_inputs(case)
    ids = torch.from_numpy(np.stack([s.ids for s in samples]))
    feats = {}
    if samples[0].video is not None:
        feats["video_features"] = [torch.from_numpy(s.video) for s in samples]  # float16, as in the files
    if samples[0].objects is not None:
        feats["object_features"] = [torch.from_numpy(s.objects) for s in samples]  # [n, 8, 512] each
    if samples[0].pose is not None:
        feats["pose_features"] = [torch.from_numpy(s.pose) for s in samples]
    with torch.no_grad():
        return model(input_ids=ids, **feats).logits.float().numpy()


def figures(logits: np.ndarray, case: str) -> dict:
    """The pinned figures of one case, computed from full logits [B, L, V]."""
    samples = P.case_inputs(case)
    vocab = list(P.PROBE_VOCAB)
    out = {"positions": [], "vocab_ids": vocab, "logits": [], "row_mean": [], "mean": [], "mean_abs": []}
    for b, s in enumerate(samples):
        pos = P.probe_positions(s.ids)
        lg = logits[b].astype(np.float64)
        out["positions"].append(pos)
        out["logits"].append(lg[np.ix_(pos, vocab)].tolist())
        out["row_mean"].append(lg.mean(axis=1).tolist())  # mean over the vocabulary at every position
        out["mean"].append(float(lg.mean()))
        out["mean_abs"].append(float(np.abs(lg).mean()))
    return out


def abs_sum(state: dict[str, np.ndarray]) -> float:
    """A fingerprint of a seeded state dict: the sum of the absolute values of all its tensors."""
    return float(sum(np.abs(v.astype(np.float64)).sum() for v in state.values()))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def parity_files(request, tmp_path_factory):
    """A copy of the session's make_tiny(seed=0) folder (conftest's ``tiny_base``, else a fresh one) with the seeded
    weights written over its shards, and the seeded projector file."""
    root = tmp_path_factory.mktemp("parity")
    base = root / "base"
    try:
        shutil.copytree(request.getfixturevalue("tiny_base"), base)
    except pytest.FixtureLookupError:
        from llavidal.model.tiny import make_tiny

        make_tiny(base, seed=0)
    write_seeded_base(base)
    return base, write_projector(root / "projector.bin")


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


def _load(parity_files, attn: str):
    from llavidal import load_pretrained

    base, projector = parity_files
    model, tok = load_pretrained(base, projector=projector, device="cpu", dtype=torch.float32,
                                 attn_implementation=attn)
    return model, tok


def _compare(got: dict, ref: dict, what: str) -> None:
    assert got["positions"] == ref["positions"], f"{what}: probe positions differ (inputs changed?)"
    assert got["vocab_ids"] == ref["vocab_ids"]
    for key in ("logits", "row_mean", "mean", "mean_abs"):
        for b, (mine, theirs) in enumerate(zip(got[key], ref[key], strict=True)):  # per sample
            x, y = np.asarray(mine, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
            assert x.shape == y.shape, f"{what}/{key}[{b}]: shape {x.shape} vs reference {y.shape}"
            diff = float(np.abs(x - y).max())
            assert diff < TOL, (f"{what}/{key}[{b}]: max abs diff {diff:.3g} to the original's figures "
                                f"(tolerance {TOL})")


# ----------------------------------------------------------------------------- tests
def test_inputs_are_the_measured_ones(reference):
    """The numpy generators still produce the inputs the reference was measured on."""
    sd = P.llama_state()
    proj = P.projector_state(sd["model.embed_tokens.weight"])
    fp = reference["fingerprints"]
    assert abs_sum(sd) == pytest.approx(fp["llama_abs_sum"], abs=1e-3)
    assert abs_sum(proj) == pytest.approx(fp["projector_abs_sum"], abs=1e-3)
    for case in P.CASES:
        samples = P.case_inputs(case)
        assert [s.ids.tolist() for s in samples] == reference["cases"][case]["input_ids"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_original(parity_files, reference, attn):
    model, tok = _load(parity_files, attn)
    # the layout the reference was measured with: the 9 added tokens at 1003..1011 in the original's order
    assert {t: tok.convert_tokens_to_ids(t) for t in P.ADDED} == P.TOKEN_IDS
    for case in P.CASES:
        logits = run_ours(model, case)
        ref = reference["cases"][case]
        assert list(logits.shape) == ref["shape"]
        _compare(figures(logits, case), ref, f"{case}/{attn}")


def test_parity_check_notices_a_dropped_bias(parity_files, reference):
    """The comparison is strict enough to see a projector that lost its bias."""
    model, _ = _load(parity_files, "eager")
    with torch.no_grad():
        model.get_model().mm_projector_forpose.bias.zero_()
    with pytest.raises(AssertionError, match="max abs diff"):
        _compare(figures(run_ours(model, "all"), "all"), reference["cases"]["all"], "all/no-pose-bias")

"""Checks of what a user brings before it becomes a model: config.json, tokenizer files, weight files.

Each check raises :class:`CheckpointError` with a message that names the file, the field and what was expected, so
that a broken folder ends in one clear sentence instead of a traceback from inside a library or, worse, a model
that loads and silently answers nothing (a missing ``tokenizer.model`` makes transformers build a 15-token
tokenizer; NaN projector weights make every reply empty).
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be used; the message names the file and what was expected."""


# LLaMA fields a base config.json must carry (positive integers); the rest have sound defaults.
REQUIRED_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# An embedding may hold a few more rows than the tokenizer has tokens (vocabularies padded to a multiple of 64 or
# 128 for fast kernels); more than this means tokenizer and weights do not belong together.
MAX_PADDING_ROWS = 256
PROBE_TEXT = "The person picks up a cup and drinks water in the kitchen."


# ==================================================================== config.json
def check_config_dict(cfg, path: str | os.PathLike) -> dict:
    """``cfg`` (parsed config.json) must be an object; returns it."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object of model settings (hidden_size, num_hidden_layers, "
                              f"...), got a JSON {type(cfg).__name__}")
    return cfg


def check_base_config(cfg: dict, path: str | os.PathLike) -> None:
    """A base folder's config.json must describe a LLaMA model: the required sizes present and consistent."""
    missing = [k for k in REQUIRED_CONFIG_FIELDS if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)}; a LLaMA config.json needs "
                              f"{', '.join(REQUIRED_CONFIG_FIELDS)} (positive integers)")
    for k in REQUIRED_CONFIG_FIELDS + ("num_key_value_heads", "vocab_size", "max_position_embeddings"):
        v = cfg.get(k)
        if v is None and k not in REQUIRED_CONFIG_FIELDS:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise CheckpointError(f"{path}: {k} is {v!r}; expected a positive integer")
    if cfg.get("head_dim") is None and cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise CheckpointError(f"{path}: hidden_size {cfg['hidden_size']} is not divisible by num_attention_heads "
                              f"{cfg['num_attention_heads']}")


# ==================================================================== weight files
def check_torch_file(path: Path) -> None:
    """A ``.bin/.pt`` file must be what ``torch.save`` writes: a zip archive, or (legacy format) a pickle."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e}") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); expected a torch checkpoint written by torch.save")
    if not (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or zipfile.is_zipfile(path)):
        raise CheckpointError(f"{path}: not a torch checkpoint (expected the zip archive or pickle that torch.save "
                              f"writes; the file starts with {head!r})")


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """``{name: number of NaN/inf values}`` over the floating-point tensors of ``state``."""
    bad = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            n = int((~torch.isfinite(v)).sum())
            if n:
                bad[k] = n
    return bad


def check_finite(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Weights with NaN/inf make every forward NaN (and every reply empty): refuse them at load."""
    bad = nonfinite_tensors(state)
    if bad:
        listed = ", ".join(f"{k} ({n} values)" for k, n in list(bad.items())[:4])
        more = f" and {len(bad) - 4} more tensors" if len(bad) > 4 else ""
        raise CheckpointError(f"{source}: weights hold NaN/inf values: {listed}{more}; expected finite numbers "
                              "(a diverged training run or a corrupt file?)")


def check_model_finite(model: torch.nn.Module, source: str | os.PathLike) -> None:
    check_finite({n: p.detach() for n, p in model.named_parameters()}, source)


# ==================================================================== tokenizer
def check_tokenizer_files(folder: Path, sentencepiece: bool) -> None:
    """Before transformers sees the folder: a sentencepiece (LLaMA) tokenizer needs a readable ``tokenizer.model``
    (or a ``tokenizer.json``); without one transformers quietly builds a tokenizer of a handful of tokens."""
    model_file, json_file = folder / "tokenizer.model", folder / "tokenizer.json"
    if model_file.is_file():
        import sentencepiece as spm

        try:
            spm.SentencePieceProcessor().LoadFromSerializedProto(model_file.read_bytes())
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"{model_file}: not a readable sentencepiece model (truncated or corrupt?): "
                                  f"{str(e).strip() or type(e).__name__}") from None
    elif sentencepiece and not json_file.is_file():
        raise CheckpointError(f"{folder}: no tokenizer.model (the sentencepiece model of a LLaMA tokenizer) and no "
                              "tokenizer.json; copy the tokenizer files of the base model into this folder")
    elif not sentencepiece and not json_file.is_file() and not any(
            (folder / n).is_file() for n in ("vocab.json", "vocab.txt", "spiece.model")):
        raise CheckpointError(f"{folder}: no tokenizer files (tokenizer.model, tokenizer.json, vocab.json ...)")


def check_tokenizer(tok, folder: str | os.PathLike) -> None:
    """The loaded tokenizer must tokenize plain text into known pieces and have distinct, real bos/eos tokens."""
    ids = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    unk = tok.unk_token_id
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise CheckpointError(f"{folder}: the tokenizer turns plain text into {'nothing' if not ids else 'only <unk>'} "
                              f"(it has {len(tok)} tokens); its vocabulary files are missing or broken")
    if tok.bos_token_id is not None and tok.bos_token_id == tok.eos_token_id:
        raise CheckpointError(f"{folder}: bos and eos are the same token (id {tok.bos_token_id}); expected distinct "
                              "tokens (<s> = 1, </s> = 2 for LLaMA)")
    for name in ("bos", "eos"):
        tid = getattr(tok, f"{name}_token_id")
        if tid is not None and not 0 <= tid < len(tok):
            raise CheckpointError(f"{folder}: {name} id {tid} lies outside the vocabulary of {len(tok)} tokens")


def check_tokenizer_vs_embedding(n_tokens: int, n_rows: int, folder: str | os.PathLike) -> None:
    """The base vocabulary (tokens before the modality tokens) against the embedding rows of the weights."""
    if n_rows < n_tokens:
        raise CheckpointError(
            f"{folder}: the embedding has {n_rows} rows but the tokenizer has {n_tokens} tokens before the modality "
            f"tokens; tokenizer and weights do not belong together")
    if n_rows - n_tokens > MAX_PADDING_ROWS:
        raise CheckpointError(
            f"{folder}: the tokenizer has {n_tokens} tokens but the embedding has {n_rows} rows; expected the same "
            f"number (at most {MAX_PADDING_ROWS} padding rows); tokenizer and weights do not belong together "
            "(a missing or wrong tokenizer.model?)")
    if n_rows != n_tokens:
        logger.warning("%s: the embedding has %d rows, the tokenizer %d tokens: %d padding rows are never used",
                       folder, n_rows, n_tokens, n_rows - n_tokens)


def check_model_vocab(n_tokens: int, vocab_size: int, folder: str | os.PathLike) -> None:
    """Our own folder: every token id must have an embedding row."""
    if n_tokens > vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {n_tokens} tokens but the model's vocab_size is "
                              f"{vocab_size}; tokenizer and weights do not belong together")


__all__ = ["CheckpointError", "check_base_config", "check_config_dict", "check_finite", "check_model_finite",
           "check_model_vocab", "check_tokenizer", "check_tokenizer_files", "check_tokenizer_vs_embedding",
           "check_torch_file", "nonfinite_tensors"]

"""CLIP for LLAVIDAL: loading the vision tower the features need, and a tiny random CLIP folder for offline use.

Video features (docs/design.md#video-features) are the penultimate-layer patch tokens of CLIP ViT-L/14
(``openai/clip-vit-large-patch14``); object features (docs/design.md#pose-and-object-features) are CLIP image
embeddings (512-d, ViT-B); the pose encoder's SkeletonCLIP training aligns with CLIP text embeddings. All of them load
from one CLIP folder (a full ``CLIPModel`` checkpoint, as on the hub) through transformers.

``make_tiny_clip`` writes a folder laid out like the real one — ``config.json`` of a ``CLIPModel``, safetensors
weights, ``preprocessor_config.json`` with CLIP's mean/std and sizes, a byte-level BPE tokenizer
(``vocab.json``/``merges.txt``) — so that ``--clip DIR`` behaves the same for the tiny and the real model. Image size
224 and patch 14 are kept (256 patches, so video features have the real 356 rows); the vision width defaults to
1024 so that the features fit the tiny base model's video projector.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_VIDEO_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_OBJECT_CLIP = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipLoadError(ValueError):
    """A CLIP folder or id that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TinyClipSpec:
    """Sizes of the tiny CLIP. Image size and patch size are the real ones (224 / 14 → 256 patches)."""

    vision_hidden_size: int = 1024
    vision_intermediate_size: int = 256
    vision_layers: int = 2
    vision_heads: int = 8
    text_hidden_size: int = 64
    text_intermediate_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 512
    image_size: int = 224
    patch_size: int = 14


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte → printable-character table of byte-level BPE (GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _write_tokenizer(out: Path) -> int:
    """A character-level CLIP BPE tokenizer (no merges): every byte and byte+``</w>``, plus the two specials."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "do_lower_case": True, "errors": "replace"}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}, indent=2))
    return len(vocab)


def make_tiny_clip(out: str | os.PathLike, seed: int = 0, spec: TinyClipSpec = TinyClipSpec()) -> Path:
    """Write a tiny random CLIP folder (vision + text + projections, tokenizer, image processor). Same seed, same
    folder; loads with ``CLIPModel``/``CLIPVisionModel``/``CLIPTextModelWithProjection`` like the real one."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _write_tokenizer(out)
    text = dict(vocab_size=vocab, hidden_size=spec.text_hidden_size, intermediate_size=spec.text_intermediate_size,
                num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads, max_position_embeddings=77,
                bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=spec.projection_dim)
    vision = dict(hidden_size=spec.vision_hidden_size, intermediate_size=spec.vision_intermediate_size,
                  num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                  image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.projection_dim)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms away from one, so that a norm that is not loaded shows
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": spec.image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "do_convert_rgb": True}, indent=2))
    (out / "llavidal_tiny_clip.json").write_text(json.dumps({"seed": seed, **spec.__dict__}, indent=2))
    return out


@dataclass(frozen=True)
class ImageStats:
    """What the CLIP image processor does to a 224×224 RGB frame: rescale, then normalise per channel."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255


def image_stats(clip: str | os.PathLike) -> ImageStats:
    """Read size/mean/std from the CLIP folder's ``preprocessor_config.json`` (CLIP defaults when absent)."""
    path = Path(clip) / "preprocessor_config.json"
    if not path.is_file():
        if Path(clip).is_dir():
            return ImageStats(224, CLIP_MEAN, CLIP_STD)
        from transformers import CLIPImageProcessor

        try:
            cfg = CLIPImageProcessor.from_pretrained(_resolve(clip)).to_dict()
        except OSError as e:
            raise ClipLoadError(f"--clip {clip}: cannot read its image processor config: {e}") from None
    else:
        cfg = json.loads(path.read_text())
    crop = cfg.get("crop_size", 224)
    size = crop.get("height", 224) if isinstance(crop, dict) else int(crop)
    return ImageStats(int(size), tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD)),
                      float(cfg.get("rescale_factor", 1 / 255)))


def _resolve(clip: str | os.PathLike) -> str:
    s = str(clip)
    if Path(s).exists():
        if not (Path(s) / "config.json").is_file():
            raise ClipLoadError(f"--clip {s}: no config.json in this folder (expected a CLIP checkpoint folder, e.g. "
                                f"one written by `llavidal make-tiny-clip` or a download of {DEFAULT_VIDEO_CLIP})")
        return s
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise ClipLoadError(f"--clip {s}: not a local folder and the hub is offline; pass a local CLIP folder")
    return s


def quiet_from_pretrained(cls, src: str, **kwargs):
    """``cls.from_pretrained`` without the load report of the unused half of a full CLIP checkpoint (a vision
    tower loaded from a ``CLIPModel`` folder leaves the text weights unused, which is expected)."""
    from ..console import library_quiet

    try:
        with library_quiet():
            return cls.from_pretrained(src, **kwargs)
    except OSError as e:
        raise ClipLoadError(f"--clip {src}: cannot load {cls.__name__}: {e}") from None


def load_clip_vision(clip: str | os.PathLike = DEFAULT_VIDEO_CLIP, select_layer: int = -2, device=None,
                     dtype=None):
    """The CLIP vision tower cut after the layer whose hidden states the features use.

    ``hidden_states[select_layer]`` of the full model (``-2``: the penultimate layer; docs/design.md#video-features)
    is the ``last_hidden_state`` of the tower with only the first ``L + 1 + select_layer`` encoder layers: the layers
    after it are dropped instead of being computed and thrown away (ViT-L/14: 23 of 24 layers run).
    """
    import torch
    from transformers import CLIPVisionModel

    src = _resolve(clip)
    model = quiet_from_pretrained(CLIPVisionModel, src, dtype=dtype or torch.float32)
    encoder = model.vision_model.encoder if hasattr(model, "vision_model") else model.encoder
    layers = encoder.layers
    n = len(layers)
    keep = n + 1 + select_layer if select_layer < 0 else select_layer
    if not 0 <= keep <= n:
        raise ClipLoadError(f"select_layer {select_layer} is outside the {n} layers of {src}")
    encoder.layers = layers[:keep]
    model.config.num_hidden_layers = keep
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model


def normalise_frames(frames, stats: ImageStats, dtype=None):
    """uint8 frames ``[N, H, W, 3]`` (already ``stats.size`` square) → CLIP pixel values ``[N, 3, H, W]``.

    Done on the model's device so that only uint8 bytes cross the bus.
    """
    import torch

    x = frames.permute(0, 3, 1, 2).float().mul_(stats.rescale)
    mean = torch.tensor(stats.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(stats.std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.to(dtype) if dtype is not None else x


def pool_spatio_temporal(patches: np.ndarray | torch.Tensor, temporal_rows: int = 100):
    """Video-ChatGPT pooling: ``[N, P, D]`` patch tokens → ``[temporal_rows + P, D]``.

    Temporal tokens = mean over patches per frame (zero-padded to ``temporal_rows``), spatial tokens = mean over
    frames per patch. Means are taken in float32.
    """
    import torch

    x = torch.as_tensor(patches).float()
    n, p, d = x.shape
    if n > temporal_rows:
        raise ValueError(f"{n} frames but only {temporal_rows} temporal rows")
    out = x.new_zeros(temporal_rows + p, d)
    out[:n] = x.mean(dim=1)
    out[temporal_rows:] = x.mean(dim=0)
    return out

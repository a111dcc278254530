"""``llavidal make-tiny``: a tiny random base model in the LLaVA-7B-Lightening layout, built offline.

The folder mirrors the real one in everything a loader sees: a config.json with LLaVA fields, a LLaVA
``model_type`` and the real folder's wrong special ids (bos 0 / eos 1), sharded ``pytorch_model-*.bin`` weights
with an index, ``model.mm_projector.*`` in the weights, and a sentencepiece ``tokenizer.model`` (byte fallback,
unk/bos/eos = 0/1/2 like LLaMA) followed by the three LLaVA tokens. Only the sizes are small; the feature widths
stay real (1024 / 512 / 216) so real feature files fit. Same seed, same folder.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..constants import LLAVA_TOKENS

SYSTEM_TEXT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
               "helpful, detailed, and polite answers to the user's questions.")

# Words of the tiny tokenizer's training text: the chat template plus everyday-activity vocabulary.
_WORDS = """
the a an person man woman someone is are was walks walking sits sitting stands standing drinks drinking eats eating
water cup glass bottle food bowl plate spoon fork knife reads reading book newspaper phone laptop tablet television
watches watching uses using cooks cooking stirs pours makes coffee tea kettle pills medicine takes opens closes door
window fridge cupboard drawer table chair sofa bed kitchen living room bathroom towel wipes cleans sweeps floor
broom picks puts up down left right hand hands arm head sits down stands up then after before while first next
finally video shows in on at of to with from and or but this that it they he she his her their what which who
how many does do did answer question action activity object pose motion camera frame scene describe detail order
sequence time start end begins ends goes comes lies lying falls falling bends bending claps waves hello goodbye
user assistant yes no one two three four five six seven eight nine ten
""".split()


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model (feature widths are the real ones)."""

    hidden_size: int = 64
    intermediate_size: int = 172
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 2048
    sp_vocab_size: int = 1000  # sentencepiece pieces (LLaMA: 32000)
    mm_hidden_size: int = 1024


def _training_text(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [SYSTEM_TEXT, "USER: ASSISTANT:", "video: object: pose:",
             "Answer with one of the choices. (A) (B) (C) (D) (E) (F)", "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) [ ]"]
    for _ in range(4000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":"]))
    return lines


def build_sentencepiece(vocab_size: int, seed: int = 0) -> bytes:
    """A LLaMA-style BPE sentencepiece model trained on built-in text: deterministic, offline."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_text(seed)), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2,
    )
    return buf.getvalue()


def write_tokenizer(out: Path, vocab_size: int, seed: int = 0) -> int:
    """Writes the tokenizer files of a Lightening folder; returns the vocabulary size incl. LLaVA tokens."""
    import sentencepiece as spm

    model = build_sentencepiece(vocab_size, seed)
    n = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    (out / "tokenizer.model").write_bytes(model)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "model_max_length": 2048, "add_bos_token": True,
         "add_eos_token": False, "pad_token": None, "clean_up_tokenization_spaces": False, **specials}, indent=2))
    (out / "added_tokens.json").write_text(json.dumps({t: n + i for i, t in enumerate(LLAVA_TOKENS)}, indent=2))
    return n + len(LLAVA_TOKENS)


def make_tiny(out: str | Path, seed: int = 0, spec: TinySpec = TinySpec(), shards: int = 2,
              safetensors: bool = False, family: str = "llama") -> Path:
    """Write a tiny random base folder in the LLaVA-Lightening layout to ``out``; another ``family`` (llama3, qwen2)
    writes that backbone's layout instead (:func:`llavidal.model.tiny_backbones.make_tiny_family`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if family != "llama":
        from .tiny_backbones import make_tiny_family

        return make_tiny_family(out, family, seed=seed, spec=spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(out, spec.sp_vocab_size, seed)

    llama_cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings, rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(llama_cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    state = {k: v.detach().clone().contiguous() for k, v in llama.state_dict().items()}
    # LLaMA init leaves the norms at one; perturb them so that tests notice a norm that is not loaded
    for k in state:
        if k.endswith("norm.weight"):
            state[k] = 1.0 + 0.1 * torch.randn(state[k].shape, generator=gen)
    state["model.mm_projector.weight"] = torch.randn(spec.hidden_size, spec.mm_hidden_size, generator=gen) * 0.02
    state["model.mm_projector.bias"] = torch.randn(spec.hidden_size, generator=gen) * 0.02

    # config.json as the Lightening folder writes it: LLaVA model_type and the wrong special ids
    config = {
        "_name_or_path": "llavidal-tiny", "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1, "hidden_act": "silu",
        "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
        "initializer_range": 0.02, "max_position_embeddings": spec.max_position_embeddings,
        "num_attention_heads": spec.num_attention_heads, "num_hidden_layers": spec.num_hidden_layers,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
        "vocab_size": vocab, "mm_hidden_size": spec.mm_hidden_size,
        "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True, "use_mm_proj": True, "sep_image_conv_front": False,
        "image_patch_token": vocab - 3, "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
        "llavidal_tiny": {"seed": seed, **asdict(spec)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (out / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, indent=2))

    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    ext = "safetensors" if safetensors else "bin"
    stem = "model" if safetensors else "pytorch_model"
    for i in range(shards):
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        if safetensors:
            from safetensors.torch import save_file

            save_file(part, str(out / name), metadata={"format": "pt"})
        else:
            torch.save(part, out / name)
        weight_map.update({k: name for k in part})
        total += sum(v.numel() * v.element_size() for v in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    write_sample_features(out / "samples", seed=seed, mm_hidden_size=spec.mm_hidden_size)
    return out


def write_sample_features(out: Path, seed: int = 0, mm_hidden_size: int = 1024) -> dict[str, Path]:
    """Random feature files in the published formats and shapes (video [356, 1024] float16 pickle, object
    [2, 8, 512] pickle, pose [256, 216] pickle), so ``llavidal infer`` has something to read out of the box."""
    import numpy as np

    from ..features import save_feature

    rng = np.random.default_rng(seed)
    arrays = {
        "video": rng.standard_normal((356, mm_hidden_size)).astype(np.float16),
        "object": rng.standard_normal((2, 8, 512)).astype(np.float32),
        "pose": rng.standard_normal((256, 216)).astype(np.float32),
    }
    names = {"video": "001_video_001.pkl", "object": "001_001_video_001_object.pkl",
             "pose": "001_001_video_001_pose.pickle"}
    return {m: save_feature(a, out / names[m]) for m, a in arrays.items()}


__all__ = ["TinySpec", "make_tiny", "build_sentencepiece"]

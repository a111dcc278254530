"""Tiny random base folders of other backbone families (``llavidal make-tiny DIR --family llama3|qwen2``).

Each folder is laid out like the real one of its family, as ``AutoModelForCausalLM`` / ``AutoTokenizer`` expect
it: the backbone's own ``config.json`` (``model_type`` llama / qwen2), safetensors weights under the backbone's key
names, a byte-level BPE ``tokenizer.json`` with the family's special tokens, and a chat template in the family's
format (written here, in our own words). Only the sizes are small. Built offline; same seed, same folder.

| family | imitates | tokenizer | chat format | end of turn | embeddings |
| --- | --- | --- | --- | --- | --- |
| ``llama3`` | LLaMA-3.1 (8B layout) | BPE, bos ``<|begin_of_text|>``, eos ``<|end_of_text|>``, no pad | header tokens | ``<|eot_id|>`` | untied, exact vocabulary |
| ``qwen2`` | Qwen2.5-Instruct (small layout) | BPE, no bos, eos ``<|im_end|>``, pad ``<|endoftext|>`` | ChatML | ``<|im_end|>`` | tied, vocabulary padded to a multiple of 64 |
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .tiny import TinySpec, _training_text, write_sample_features

# ChatML: <|im_start|>role\ncontent<|im_end|>\n, a default system message when none is given.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# LLaMA-3 header format: bos, then <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> per message.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + "
    "'<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyFamily:
    """What a tiny folder of one backbone family looks like."""

    name: str
    model_type: str  # the backbone's transformers model_type
    imitates: str
    specials: tuple[str, ...]  # special tokens, in id order after the BPE vocabulary
    bos: str | None
    eos: str
    pad: str | None
    chat_template: str
    tokenizer_class: str  # "Qwen2Tokenizer" or "PreTrainedTokenizerFast"
    config: dict = field(default_factory=dict)  # backbone-specific config fields
    vocab_multiple: int = 1  # embedding rows padded up to a multiple of this (Qwen pads its vocabulary)
    context: str = ""  # the real family's window (docs/design.md#backbones)


FAMILIES: dict[str, TinyFamily] = {
    "llama3": TinyFamily(
        "llama3", "llama", "LLaMA-3.1 (8B layout)",
        ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
         "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_2|>", "<|eot_id|>"),
        bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, chat_template=LLAMA3_TEMPLATE,
        tokenizer_class="PreTrainedTokenizerFast",
        config={"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
                "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 512}},
        context="131,072 positions (LLaMA-3.1; LLaMA-3: 8,192)"),
    "qwen2": TinyFamily(
        "qwen2", "qwen2", "Qwen2.5-Instruct (small, tied layout)",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML_TEMPLATE,
        tokenizer_class="Qwen2Tokenizer",
        config={"tie_word_embeddings": True, "use_sliding_window": False,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        vocab_multiple=64, context="32,768 positions (Qwen2.5 7B and up: 131,072 with YaRN)"),
}


def build_bpe(vocab_size: int, seed: int = 0) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (the pre-tokenization of GPT-style tokenizers) trained on built-in text: vocab and merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    lines = _training_text(seed) + ["<|im_start|>user\nhi<|im_end|>\n", "user\n\nassistant\n\n", "system"]
    tok.train_from_iterator(lines, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def write_tokenizer(out: Path, family: TinyFamily, vocab_size: int, seed: int = 0) -> int:
    """The family's tokenizer files (tokenizer.json, tokenizer_config.json, chat template); returns its size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    vocab, merges = build_bpe(vocab_size, seed)
    n = len(vocab)
    vocab.update({t: n + i for i, t in enumerate(family.specials)})
    if family.tokenizer_class == "Qwen2Tokenizer":
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=family.eos, pad_token=family.pad, unk_token=None,
                             bos_token=family.bos, extra_special_tokens=[t for t in family.specials
                                                                         if t not in (family.eos, family.pad)])
    else:
        from tokenizers import Regex

        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in family.specials])
        if family.bos:  # LLaMA-3 prepends its bos through the post-processor
            backend.post_processor = processors.TemplateProcessing(
                single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
                special_tokens=[(family.bos, vocab[family.bos])])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=family.bos, eos_token=family.eos,
                                      pad_token=family.pad)
    tok.chat_template = family.chat_template
    tok.model_max_length = 131072
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"  # the class name real folders of the family carry
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = family.tokenizer_class
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return len(tok)


def make_tiny_family(out: str | Path, family: str, seed: int = 0, spec: TinySpec | None = None,
                     num_key_value_heads: int = 2) -> Path:
    """Write a tiny random base folder of ``family`` (a key of :data:`FAMILIES`) to ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; choose from llama, {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    spec = spec or TinySpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_tokens = write_tokenizer(out, fam, spec.sp_vocab_size, seed)
    rows = -(-n_tokens // fam.vocab_multiple) * fam.vocab_multiple
    specials = {t: i for i, t in enumerate(fam.specials, start=n_tokens - len(fam.specials))}
    config = AutoConfig.for_model(
        fam.model_type, vocab_size=rows, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        # a wider init than real models' 0.02: with tied embeddings a tiny model would otherwise echo its last token
        rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=specials.get(fam.bos), eos_token_id=specials[fam.eos],
        pad_token_id=specials.get(fam.pad), **fam.config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms start at one: perturb them so that tests notice a norm that is not loaded
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    model.config.llavidal_tiny = {"seed": seed, "family": family, **asdict(spec)}
    model.save_pretrained(str(out), safe_serialization=True)
    write_sample_features(out / "samples", seed=seed, mm_hidden_size=spec.mm_hidden_size)
    return out


__all__ = ["CHATML_TEMPLATE", "FAMILIES", "LLAMA3_TEMPLATE", "TinyFamily", "make_tiny_family"]

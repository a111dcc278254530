"""Shared helper of the generation tests: a tiny model rewired to produce a known reply."""
from __future__ import annotations

import torch


def chain_model(model, tok, chain_words, after_eos_word):
    """Rewire the tiny model so that greedy decoding after 'ASSISTANT:' produces ``chain_words`` then </s>.

    With every o_proj/down_proj zeroed, each position's final hidden state is its own token embedding
    (normalised); token k of the chain gets basis embedding e_k and lm_head maps e_k to the next token. After
    </s> the chain would go on with ``after_eos_word``: a reply containing it means </s> did not stop decoding.
    """
    prompt_end = tok("USER: hi ASSISTANT:", add_special_tokens=False).input_ids[-1]
    words = [tok(w, add_special_tokens=False).input_ids[-1] for w in chain_words]
    extra = tok(after_eos_word, add_special_tokens=False).input_ids[-1]
    seq = [prompt_end, *words, tok.eos_token_id, extra]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        head.zero_()
        for k, (cur, nxt) in enumerate(zip(seq[:-1], seq[1:])):
            emb[cur] = 0.0
            emb[cur, k] = 1.0
            head[nxt, k] = 10.0
    return seq

#!/usr/bin/env python
"""Prefill and decode per backbone family (docs/design.md#backbones), on tiny or small shapes.

For each family (``llama``: LLaVA-Lightening, LLaMA-1 layout with multi-head attention and the Vicuna template;
``llama3``: LLaMA-3.1 layout; ``qwen2``: Qwen2.5 layout, tied embeddings; both with grouped-query attention, 4
query heads per key/value head at ``small``, and their chat templates), a base folder is written by ``make_tiny``
with the preset's sizes and loaded; the same questions (``--batch`` of them, each with a 356-row video feature) are
asked in the family's own template:

``prefill``  tokens/s of one multimodal prefill forward over the left-padded batch (splice + decoder + the last
             position's logits), and the ms of ``embed_multimodal`` alone (the splice, one implementation for all);
``decode``   tokens/s of greedy decoding after the first token at batch ``--batch``: the engine (``--batch`` slots)
             vs ``model.generate`` on the same batch; their token ids are checked equal first. Both stop only at a
             modality token (suppressed, so never generated) instead of the end of turn: every row decodes
             ``--new-tokens`` tokens, whatever the random weights would say.

Families alternate within every round (order reversed on odd rounds); figures are medians over rounds. The tiny
vocabularies (about 1,000 tokens) understate the lm_head of real models (32K to 152K tokens).

    PYTHONPATH=. python bench/bench_backbones.py --preset tiny --threads 1 --json /tmp/bench_backbones_tiny.json
    PYTHONPATH=. python bench/bench_backbones.py --preset small --threads 1 --json /tmp/bench_backbones_small.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, write_json  # (importing _common puts the repository on sys.path)

from llavidal import load_pretrained
from llavidal.constants import TINY_FAMILIES
from llavidal.engine import Engine, EngineConfig
from llavidal.inference import GenerationOptions, Query, make_request, prepare_inputs
from llavidal.model.tiny import TinySpec, make_tiny

PRESETS = {
    "tiny": TinySpec(),
    "small": TinySpec(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
}
QUESTIONS = ["What is the person doing?", "Describe the video.", "Which object does the person use?",
             "What happens after the person sits down?", "Is the person standing?", "Name the actions in order."]


def queries(n: int) -> list[Query]:
    return [Query(QUESTIONS[i % len(QUESTIONS)],
                  video=np.random.default_rng(i).standard_normal((356, 1024)).astype(np.float16)) for i in range(n)]


def generate_ids(model, tok, batch: dict, opts: GenerationOptions) -> list[list[int]]:
    with torch.inference_mode():
        out = model.generate(**batch, **opts.generate_kwargs(tok))
    return [row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row for row in out.tolist()]


class NeverStops:
    """The tokenizer with eos = a modality token: generation never meets it (modality tokens are suppressed)."""

    def __init__(self, tok, model):
        self._tok = tok
        self.eos_token_id = model.config.token_id("<vid_patch>")

    def __getattr__(self, name):
        return getattr(self._tok, name)


class Family:
    """One family's model, its engine, its prompts, and the timing of each measurement."""

    def __init__(self, name: str, base: Path, args):
        self.name = name
        self.model, self.tok = load_pretrained(base, device=args.device, dtype=args.dtype)
        self.qs = queries(args.batch)
        self.full = GenerationOptions(max_new_tokens=args.new_tokens)
        self.first = GenerationOptions(max_new_tokens=1)
        self.batch = prepare_inputs(self.model, self.tok, self.qs, self.full)
        self.stop = NeverStops(self.tok, self.model)
        self.engine = Engine(self.model, self.stop, EngineConfig(max_batch_size=args.batch))
        self.times: dict[str, list[float]] = {"prefill": [], "splice": [], "engine": [], "generate": []}
        ref = generate_ids(self.model, self.stop, self.batch, self.full)
        assert all(len(r) == args.new_tokens for r in ref)
        got = [r.token_ids for r in self.engine.generate(self.requests(self.full))]
        assert got == ref, f"{name}: engine tokens differ from model.generate"

    def requests(self, opts):
        return [make_request(self.model, self.tok, q, opts) for q in self.qs]

    def sync(self):
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()

    def round(self) -> None:
        m, b = self.model, self.batch
        feats = {k: v for k, v in b.items() if k.endswith("_features")}
        with torch.inference_mode():
            self.sync()
            t0 = time.perf_counter()
            m.embed_multimodal(b["input_ids"], **feats)
            self.sync()
            t1 = time.perf_counter()
            m(**b, logits_to_keep=1, use_cache=False)
            self.sync()
            t2 = time.perf_counter()
        self.times["splice"].append(t1 - t0)
        self.times["prefill"].append(t2 - t1)
        for name, run in (("engine", lambda o: self.engine.generate(self.requests(o))),
                          ("generate", lambda o: generate_ids(m, self.stop, b, o))):
            t0 = time.perf_counter()
            run(self.first)
            t1 = time.perf_counter()
            run(self.full)
            t2 = time.perf_counter()
            self.times[name].append((t2 - t1) - (t1 - t0))  # decoding after the prefill and first token

    def result(self, args) -> dict:
        med = {k: statistics.median(v) for k, v in self.times.items()}
        prompt_tokens = int(self.batch["attention_mask"].sum())
        new = (args.new_tokens - 1) * args.batch
        cfg = self.model.config
        return {
            "backbone": cfg.model_type, "template": getattr(cfg, "template", "vicuna_v1_1"),
            "kv_heads": cfg.num_key_value_heads, "heads": cfg.num_attention_heads, "vocab": cfg.vocab_size,
            "tied": bool(cfg.tie_word_embeddings), "prompt_tokens": prompt_tokens,
            "prefill_tokens_per_s": prompt_tokens / med["prefill"], "splice_ms": 1e3 * med["splice"],
            "decode_tokens_per_s": {"engine": new / med["engine"], "generate": new / med["generate"]},
            "ratio_engine_vs_generate": med["generate"] / med["engine"],
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--families", default=",".join(TINY_FAMILIES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="fp32 (CPU default) or bf16 (CUDA default)")
    ap.add_argument("--work", help="folder for the base folders (default: a temporary one)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_backbones_"))
    fams = []
    for name in args.families.split(","):
        base = work / f"{args.preset}-{name}"
        if not (base / "config.json").is_file():
            make_tiny(base, seed=0, spec=PRESETS[args.preset], family=name)
        fams.append(Family(name, base, args))
    for r in range(args.rounds):
        for fam in fams if r % 2 == 0 else reversed(fams):
            fam.round()
    out = {"preset": args.preset, "batch": args.batch, "new_tokens": args.new_tokens, "rounds": args.rounds,
           "device": args.device, "dtype": args.dtype, "machine": machine_info(args.device),
           "families": {f.name: f.result(args) for f in fams}}
    for f in fams:
        f.engine.close()
    print(json.dumps(out, indent=2))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

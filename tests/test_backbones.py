"""Other backbones (docs/design.md#backbones): tiny LLaMA-3.1- and Qwen2.5-layout folders through make-tiny, infer,
training in every mode and reloading; labels of their chat templates; the engine against ``model.generate``; the
fallback for models the slot cache cannot hold; adapters that refuse a foreign backbone. The LLaMA-Lightening path
keeps its own tests (test_parity, test_train ...), unchanged."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers_train import adapter, synthetic_data, train_flags

from llavidal.constants import IGNORE_INDEX
from llavidal.inference import GenerationOptions, Query, make_request, prepare_inputs

FAMILIES = ("llama3", "qwen2")
END_OF_TURN = {"llama": "</s>", "llama3": "<|eot_id|>", "qwen2": "<|im_end|>"}


@pytest.fixture(scope="session")
def family_base(tmp_path_factory):
    """One tiny base folder per family, written through the CLI once per session."""
    from llavidal.cli import main

    made = {}

    def get(family: str):
        if family not in made:
            out = tmp_path_factory.mktemp(f"tiny-{family}") / "base"
            assert main(["make-tiny", str(out), "--family", family]) == 0
            made[family] = out
        return made[family]

    return get


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def trained(family_base, synth, tmp_path_factory):
    """Projector-mode training outputs (2 steps, with the full model folder too), one per family."""
    from llavidal.train.train import train

    runs = {}

    def get(family: str):
        if family not in runs:
            out = tmp_path_factory.mktemp(f"run-{family}") / "out"
            summary = train(train_flags(family_base(family), synth, out, save_full_model="True"))
            runs[family] = (out, summary)
        return runs[family]

    return get


def _load(path):
    from llavidal import load_pretrained

    return load_pretrained(path, device="cpu", dtype=torch.float32)


def _queries(rng):
    return [Query("What is the person doing?", video=rng.standard_normal((356, 1024)).astype(np.float16)),
            Query("Hi"),
            Query("Which objects, and how does the person move?", object=rng.standard_normal((2, 8, 512)).astype(
                np.float32), pose=rng.standard_normal((256, 216)).astype(np.float32))]


# ==================================================================== make-tiny
@pytest.mark.parametrize("family", FAMILIES)
def test_make_tiny_writes_the_family_layout_deterministically(family, family_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llavidal.model.tiny import make_tiny

    base = family_base(family)
    again = make_tiny(tmp_path / "again", family=family)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json", "model.safetensors"):
        assert (base / f).read_bytes() == (again / f).read_bytes(), f
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["model_type"] == {"llama3": "llama", "qwen2": "qwen2"}[family]
    assert type(AutoModelForCausalLM.from_pretrained(base)).__name__ == {"llama3": "LlamaForCausalLM",
                                                                         "qwen2": "Qwen2ForCausalLM"}[family]
    tok = AutoTokenizer.from_pretrained(base)
    assert tok.chat_template and END_OF_TURN[family] in tok.get_vocab()


# ==================================================================== labels
@pytest.mark.parametrize("family", ("llama", *FAMILIES))
def test_labels_cover_exactly_the_replies_and_their_end_of_turn(family, family_base, tiny_base):
    from llavidal.model.base import load_tokenizer, use_end_of_turn_as_eos
    from llavidal.prompting import encode_turns, reply_ids

    base = tiny_base if family == "llama" else family_base(family)
    tok = load_tokenizer(base)
    template = "vicuna_v1_1" if family == "llama" else "chat"
    if template == "chat":
        use_end_of_turn_as_eos(tok, base)
    assert tok.eos_token == END_OF_TURN[family]
    span = "<vid_start>" + "<vid_patch>" * 3 + "<vid_end>"
    turns = [(f"What is he doing?\n{span}", "He drinks water."), ("And then?", "He sits down."), ("Why?", None)]
    ids, labels = encode_turns(tok, turns, template=template, system="S")
    assert len(ids) == len(labels)
    runs, cur = [], []  # contiguous labelled runs
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            assert lab == ids[i]
            if cur and i != cur[-1] + 1:
                runs.append(cur)
                cur = []
            cur.append(i)
    runs.append(cur)
    eot = END_OF_TURN[family]
    assert [tok.decode([ids[i] for i in r]) for r in runs] == [f"He drinks water.{eot}", f"He sits down.{eot}"]
    assert [ids[r[-1]] for r in runs] == [tok.eos_token_id] * 2  # the stop token of generation closes each reply
    assert [ids[i] for i in runs[1]] == reply_ids(tok, "He sits down.", template)  # what option scoring sums
    patch = tok.convert_tokens_to_ids("<vid_patch>")
    assert ids.count(patch) == 3 and all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == patch)
    if template == "chat":  # text cannot open or close a turn: the template's markers are removed from messages
        marker = "<|im_start|>" if family == "qwen2" else "<|start_header_id|>"
        assert encode_turns(tok, [(f"Hi{marker}system", None)], template="chat") == \
            encode_turns(tok, [("Hisystem", None)], template="chat")
    if template == "chat":  # the ids are those of the rendered conversation, ending in the generation header
        msgs = [{"role": "system", "content": "S"}]
        for q, a in turns:
            msgs += [{"role": "user", "content": q}] + ([{"role": "assistant", "content": a}] if a else [])
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert tok.decode(ids) == text
        assert ids == tok(text, add_special_tokens=False).input_ids


def test_chat_templates_that_cannot_be_labelled_by_construction_are_refused(family_base):
    from llavidal.model.base import load_tokenizer
    from llavidal.prompting import encode_turns

    tok = load_tokenizer(family_base("qwen2"))
    turns = [("Q1", "A1"), ("Q2", None)]
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                         "{% endif %}")  # renders the last message only: earlier turns are rewritten
    with pytest.raises(ValueError, match="rewrites earlier turns"):
        encode_turns(tok, turns, template="chat")
    tok.chat_template = None
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        encode_turns(tok, turns, template="chat")
    with pytest.raises(ValueError, match="tokenization 'clean'"):
        encode_turns(load_tokenizer(family_base("qwen2")), turns, template="chat", tokenization="original")


# ==================================================================== CLI, training, reloading
@pytest.mark.parametrize("family", FAMILIES)
def test_cli_infer_then_projector_training_reloads_with_the_same_logits(family, family_base, trained, capsys):
    from llavidal.cli import main
    from llavidal.model.adapters import adapter_metadata

    base = family_base(family)
    s = base / "samples"
    assert main(["infer", "--base", str(base), "--video", str(s / "001_video_001.pkl"),
                 "--object", str(s / "001_001_video_001_object.pkl"), "--pose", str(s / "001_001_video_001_pose.pickle"),
                 "-q", "What is the person doing?", "--max-new-tokens", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["modalities"] == ["video", "object", "pose"] and isinstance(out["answer"], str)

    run, summary = trained(family)
    assert summary["global_step"] == 2 and not (run / "mm_projector.bin").exists()  # the legacy file: LLaMA only
    meta = adapter_metadata(run / "adapter.safetensors")
    backbone = {"llama3": "llavidal_llama", "qwen2": "llavidal_qwen2"}[family]
    assert (meta["backbone"], meta["template"]) == (backbone, "chat")
    init, _ = _load(base)
    ad = adapter(run)
    assert not torch.equal(ad["model.mm_projector.weight"], init.projector("video").weight)  # it trained
    from_adapter, tok = _load(run)  # config + tokenizer + adapter on top of the base folder
    full, tok2 = _load(run / "full_model")  # the merged folder
    assert from_adapter.config.model_type == full.config.model_type == backbone
    assert from_adapter.config.template == full.config.template == "chat"
    assert tok.eos_token == tok2.eos_token == END_OF_TURN[family]
    batch = prepare_inputs(from_adapter, tok, _queries(np.random.default_rng(0)), GenerationOptions(max_new_tokens=4))
    with torch.no_grad():
        a = from_adapter(**batch, use_cache=False).logits
        b = full(**batch, use_cache=False).logits
    assert torch.equal(a, b)


def test_eval_run_generates_and_scores_options_with_a_trained_backbone(trained, tmp_path):
    from llavidal.cli import main
    from llavidal.synthetic import WorldSpec, make_dataset

    data = make_dataset(tmp_path / "data", n_train=0, n_test=4, seed=1, spec=WorldSpec(video_rows=8, pose_rows=6))
    run, _ = trained("qwen2")
    for mode in ("generate", "loglik"):
        out = tmp_path / mode
        assert main(["eval", "run", "--task", "smarthome-ar", "--qa-file", str(data["test"]), "--video-dir",
                     str(data["video_folder"]), "--base", str(run), "--output", str(out), "--max-new-tokens", "8",
                     "--batch-size", "4", "--mcq-mode", mode]) == 0
        mcq = json.loads((out / "summary.json").read_text())["mcq"]
        assert mcq["total"] == 4 and mcq["correct"] + mcq["wrong"] + mcq.get("unparsed", 0) == 4


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_lora_and_full_training_of_a_tied_backbone_write_loadable_folders(mode, family_base, synth, tmp_path):
    from llavidal.train.train import train

    out = tmp_path / mode
    train(train_flags(family_base("qwen2"), synth, out, ("video",), tune_mm_mlp_adapter="False",
                      training_mode=mode, max_steps="1"))
    model, _ = _load(out)
    assert model.config.model_type == "llavidal_qwen2" and model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(model.projector("video").weight, adapter(out)["model.mm_projector.weight"])


def test_an_adapter_of_another_backbone_is_refused(family_base, trained):
    from llavidal.model import CheckpointError, load_projector

    model, tok = _load(family_base("llama3"))
    with pytest.raises(CheckpointError, match="trained on the llavidal_qwen2 backbone; this model is llavidal_llama"):
        load_projector(model, tok, trained("qwen2")[0] / "adapter.safetensors")


# ==================================================================== generation
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_greedy_tokens_equal_generate(family, family_base):
    from llavidal.engine import Engine, EngineConfig

    model, tok = _load(family_base(family))
    queries = _queries(np.random.default_rng(1))
    opts = GenerationOptions(max_new_tokens=12)
    with torch.inference_mode():
        out = model.generate(**prepare_inputs(model, tok, queries, opts), **opts.generate_kwargs(tok))
    want = [r[:r.index(tok.eos_token_id)] if tok.eos_token_id in r else r for r in out.tolist()]
    engine = Engine(model, tok, EngineConfig(max_batch_size=2))
    try:
        got = [r.token_ids for r in engine.generate([make_request(model, tok, q, opts) for q in queries])]
    finally:
        engine.close()
    assert got == want and len({tuple(x) for x in want}) > 1
    small = Engine(model, tok, EngineConfig(max_cache_len=64))  # the KV cache per sequence is a choice, not the window
    with pytest.raises(ValueError, match=r"engine's KV cache of 64 positions .*max_cache_len; the model allows 2048"):
        small.check(make_request(model, tok, queries[0], opts))


def test_sliding_window_models_fall_back_to_generate(family_base, tmp_path):
    """A backbone whose layers the slot cache cannot hold (here Qwen2 with its sliding window switched on) answers
    through model.generate behind the engine's interface, with the reason logged."""
    from llavidal.engine import Engine, get_engine
    from llavidal.engine.fallback import GenerateEngine
    from llavidal.inference import answer_batch, stream_answer

    base = tmp_path / "sliding"
    shutil.copytree(family_base("qwen2"), base)
    cfg = json.loads((base / "config.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=16, max_window_layers=1, layer_types=None)
    (base / "config.json").write_text(json.dumps(cfg))
    model, tok = _load(base)
    with pytest.raises(ValueError, match="sliding"):
        Engine(model, tok)
    engine = get_engine(model, tok)
    assert isinstance(engine, GenerateEngine) and "sliding" in engine.reason
    queries = _queries(np.random.default_rng(2))[:2]
    opts = GenerationOptions(max_new_tokens=8)
    replies = answer_batch(model, tok, queries, opts)
    with torch.inference_mode():
        out = model.generate(**prepare_inputs(model, tok, queries[:1], opts), **opts.generate_kwargs(tok))
    first = out[0].tolist()
    first = first[:first.index(tok.eos_token_id)] if tok.eos_token_id in first else first
    assert replies[0] == tok.decode(first, skip_special_tokens=True).strip()
    q = queries[0]
    assert "".join(stream_answer(model, tok, q.question, video=q.video, options=opts)) == replies[0]

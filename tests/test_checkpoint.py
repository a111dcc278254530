"""Loading the Lightening base folder, projector files in every layout, saving and reloading."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from llavidal import CheckpointError, export_legacy_projector, load_pretrained, save_adapter, save_pretrained
from llavidal.constants import ADDED_TOKENS, LAYOUT_2024, LAYOUT_CURRENT, LAYOUT_VIDEOCHATGPT
from llavidal.model.files import read_folder_state_dict

H = 64  # tiny hidden size
N_BASE = 1003  # tiny LLaMA vocab (1000) + the 3 LLaVA tokens; the real model has 32003


def test_base_folder_special_ids_come_from_tokenizer(tiny_base, tiny):
    model, tok = tiny
    cfg = json.loads((tiny_base / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["eos_token_id"] == 1  # the folder's wrong ids
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.convert_ids_to_tokens([1, 2, 0]) == ["<s>", "</s>", "<unk>"]
    for c in (model.config, model.generation_config):
        assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (1, 2, 0)
    assert len(tok) == N_BASE + 9 == model.get_input_embeddings().weight.shape[0]
    assert [tok.convert_tokens_to_ids(t) for t in LAYOUT_CURRENT] == list(range(N_BASE, N_BASE + 9))
    assert model.config.modality_token_ids["<vid_start>"] == tok.convert_tokens_to_ids("<vid_start>") == 1006
    assert tok.convert_tokens_to_ids("<im_start>") == 1001  # LLaVA tokens kept at their ids


def test_base_weights_and_initialisation(tiny_base, tiny):
    model, tok = tiny
    raw = read_folder_state_dict(tiny_base)
    sd = model.state_dict()
    for k, v in raw.items():  # every base tensor arrives, including the video projector from mm_projector
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(sd[k][:N_BASE], v)
        else:
            assert torch.equal(sd[k], v), k
    for key in ("model.embed_tokens.weight", "lm_head.weight"):  # added rows start at the mean of the base rows
        mean = raw[key].mean(0)
        torch.testing.assert_close(sd[key][N_BASE:], mean.expand(9, H))
    for name in ("mm_projector_forobject", "mm_projector_forpose"):  # normal(0, 0.02) weights, zero bias
        w, b = sd[f"model.{name}.weight"], sd[f"model.{name}.bias"]
        assert torch.count_nonzero(b) == 0
        assert 0.015 < w.std().item() < 0.025 and abs(w.mean().item()) < 0.002


def test_safetensors_sharded_base_loads_the_same(tmp_path, tiny):
    from llavidal.model.tiny import make_tiny

    st = make_tiny(tmp_path / "st", seed=0, safetensors=True)
    assert (st / "model.safetensors.index.json").is_file()
    model, _ = load_pretrained(st, device="cpu", dtype=torch.float32)
    ref = tiny[0].state_dict()
    for k, v in model.state_dict().items():
        if "forobject" in k or "forpose" in k:
            continue  # randomly initialised
        assert torch.equal(v, ref[k]), k


def _layout_file(layout_names, value_of, n_base=N_BASE, pose=True, obj=True):
    """A projector state dict whose added rows hold distinct constants: row of token t = value_of[t]."""
    g = torch.Generator().manual_seed(0)
    sd = {"model.mm_projector.weight": torch.randn(H, 1024, generator=g),
          "model.mm_projector.bias": torch.randn(H, generator=g)}
    if obj:
        sd["model.mm_projector_forobject.weight"] = torch.randn(H, 512, generator=g)
        sd["model.mm_projector_forobject.bias"] = torch.randn(H, generator=g)
    if pose:
        sd["model.mm_projector_forpose.weight"] = torch.randn(H, 216, generator=g)
        sd["model.mm_projector_forpose.bias"] = torch.randn(H, generator=g)
    emb = torch.randn(n_base + len(layout_names), H, generator=g)
    for i, name in enumerate(layout_names):
        emb[n_base + i] = value_of[name]
    sd["model.embed_tokens.weight"] = emb
    return sd


VALUES = {name: float(10 + i) for i, name in enumerate(ADDED_TOKENS)}


@pytest.mark.parametrize("layout,names,has_pose", [
    ("current", LAYOUT_CURRENT, True),
    ("2024", LAYOUT_2024, False),
    ("videochatgpt", LAYOUT_VIDEOCHATGPT, False),
])
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_projector_layouts_map_rows_by_name(tiny_base, tmp_path, layout, names, has_pose, fmt):
    sd = _layout_file(names, VALUES, pose=has_pose, obj=layout != "videochatgpt")
    path = tmp_path / f"proj.{fmt}"
    torch.save(sd, path) if fmt == "bin" else save_file(sd, str(path))
    base_model, _ = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    model, tok = load_pretrained(tiny_base, projector=path, device="cpu", dtype=torch.float32)
    emb = model.get_input_embeddings().weight
    for name in ADDED_TOKENS:
        row = emb[tok.convert_tokens_to_ids(name)]
        if name in names:  # the row of that NAME in the file, wherever its position was
            assert torch.all(row == VALUES[name]), (layout, name)
        else:  # tokens the file does not know keep their initial (mean) row
            assert torch.equal(row, base_model.get_input_embeddings().weight[tok.convert_tokens_to_ids(name)])
    # base rows come from the base folder, never from the projector file
    assert torch.equal(emb[:N_BASE], base_model.get_input_embeddings().weight[:N_BASE])
    assert torch.equal(model.get_model().mm_projector.weight, sd["model.mm_projector.weight"])
    assert torch.equal(model.get_model().mm_projector.bias, sd["model.mm_projector.bias"])
    if has_pose:
        assert torch.equal(model.get_model().mm_projector_forpose.weight, sd["model.mm_projector_forpose.weight"])
    assert model.config.mm_use_vid_start_end


def test_2024_layout_positions_differ_from_ours(tiny_base, tmp_path):
    """The trap of the original: in the 2024 file <vid_start> is at base+2; by position it would land on our
    <pose_patch> slot. Check a concrete value."""
    sd = _layout_file(LAYOUT_2024, VALUES, pose=False)
    torch.save(sd, tmp_path / "p.bin")
    model, tok = load_pretrained(tiny_base, projector=tmp_path / "p.bin", device="cpu", dtype=torch.float32)
    emb = model.get_input_embeddings().weight
    assert emb[N_BASE + 3, 0].item() == VALUES["<vid_start>"] == emb[tok.convert_tokens_to_ids("<vid_start>"), 0]
    assert emb[N_BASE + 2, 0].item() != VALUES["<vid_start>"]  # our <pose_patch> slot did not get it


def test_unknown_layout_is_an_error_naming_sizes(tiny_base, tmp_path):
    sd = _layout_file(LAYOUT_CURRENT[:5], VALUES)  # 1008 rows: no layout
    torch.save(sd, tmp_path / "odd.bin")
    with pytest.raises(CheckpointError, match=r"odd.bin.*1008 rows.*1012 \(current\), 1009 \(2024\), 1006 \(videochatgpt\)"):
        load_pretrained(tiny_base, projector=tmp_path / "odd.bin", device="cpu")


def test_patch_only_file_turns_start_end_off(tiny_base, tmp_path):
    """A LLAVIDAL run without start/end tokens (vocab base+3 WITH pose/object projectors) is not Video-ChatGPT."""
    sd = _layout_file(("<vid_patch>", "<object_patch>", "<pose_patch>"), VALUES)
    torch.save(sd, tmp_path / "p.bin")
    model, _ = load_pretrained(tiny_base, projector=tmp_path / "p.bin", device="cpu")
    assert model.config.mm_use_vid_start_end is False


def test_projector_shape_mismatch_names_key(tiny_base, tmp_path):
    sd = _layout_file(LAYOUT_CURRENT, VALUES)
    sd["model.mm_projector_forpose.weight"] = torch.zeros(H, 100)
    torch.save(sd, tmp_path / "p.bin")
    with pytest.raises(CheckpointError, match=r"mm_projector_forpose.weight has shape \(64, 100\), expected \(64, 216\)"):
        load_pretrained(tiny_base, projector=tmp_path / "p.bin", device="cpu")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/llavidal_pwned_by_test",))


def test_bin_with_code_is_refused_and_not_run(tiny_base, tmp_path):
    marker = "/tmp/llavidal_pwned_by_test"
    import os

    if os.path.exists(marker):
        os.remove(marker)
    with open(tmp_path / "evil.bin", "wb") as fh:
        pickle.dump({"model.mm_projector.weight": _Evil()}, fh)
    with pytest.raises(CheckpointError, match=r"evil.bin: refused to load"):
        load_pretrained(tiny_base, projector=tmp_path / "evil.bin", device="cpu")
    assert not os.path.exists(marker)


def test_truncated_and_missing_projector_files(tiny_base, tmp_path):
    torch.save(_layout_file(LAYOUT_CURRENT, VALUES), tmp_path / "p.bin")
    data = (tmp_path / "p.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.bin: not a readable torch checkpoint"):
        load_pretrained(tiny_base, projector=tmp_path / "cut.bin", device="cpu")
    save_file(_layout_file(LAYOUT_CURRENT, VALUES), str(tmp_path / "p.safetensors"))
    data = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match=r"cut.safetensors: not a readable safetensors"):
        load_pretrained(tiny_base, projector=tmp_path / "cut.safetensors", device="cpu")
    with pytest.raises(FileNotFoundError, match=r"nope.bin"):
        load_pretrained(tiny_base, projector=tmp_path / "nope.bin", device="cpu")
    with pytest.raises(FileNotFoundError, match=r"no_such_dir"):
        load_pretrained(tmp_path / "no_such_dir")


def test_base_folder_with_missing_shard(tiny_base, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    (broken / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match=r"lists shard pytorch_model-00002-of-00002.bin, which is missing"):
        load_pretrained(broken, device="cpu")


def test_save_load_round_trip_is_bit_for_bit(tiny, tmp_path):
    model, tok = tiny
    with torch.no_grad():  # make the trainable parts differ from any initial value
        model.get_model().mm_projector_forpose.bias.add_(0.5)
        model.get_input_embeddings().weight[tok.convert_tokens_to_ids("<pose_end>")] += 1.0
    model.config.use_modality_string_prefix = True
    out = save_pretrained(model, tok, tmp_path / "ours")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "generation_config.json",
                                               "tokenizer_config.json"}
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)
    again, tok2 = load_pretrained(out, device="cpu", dtype=torch.float32)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert again.config.use_modality_string_prefix is True
    assert tok2.get_vocab() == tok.get_vocab()
    text = "USER: What is the person doing?\n<vid_start><vid_patch><vid_end> ASSISTANT:"
    assert tok2(text).input_ids == tok(text).input_ids


def test_adapter_and_legacy_export_round_trip(tiny, tiny_base, tmp_path):
    model, tok = tiny
    with torch.no_grad():
        for p in model.get_model().mm_projector_forobject.parameters():
            p.add_(1.0)
        model.get_input_embeddings().weight[tok.convert_tokens_to_ids("<object_start>")] = 7.0
    adapter = save_adapter(model, tok, tmp_path / "adapter.safetensors")
    legacy = export_legacy_projector(model, tmp_path / "mm_projector.bin")
    raw = torch.load(legacy, weights_only=True)
    assert set(raw) == {f"model.{p}.{w}" for p in ("mm_projector", "mm_projector_forobject", "mm_projector_forpose")
                        for w in ("weight", "bias")} | {"model.embed_tokens.weight"}
    assert raw["model.embed_tokens.weight"].shape == (N_BASE + 9, H)
    for path in (adapter, legacy):
        loaded, _ = load_pretrained(tiny_base, projector=path, device="cpu", dtype=torch.float32)
        for name in ("mm_projector", "mm_projector_forobject", "mm_projector_forpose"):
            for w in ("weight", "bias"):
                assert torch.equal(getattr(loaded.get_model(), name).get_parameter(w),
                                   getattr(model.get_model(), name).get_parameter(w)), (path, name)
        for t in ADDED_TOKENS:
            i = tok.convert_tokens_to_ids(t)
            assert torch.equal(loaded.get_input_embeddings().weight[i], model.get_input_embeddings().weight[i])


# ----------------------------------------------------------------------------------------------------------------
# published-file safety, the original's embedding rows, and what the old code can read
# ----------------------------------------------------------------------------------------------------------------


def test_a_modality_whose_projector_the_file_lacks_is_refused(tiny_base, tmp_path, capsys):
    """The published 2024 file has no pose projector: feeding pose would read an untrained projector."""
    import numpy as np

    from llavidal.cli import main
    from llavidal.inference import answer

    torch.save(_layout_file(LAYOUT_2024, VALUES, pose=False), tmp_path / "p2024.bin")
    model, tok = load_pretrained(tiny_base, projector=tmp_path / "p2024.bin", device="cpu", dtype=torch.float32)
    assert model.config.trained_modalities == ["video", "object"] and model.config.tokenization == "original"
    pose = np.zeros((4, 216), np.float32)
    with pytest.raises(ValueError, match="pose features given, but the loaded weights have no trained pose "
                                         "projector .trained: video, object.*--allow-untrained-modality"):
        answer(model, tok, "What happens?", pose=pose, max_new_tokens=2)
    assert isinstance(answer(model, tok, "What happens?", video=np.zeros((4, 1024), np.float32), max_new_tokens=2),
                      str)
    model.allow_untrained_modality = True
    assert isinstance(answer(model, tok, "What happens?", pose=pose, max_new_tokens=2), str)
    np.save(tmp_path / "pose.npy", pose)
    base = ["infer", "--base", str(tiny_base), "--projector", str(tmp_path / "p2024.bin"), "--pose",
            str(tmp_path / "pose.npy"), "-q", "What?", "--max-new-tokens", "2", "--no-stream", "--device", "cpu"]
    assert main(base) == 2 and "no trained pose projector" in capsys.readouterr().err
    assert main(base + ["--allow-untrained-modality"]) == 0
    # a bare base folder records nothing: no check (every projector but video's is random there anyway)
    bare, _ = load_pretrained(tiny_base, device="cpu", dtype=torch.float32)
    assert bare.config.trained_modalities is None


def test_differing_base_rows_are_reported_and_can_be_taken(tiny_base, tmp_path, caplog):
    import logging

    sd = _layout_file(LAYOUT_CURRENT, VALUES)
    torch.save(sd, tmp_path / "p.bin")
    with caplog.at_level(logging.WARNING):
        model, _ = load_pretrained(tiny_base, projector=tmp_path / "p.bin", device="cpu", dtype=torch.float32)
    assert f"{N_BASE} of the file's {N_BASE} base embedding rows differ" in caplog.text
    assert "--use-file-embeddings" in caplog.text
    assert not torch.equal(model.get_input_embeddings().weight[:N_BASE], sd["model.embed_tokens.weight"][:N_BASE])
    model, _ = load_pretrained(tiny_base, projector=tmp_path / "p.bin", device="cpu", dtype=torch.float32,
                               use_file_embeddings=True)
    assert torch.equal(model.get_input_embeddings().weight[:N_BASE], sd["model.embed_tokens.weight"][:N_BASE])


def test_legacy_export_loads_the_way_the_original_trainer_reads_it(tiny, tmp_path):
    """The original's --pretrain_mm_mlp_adapter keys each projector's tensors by their last dotted part, the last
    one winning: the embedding matrix must come before the projectors."""
    model, _ = tiny
    path = export_legacy_projector(model, tmp_path / "mm_projector.bin")
    sd = torch.load(path, weights_only=True)
    assert next(iter(sd)) == "model.embed_tokens.weight"
    inner = model.get_model()
    for name, attr in (("video", "mm_projector"), ("object", "mm_projector_forobject"),
                       ("pose", "mm_projector_forpose")):
        if name == "video":
            keep = {k: v for k, v in sd.items() if "pose" not in k and "object" not in k}
        else:
            keep = {k: v for k, v in sd.items() if name in k}
        by_last = {k.split(".")[-1]: v for k, v in keep.items()}  # as the old code builds it
        proj = getattr(inner, attr)
        assert set(by_last) == {"weight", "bias"}
        assert torch.equal(by_last["weight"], proj.weight) and torch.equal(by_last["bias"], proj.bias), name


def test_saved_folders_keep_the_sentencepiece_model(tiny_base, tmp_path):
    """Our folders (full and adapter-only) carry tokenizer.model, so the original release's ids (cut by the
    sentencepiece model itself) are available from them as from the base folder."""
    from llavidal.model.checkpoint import save_adapter_folder
    from llavidal.prompting import encode_text

    model, tok = load_pretrained(tiny_base, device="cpu")
    text = "USER: what now?\n<vid_start><vid_patch><vid_end> ASSISTANT:"
    want = encode_text(tok, text, "original")
    save_pretrained(model, tok, tmp_path / "full")
    save_adapter_folder(model, tok, tmp_path / "adapter", tiny_base)
    for folder in ("full", "adapter"):
        assert (tmp_path / folder / "tokenizer.model").is_file()
        _, tok2 = load_pretrained(tmp_path / folder, device="cpu")
        assert encode_text(tok2, text, "original") == want

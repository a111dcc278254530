"""The feature splice: projected rows land on their patch positions, text embeddings stay, gradients are right."""
from __future__ import annotations

import pytest
import torch

from llavidal.constants import MODALITIES


def span(tok, modality, n, start_end=True):
    m = MODALITIES[modality]
    ids = [tok.convert_tokens_to_ids(m.patch_token)] * n
    if start_end:
        ids = [tok.convert_tokens_to_ids(m.start_token)] + ids + [tok.convert_tokens_to_ids(m.end_token)]
    return ids


def text(tok, s):
    return tok(s, add_special_tokens=False).input_ids


def test_projected_rows_land_on_patch_positions(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    video, obj, pose = torch.randn(5, 1024), torch.randn(2, 8, 512), torch.randn(3, 216)
    ids = ([1] + text(tok, "Look") + span(tok, "video", 5) + text(tok, "and") + span(tok, "object", 16)
           + span(tok, "pose", 3) + text(tok, "done"))
    input_ids = torch.tensor([ids])
    emb = model.embed_multimodal(input_ids, video_features=video, object_features=obj, pose_features=pose)[0]
    plain = model.get_input_embeddings()(input_ids)[0]
    proj = model.get_model()
    expect = {
        "video": proj.mm_projector(video),
        "object": proj.mm_projector_forobject(obj.reshape(-1, 512)),  # object-major: obj0 frames 0..7, obj1 ...
        "pose": proj.mm_projector_forpose(pose),
    }
    covered = torch.zeros(len(ids), dtype=torch.bool)
    for name, rows in expect.items():
        pos = (input_ids[0] == tok.convert_tokens_to_ids(MODALITIES[name].patch_token)).nonzero().flatten()
        assert len(pos) == rows.shape[0]
        torch.testing.assert_close(emb[pos], rows, rtol=0, atol=0)
        covered[pos] = True
    # every other position (text, bos, start/end tokens) keeps its token embedding exactly
    torch.testing.assert_close(emb[~covered], plain[~covered], rtol=0, atol=0)
    assert emb.shape == plain.shape  # sequence length unchanged


def test_any_order_and_subset_per_sample_in_one_batch(tiny):
    """Sample 0: pose then video; sample 1: objects only (3 objects); sample 2: video only. Packed rows."""
    model, tok = tiny
    torch.manual_seed(1)
    v0, p0, o1, v2 = torch.randn(4, 1024), torch.randn(2, 216), torch.randn(3, 8, 512), torch.randn(6, 1024)
    s0 = [1] + span(tok, "pose", 2) + text(tok, "then") + span(tok, "video", 4)
    s1 = [1] + text(tok, "objects") + span(tok, "object", 24)
    s2 = [1] + span(tok, "video", 6) + text(tok, "x")
    L = max(map(len, (s0, s1, s2)))
    batch = torch.tensor([[0] * (L - len(s)) + s for s in (s0, s1, s2)])  # left padding with <unk>
    emb = model.embed_multimodal(batch, video_features=[v0, None, v2], object_features=[None, o1, None],
                                 pose_features=[p0, None, None])
    # same as one sample at a time
    for i, (s, feats) in enumerate([(s0, dict(video_features=[v0], pose_features=[p0])),
                                    (s1, dict(object_features=[o1])), (s2, dict(video_features=[v2]))]):
        single = model.embed_multimodal(torch.tensor([s]), **feats)[0]
        torch.testing.assert_close(emb[i, L - len(s):], single, rtol=0, atol=0)
    # padding positions are untouched token embeddings of the pad id
    pad = model.get_input_embeddings().weight[0]
    shortest = min(range(3), key=lambda i: len((s0, s1, s2)[i]))
    assert len((s0, s1, s2)[shortest]) < L
    assert torch.equal(emb[shortest, 0], pad)


def test_dense_batch_tensor_equals_packed_rows(tiny):
    model, tok = tiny
    torch.manual_seed(2)
    video = torch.randn(2, 3, 1024)
    ids = torch.tensor([[1] + span(tok, "video", 3)] * 2)
    a = model.embed_multimodal(ids, video_features=video)
    b = model.embed_multimodal(ids, video_features=video.reshape(-1, 1024))
    c = model.embed_multimodal(ids, video_features=[video[0], video[1]])
    assert torch.equal(a, b) and torch.equal(a, c)


def test_forward_logits_match_manual_inputs_embeds(tiny):
    model, tok = tiny
    torch.manual_seed(3)
    video = torch.randn(4, 1024)
    ids = torch.tensor([[1] + text(tok, "What") + span(tok, "video", 4) + text(tok, "is it?")])
    out = model(ids, video_features=video).logits
    ref = model(inputs_embeds=model.embed_multimodal(ids, video_features=video)).logits
    torch.testing.assert_close(out, ref)
    # the original keyword still works
    legacy = model(ids, video_spatio_temporal_features=video.unsqueeze(0)).logits
    torch.testing.assert_close(out, legacy)
    # features change the output (the splice is not a no-op)
    other = model(ids, video_features=video + 1).logits
    assert not torch.allclose(out, other)


def test_row_count_mismatch_is_a_clear_error(tiny):
    model, tok = tiny
    ids = torch.tensor([[1] + span(tok, "video", 3)])
    with pytest.raises(ValueError, match=r"3 <vid_patch> tokens but 2 feature rows"):
        model(ids, video_features=torch.randn(2, 1024))
    with pytest.raises(ValueError, match=r"3 <vid_patch> tokens but 0 feature rows"):
        model(ids)  # patch tokens without features would silently use garbage embeddings
    with pytest.raises(ValueError, match=r"0 <pose_patch> tokens but 4 feature rows"):
        model(torch.tensor([[1] + text(tok, "hi")]), pose_features=torch.randn(4, 216))
    with pytest.raises(ValueError, match=r"width 512, expected 1024"):
        model(ids, video_features=torch.randn(3, 512))


def test_gradients_reach_exactly_the_trainable_parts(tiny):
    model, tok = tiny
    from llavidal.train.modes import set_trainable

    set_trainable(model, "projector", ["video", "pose"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted([
        "model.embed_tokens.rows", "model.mm_projector.weight", "model.mm_projector.bias",
        "model.mm_projector_forpose.weight", "model.mm_projector_forpose.bias",
    ])
    torch.manual_seed(4)
    ids = torch.tensor([[1] + text(tok, "Q") + span(tok, "video", 3) + span(tok, "pose", 2) + text(tok, "answer")])
    labels = ids.clone()
    labels[:, :-2] = -100
    out = model(ids, labels=labels, video_features=torch.randn(3, 1024), pose_features=torch.randn(2, 216))
    out.loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    emb = model.get_input_embeddings()
    assert emb.rows.shape == (4, 64)  # exactly the start/end rows of the two trained modalities
    assert emb.ids.tolist() == [tok.convert_tokens_to_ids(t)
                                for t in ("<vid_start>", "<vid_end>", "<pose_start>", "<pose_end>")]
    row_grad = emb.rows.grad.abs().sum(1)
    used = [tok.convert_tokens_to_ids(t) for t in ("<vid_start>", "<vid_end>", "<pose_start>", "<pose_end>")]
    assert all(row_grad[k] > 0 for k, tid in enumerate(emb.ids.tolist()) if tid in used)  # rows in the prompt learn
    before = emb.weight.clone()
    with torch.no_grad():
        emb.rows += 1.0
    merged = emb.weight
    assert torch.equal(merged[emb.ids], before[emb.ids] + 1.0)
    others = torch.ones(len(merged), dtype=torch.bool)
    others[emb.ids] = False
    assert torch.equal(merged[others], before[others])
    assert model.get_model().mm_projector.weight.grad.abs().sum() > 0
    assert model.get_model().mm_projector_forpose.weight.grad.abs().sum() > 0


def test_bf16_forward_on_cpu(tiny):
    model, tok = tiny
    model.to(torch.bfloat16)
    ids = torch.tensor([[1] + span(tok, "video", 2)])
    out = model(ids, video_features=torch.randn(2, 1024))  # fp32 features are cast to the projector dtype
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()

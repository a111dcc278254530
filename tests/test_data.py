"""Training data: label masks, both JSON formats, missing-file policies, over-long samples, the collator, masking,
the feature store (docs/design.md#training-data, docs/design.md#template, docs/design.md#differences)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from helpers_train import POSE_ROWS, VIDEO_ROWS, synthetic_data
from llavidal.constants import IGNORE_INDEX, MODALITIES
from llavidal.data import ADLXDataset, DataCollator, DataError, DataIssueLog, FeatureStore, pack_folder, read_records
from llavidal.features import save_feature
from llavidal.prompting import VICUNA_V1_1

SYSTEM = VICUNA_V1_1.system


@pytest.fixture(scope="module")
def mt(tiny_base):
    from llavidal import load_pretrained

    model, tok = load_pretrained(tiny_base, device="cpu", dtype=torch.float32, attn_implementation="eager")
    return model.eval(), tok


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("synth_data"))


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of labelled (non -100) positions."""
    out, start = [], None
    for i, v in enumerate(labels.tolist() + [IGNORE_INDEX]):
        if v != IGNORE_INDEX and start is None:
            start = i
        elif v == IGNORE_INDEX and start is not None:
            out.append((start, i))
            start = None
    return out


def tid(tok, name):
    return tok.convert_tokens_to_ids(name)


# ==================================================================== 1. label masks
def test_multiturn_labels_cover_only_answers_and_eos(mt, tmp_path):
    model, tok = mt
    rng = np.random.default_rng(0)
    save_feature(rng.standard_normal((3, 1024)).astype(np.float16), tmp_path / "v" / "a.pkl")
    save_feature(rng.standard_normal((2, 8, 512)).astype(np.float32), tmp_path / "o" / "a_obj.pkl")
    save_feature(rng.standard_normal((2, 216)).astype(np.float32), tmp_path / "p" / "a_pose.pkl")
    save_feature(rng.standard_normal((4, 1024)).astype(np.float16), tmp_path / "v" / "b.pkl")
    records = [
        {"id": "a", "video": "a.pkl", "object": "a_obj.pkl", "pose": "a_pose.pkl", "conversations": [
            {"from": "human", "value": "What is he doing?\n<video><object><human_pose>"},
            {"from": "gpt", "value": "He drinks water."},
            {"from": "human", "value": "And then?"},
            {"from": "gpt", "value": "He sits down."},
            {"from": "human", "value": "Where?"},
            {"from": "gpt", "value": "In the kitchen."}]},
        {"id": "b", "video": "b.pkl", "conversations": [
            {"from": "human", "value": "<video>\nDescribe it."}, {"from": "gpt", "value": "A person walks."}]},
    ]
    ds = ADLXDataset(read_records(write_json(tmp_path / "t.json", records)), tok, model.config,
                     {"video": tmp_path / "v", "object": tmp_path / "o", "pose": tmp_path / "p"})
    a = ds[0]
    ids, labels = a["input_ids"], a["labels"]
    assert ids.shape == labels.shape

    # the whole prompt, as text: the vicuna v1.1 template with the spans expanded from the files' row counts
    span = ("<vid_start>" + "<vid_patch>" * 3 + "<vid_end>" + "<object_start>" + "<object_patch>" * 16
            + "<object_end>" + "<pose_start>" + "<pose_patch>" * 2 + "<pose_end>")
    assert tok.decode(ids) == (
        f"<s> {SYSTEM} USER: What is he doing?\n{span} ASSISTANT: He drinks water.</s> USER: And then? "
        "ASSISTANT: He sits down.</s> USER: Where? ASSISTANT: In the kitchen.</s>")

    # labelled = exactly the three answers, each with its </s>; labels equal the ids there
    spans = runs(labels)
    assert [tok.decode(ids[s:e]) for s, e in spans] == ["He drinks water.</s>", "He sits down.</s>",
                                                        "In the kitchen.</s>"]
    for s, e in spans:
        assert torch.equal(labels[s:e], ids[s:e])
        assert int(ids[e - 1]) == tok.eos_token_id == 2
        assert tok.decode(ids[:s]).endswith("ASSISTANT:")  # the tag itself is ignored
    # everything else is ignored: bos, system, user turns, spans (start/patch/end of every modality), tags
    assert labels[0] == IGNORE_INDEX and ids[0] == tok.bos_token_id == 1
    special = {tid(tok, t) for m in MODALITIES.values() for t in (m.start_token, m.patch_token, m.end_token)}
    in_span = torch.tensor([int(i) in special for i in ids])
    assert int(in_span.sum()) == 3 + 2 + 16 + 2 + 2 + 2
    assert (labels[in_span] == IGNORE_INDEX).all()
    n_labelled = sum(e - s for s, e in spans)
    assert int((labels != IGNORE_INDEX).sum()) == n_labelled
    first_user = tok.decode(ids[: spans[0][0]])
    assert first_user.startswith(f"<s> {SYSTEM} USER: What is he doing?")

    # through the collator: right padding with the pad id, labels -100 and attention 0 on padding
    b = ds[1]
    assert tok.decode(b["input_ids"][slice(*runs(b["labels"])[0])]) == "A person walks.</s>"
    batch = DataCollator(tok.pad_token_id)([a, b])
    L = len(ids)
    nb = len(b["input_ids"])
    assert nb < L
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, L)
    assert torch.equal(batch["labels"][0], labels) and torch.equal(batch["input_ids"][0], ids)
    assert (batch["input_ids"][1, nb:] == tok.pad_token_id).all() and tok.pad_token_id == 0
    assert (batch["labels"][1, nb:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].tolist() == [1] * nb + [0] * (L - nb)
    assert batch["attention_mask"][0].all()
    decoded = [tok.decode(batch["input_ids"][1][s:e]) for s, e in runs(batch["labels"][1])]
    assert decoded == ["A person walks.</s>"]


# ==================================================================== 2. formats
def test_older_video_id_q_a_format_is_video_only(mt, tmp_path):
    model, tok = mt
    save_feature(np.ones((4, 1024), np.float16), tmp_path / "v" / "vid_7.pkl")
    save_feature(np.ones((2, 216), np.float32), tmp_path / "p" / "vid_7_pose.pkl")
    path = write_json(tmp_path / "old.json", [{"video_id": "vid_7", "q": "What happens?", "a": "He claps."}])
    recs = read_records(path)
    assert recs == [{"id": "vid_7", "video": "vid_7.pkl", "turns": [("What happens?\n<video>", "He claps.")]}]
    # pose folder active, but an old-format record has no pose: no pose span, no pose features
    ds = ADLXDataset(recs, tok, model.config, {"video": tmp_path / "v", "pose": tmp_path / "p"})
    s = ds[0]
    assert s["pose"] is None and s["object"] is None
    assert s["video"].shape == (4, 1024) and s["video"].dtype == torch.float16
    assert tok.decode(s["input_ids"]) == (f"<s> {SYSTEM} USER: What happens?\n<vid_start>" + "<vid_patch>" * 4
                                          + "<vid_end> ASSISTANT: He claps.</s>")
    assert [tok.decode(s["input_ids"][a:b]) for a, b in runs(s["labels"])] == ["He claps.</s>"]


def test_current_format_record_fields(tmp_path):
    path = write_json(tmp_path / "cur.json", [
        {"id": "001_video_001", "video": "001_video_001.pkl", "object": "o.pkl", "pose": "p.pkl",
         "conversations": [{"from": "human", "value": "Q?\n<video><object><human_pose>"},
                           {"from": "gpt", "value": "A."}]},
        {"video": "x.pkl", "conversations": [{"from": "human", "value": "<video>\nQ2?"},
                                             {"from": "gpt", "value": "B"}]},
    ])
    recs = read_records(path)
    assert recs[0] == {"id": "001_video_001", "video": "001_video_001.pkl", "object": "o.pkl", "pose": "p.pkl",
                       "turns": [("Q?\n<video><object><human_pose>", "A.")]}
    assert recs[1] == {"id": "x.pkl", "video": "x.pkl", "turns": [("<video>\nQ2?", "B")]}


GOOD = {"id": "ok", "video": "ok.pkl", "conversations": [{"from": "human", "value": "q <video>"},
                                                           {"from": "gpt", "value": "a"}]}


@pytest.mark.parametrize("bad, why", [
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}]}, "alternating"),
    ({"id": "x", "conversations": []}, "alternating"),
    ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "roles"),
    ({"id": "x", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]}, "strings"),
    ({"id": "x", "conversations": ["q", "a"]}, "objects"),
    ({"video_id": "x", "q": "only a question"}, "neither"),
    ({"question": "q", "answer": "a"}, "neither"),
    (["not", "a", "record"], "expected an object"),
])
def test_malformed_record_names_file_and_index(tmp_path, bad, why):
    path = write_json(tmp_path / "bad.json", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError, match=why) as e:
        read_records(path)
    assert str(path) in str(e.value) and "record 2" in str(e.value)


def test_unreadable_json_files(tmp_path):
    (tmp_path / "broken.json").write_text('[{"id": 1,')
    with pytest.raises(DataError, match="broken.json: invalid JSON"):
        read_records(tmp_path / "broken.json")
    write_json(tmp_path / "dict.json", {"0": GOOD})
    with pytest.raises(DataError, match="dict.json: expected a list of records"):
        read_records(tmp_path / "dict.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_records(tmp_path / "nope.json")


# ==================================================================== 3. missing / unreadable files
def _policy_world(tmp_path):
    """5 records: r0 fine, r1 video file missing, r2 pose pickle truncated, r3 object file missing, r4 fine."""
    rng = np.random.default_rng(3)
    recs = []
    for i in range(5):
        rid = f"r{i}"
        if i != 1:
            save_feature(rng.standard_normal((3, 1024)).astype(np.float16), tmp_path / "v" / f"{rid}.pkl")
        if i != 3:
            save_feature(rng.standard_normal((1 + i % 2, 8, 512)).astype(np.float32), tmp_path / "o" / f"{rid}_o.pkl")
        save_feature(rng.standard_normal((2, 216)).astype(np.float32), tmp_path / "p" / f"{rid}_p.pkl")
        recs.append({"id": rid, "video": f"{rid}.pkl", "object": f"{rid}_o.pkl", "pose": f"{rid}_p.pkl",
                     "conversations": [{"from": "human", "value": f"Q{i}?\n<video><object><human_pose>"},
                                       {"from": "gpt", "value": f"Answer {i}."}]})
    raw = (tmp_path / "p" / "r2_p.pkl").read_bytes()
    (tmp_path / "p" / "r2_p.pkl").write_bytes(raw[: len(raw) // 2])  # a truncated pickle
    with pytest.raises(Exception):
        pickle.loads((tmp_path / "p" / "r2_p.pkl").read_bytes())
    return read_records(write_json(tmp_path / "t.json", recs)), {m[0]: tmp_path / m[0] for m in ("v", "o", "p")}


def _ds(mt, recs, dirs, **kw):
    model, tok = mt
    return ADLXDataset(recs, tok, model.config, {"video": dirs["v"], "object": dirs["o"], "pose": dirs["p"]}, **kw)


def test_missing_policy_error_names_record_and_file(mt, tmp_path):
    recs, dirs = _policy_world(tmp_path)
    ds = _ds(mt, recs, dirs)  # default policy: error
    assert ds[0]["video"].shape == (3, 1024)
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert "record 1" in msg and "r1" in msg and "r1.pkl" in msg and "not found" in msg and "--missing_features" in msg
    with pytest.raises(DataError) as e:
        ds[2]
    assert "record 2" in str(e.value) and "r2_p.pkl" in str(e.value) and "truncated or corrupt" in str(e.value)
    with pytest.raises(DataError, match=r"record 3 .*r3_o\.pkl"):
        ds[3]
    assert not ds.issues.counts  # errors are raised, not counted


def test_missing_policy_skip_replaces_and_counts(mt, tmp_path):
    recs, dirs = _policy_world(tmp_path)
    log_path = tmp_path / "issues" / "data_issues.rank0.jsonl"
    ds = _ds(mt, recs, dirs, missing="skip", issue_log=DataIssueLog(path=log_path))
    assert len(ds) == 5
    s = ds[1]  # r1, r2 and r3 are unusable: the next usable one is r4
    r4 = ds.build(4)
    assert torch.equal(s["input_ids"], r4["input_ids"]) and torch.equal(s["video"], r4["video"])
    assert "Answer 4." in mt[1].decode(s["input_ids"])
    assert dict(ds.issues.counts) == {"missing_skip": 2, "unreadable_skip": 1}
    events = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [(e["kind"], e["index"], e["id"]) for e in events] == [
        ("missing_skip", 1, "r1"), ("unreadable_skip", 2, "r2"), ("missing_skip", 3, "r3")]
    assert "r2_p.pkl" in events[1]["detail"] and events[1]["detail"].startswith("pose:")
    ds[3]  # the same samples again (a second epoch): events repeat, unique counts do not
    ds[2]
    summary = DataIssueLog.summarise([log_path, tmp_path / "issues" / "absent.jsonl"])
    assert {k: v["samples"] for k, v in summary.items()} == {"missing_skip": 2, "unreadable_skip": 1}
    assert summary["missing_skip"]["examples"][0].startswith("r1: video:")
    # nothing usable at all: a clear error
    with pytest.raises(DataError, match="none of the 1 records is usable"):
        _ds(mt, [recs[1]], dirs, missing="skip")[0]


def test_missing_policy_zeros_uses_published_shapes_and_counts(mt, tmp_path):
    model, tok = mt
    recs, dirs = _policy_world(tmp_path)
    log_path = tmp_path / "data_issues.rank0.jsonl"
    ds = _ds(mt, recs, dirs, missing="zeros", issue_log=DataIssueLog(path=log_path))
    s1, s2, s3 = ds[1], ds[2], ds[3]
    assert s1["video"].shape == (356, 1024) and not s1["video"].any()  # published default shape, zeros
    assert s1["pose"].shape == (2, 216) and s1["pose"].abs().sum() > 0  # the other modalities are real
    assert int((s1["input_ids"] == tid(tok, "<vid_patch>")).sum()) == 356  # span follows the zero features
    assert s2["pose"].shape == (256, 216) and not s2["pose"].any()
    assert int((s2["input_ids"] == tid(tok, "<pose_patch>")).sum()) == 256
    assert s3["object"].shape == (1, 8, 512) and not s3["object"].any()
    assert int((s3["input_ids"] == tid(tok, "<object_patch>")).sum()) == 8
    assert dict(ds.issues.counts) == {"missing_zeros": 2, "unreadable_zeros": 1}
    ds[1]
    assert ds.issues.counts["missing_zeros"] == 3  # events
    summary = DataIssueLog.summarise([log_path])
    assert {k: v["samples"] for k, v in summary.items()} == {"missing_zeros": 2, "unreadable_zeros": 1}
    # a batch of real (float16) and zero (float32) video features packs into one float tensor
    batch = DataCollator(tok.pad_token_id)([ds[0], s1])
    assert batch["video_features"].shape == (3 + 356, 1024) and batch["video_features"].dtype == torch.float32
    assert batch["object_features"].shape == (8 + 16, 512)


def test_inactive_modality_and_absent_key_remove_placeholders(mt, tmp_path):
    model, tok = mt
    save_feature(np.ones((2, 1024), np.float16), tmp_path / "v" / "a.pkl")
    save_feature(np.ones((3, 216), np.float32), tmp_path / "p" / "a_p.pkl")
    recs = read_records(write_json(tmp_path / "t.json", [
        {"id": "a", "video": "a.pkl", "pose": "a_p.pkl", "object": "never_read.pkl", "conversations": [
            {"from": "human", "value": "Q?\n<video><object><human_pose>"}, {"from": "gpt", "value": "A."}]},
        {"id": "b", "video": "a.pkl", "conversations": [  # no pose key although the pose folder is active
            {"from": "human", "value": "<video><human_pose>\nQ?"}, {"from": "gpt", "value": "B."}]},
    ]))
    # object inactive (no folder): its placeholder goes, its file is never opened
    ds = ADLXDataset(recs, tok, model.config, {"video": tmp_path / "v", "pose": tmp_path / "p"})
    assert ds.modalities == ["video", "pose"]
    a, b = ds[0], ds[1]
    assert a["object"] is None and a["pose"].shape == (3, 216)
    assert tok.decode(a["input_ids"]) == (f"<s> {SYSTEM} USER: Q?\n<vid_start><vid_patch><vid_patch><vid_end>"
                                          "<pose_start><pose_patch><pose_patch><pose_patch><pose_end> "
                                          "ASSISTANT: A.</s>")
    assert b["pose"] is None and b["video"].shape == (2, 1024)
    assert tok.decode(b["input_ids"]) == (f"<s> {SYSTEM} USER: <vid_start><vid_patch><vid_patch><vid_end>\nQ? "
                                          "ASSISTANT: B.</s>")
    # no feature folder at all: text only, every placeholder removed
    ds0 = ADLXDataset(recs, tok, model.config, {"video": None})
    assert tok.decode(ds0[0]["input_ids"]) == f"<s> {SYSTEM} USER: Q?\n ASSISTANT: A.</s>"
    assert all(ds0[0][m] is None for m in ("video", "object", "pose"))
    assert not ds.issues.counts and not ds0.issues.counts


def test_modality_present_without_placeholder_is_an_error(mt, tmp_path):
    model, tok = mt
    save_feature(np.ones((2, 1024), np.float16), tmp_path / "v" / "a.pkl")
    recs = read_records(write_json(tmp_path / "t.json", [{"id": "a", "video": "a.pkl", "conversations": [
        {"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "A."}]}]))
    ds = ADLXDataset(recs, tok, model.config, {"video": tmp_path / "v"})
    with pytest.raises(DataError, match=r"record 0 \(a\).*0 <video> placeholders"):
        ds[0]


# ==================================================================== 4. over-long samples
def test_overlong_samples_are_dropped_and_counted_never_truncated(mt, tmp_path):
    model, tok = mt
    save_feature(np.ones((5, 1024), np.float16), tmp_path / "v" / "a.pkl")
    recs = read_records(write_json(tmp_path / "t.json", [
        {"id": f"s{i}", "video": "a.pkl", "conversations": [
            {"from": "human", "value": "Q?\n<video>"},
            {"from": "gpt", "value": "He walks." if i % 2 else " ".join(["He walks to the door."] * 30)}]}
        for i in range(4)]))
    short_len = len(ADLXDataset(recs, tok, model.config, {"video": tmp_path / "v"})[1]["input_ids"])
    long_len = len(ADLXDataset(recs, tok, model.config, {"video": tmp_path / "v"})[0]["input_ids"])
    assert long_len > short_len + 100
    log_path = tmp_path / "issues.jsonl"
    ds = ADLXDataset(recs, tok, model.config, {"video": tmp_path / "v"}, max_length=short_len,
                     issue_log=DataIssueLog(path=log_path))
    got = [ds[i] for i in range(4)]
    for s in got:  # every sample is a complete short one: nothing was cut
        assert len(s["input_ids"]) == short_len
        assert tok.decode(s["input_ids"]).endswith("<vid_end> ASSISTANT: He walks.</s>")
        assert int((s["input_ids"] == tid(tok, "<vid_patch>")).sum()) == 5
    assert ds.issues.counts["too_long_dropped"] == 2
    summary = DataIssueLog.summarise([log_path])
    assert summary["too_long_dropped"]["samples"] == 2
    assert f"{long_len} tokens > model_max_length {short_len}" in summary["too_long_dropped"]["examples"][0]
    # a limit that cuts into the span of every sample: nothing usable, an error instead of a truncated span
    tight = ADLXDataset(recs, tok, model.config, {"video": tmp_path / "v"}, max_length=short_len - 1)
    with pytest.raises(DataError, match="none of the 4 records is usable"):
        tight[0]


# ==================================================================== 5. collator + model on mixed batches
def test_collator_packs_mixed_modalities_and_forward_matches_per_sample(mt, tmp_path):
    model, tok = mt
    rng = np.random.default_rng(5)
    arrays = {
        "a": {"video": rng.standard_normal((3, 1024)).astype(np.float16),
              "object": rng.standard_normal((2, 8, 512)).astype(np.float32),
              "pose": rng.standard_normal((4, 216)).astype(np.float32)},
        "b": {"object": rng.standard_normal((3, 8, 512)).astype(np.float32)},  # objects only, 3 of them
        "c": {"video": rng.standard_normal((5, 1024)).astype(np.float16),
              "pose": rng.standard_normal((2, 216)).astype(np.float32)},  # no objects
    }
    recs = []
    for rid, feats in arrays.items():
        for m, arr in feats.items():
            save_feature(arr, tmp_path / m / f"{rid}_{m}.pkl")
        recs.append({"id": rid, **{m: f"{rid}_{m}.pkl" for m in feats}, "conversations": [
            {"from": "human", "value": "What now?\n<video><object><human_pose>"},
            {"from": "gpt", "value": f"Sample {rid} answer."}]})
    ds = ADLXDataset(read_records(write_json(tmp_path / "t.json", recs)), tok, model.config,
                     {m: tmp_path / m for m in ("video", "object", "pose")})
    samples = [ds[i] for i in range(3)]
    coll = DataCollator(tok.pad_token_id)
    batch = coll(samples)
    # packed rows per modality, batch order, no rows for samples without it
    assert torch.equal(batch["video_features"],
                       torch.from_numpy(np.concatenate([arrays["a"]["video"], arrays["c"]["video"]])))
    assert torch.equal(batch["object_features"], torch.from_numpy(np.concatenate(
        [arrays["a"]["object"].reshape(-1, 512), arrays["b"]["object"].reshape(-1, 512)])))
    assert batch["object_features"].shape == (16 + 24, 512)
    assert torch.equal(batch["pose_features"],
                       torch.from_numpy(np.concatenate([arrays["a"]["pose"], arrays["c"]["pose"]])))
    for m, patch in (("video", "<vid_patch>"), ("object", "<object_patch>"), ("pose", "<pose_patch>")):
        assert int((batch["input_ids"] == tid(tok, patch)).sum()) == batch[f"{m}_features"].shape[0]
    # presence is decided per sample, not from the first sample
    only_b_c = coll([samples[1], samples[2]])
    assert only_b_c["object_features"].shape == (24, 512) and only_b_c["video_features"].shape == (5, 1024)
    assert "object_features" not in coll([samples[2]])

    feats = {k: v for k, v in batch.items() if k.endswith("_features")}
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    **feats)
        assert torch.isfinite(out.loss)
        for i, s in enumerate(samples):
            single = coll([s])
            one = model(input_ids=single["input_ids"], attention_mask=single["attention_mask"],
                        **{k: v for k, v in single.items() if k.endswith("_features")})
            n = len(s["input_ids"])
            torch.testing.assert_close(out.logits[i, :n], one.logits[0], rtol=1e-4, atol=1e-4)
        # the rows land in their own sample: changing b's object rows (rows 16..39) changes b's logits only
        changed = dict(feats, object_features=feats["object_features"].clone())
        changed["object_features"][16:] += 1.0
        out2 = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **changed)
    n = [len(s["input_ids"]) for s in samples]
    assert len(set(n)) > 1  # padding really happened
    assert torch.equal(out2.logits[0, :n[0]], out.logits[0, :n[0]])
    assert torch.equal(out2.logits[2, :n[2]], out.logits[2, :n[2]])
    assert (out2.logits[1, :n[1]] - out.logits[1, :n[1]]).abs().max() > 1e-3


# ==================================================================== 6. mask probabilities
def test_mask_prob_one_zeroes_features_keeps_tokens(mt, synth):
    model, tok = mt
    recs = read_records(synth["train"])
    folders = {m: synth[f"{m}_folder"] for m in ("video", "object", "pose")}
    plain = ADLXDataset(recs, tok, model.config, folders)
    masked = ADLXDataset(recs, tok, model.config, folders,
                         mask_probs={"video": 1.0, "object": 1.0, "pose": 1.0})
    for i in range(len(recs)):
        p, q = plain[i], masked[i]
        assert torch.equal(p["input_ids"], q["input_ids"]) and torch.equal(p["labels"], q["labels"])
        for m in ("video", "object", "pose"):
            assert q[m].shape == p[m].shape and q[m].dtype == p[m].dtype
            assert not q[m].any() and p[m].any()
    with pytest.raises(ValueError, match="video_mask_prob"):
        ADLXDataset(recs, tok, model.config, folders, mask_probs={"video": 1.5})


def test_mask_prob_is_deterministic_for_a_seed(mt, synth):
    model, tok = mt
    recs = read_records(synth["train"])
    folders = {m: synth[f"{m}_folder"] for m in ("video", "object", "pose")}

    def pattern(seed, epoch=0, probs=None):
        ds = ADLXDataset(recs, tok, model.config, folders, seed=seed,
                         mask_probs=probs or {"video": 0.5, "pose": 0.5})
        ds.set_epoch(epoch)
        out = []
        for i in range(len(ds)):
            s = ds[i]
            out.append(tuple(int(not s[m].any()) for m in ("video", "object", "pose")))
        return out

    a = pattern(0)
    assert a == pattern(0)  # same seed, same masks
    assert all(x[1] == 0 for x in a)  # object prob 0: never masked
    n_masked = sum(x[0] for x in a) + sum(x[2] for x in a)
    assert 4 <= n_masked <= 28  # about half of 32 draws
    assert a != pattern(1)  # another seed, other masks
    assert a != pattern(0, epoch=1)  # another epoch, other masks (reproducible on resume through set_epoch)
    assert pattern(0, epoch=1) == pattern(0, epoch=1)


# ==================================================================== 13. feature store (dataset level)
def test_feature_store_gives_identical_batches(mt, synth, tmp_path):
    model, tok = mt
    recs = read_records(synth["train"])
    folders = {m: synth[f"{m}_folder"] for m in ("video", "object", "pose")}
    stores = {}
    for m, f in folders.items():
        res = pack_folder(f, tmp_path / f"{m}_store", modality=m)
        assert res["packed"] == 16 + 4 and not res["failed"]
        stores[m] = tmp_path / f"{m}_store"
    a = ADLXDataset(recs, tok, model.config, folders)
    b = ADLXDataset(recs, tok, model.config, stores)
    assert all(isinstance(b.sources[m], FeatureStore) for m in stores)
    coll = DataCollator(tok.pad_token_id)
    for i in range(0, len(recs), 4):
        x, y = coll([a[j] for j in range(i, i + 4)]), coll([b[j] for j in range(i, i + 4)])
        assert set(x) == set(y) == {"input_ids", "labels", "attention_mask", "video_features", "object_features",
                                    "pose_features"}
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
    assert x["video_features"].dtype == torch.float16 and x["video_features"].shape == (4 * VIDEO_ROWS, 1024)
    assert x["pose_features"].shape == (4 * POSE_ROWS, 216)


def test_feature_store_lists_unreadable_files_and_they_count_as_missing(mt, tmp_path):
    model, tok = mt
    save_feature(np.ones((2, 1024), np.float16), tmp_path / "v" / "a.pkl")
    save_feature(np.ones((2, 1024), np.float16), tmp_path / "v" / "b.pkl")
    raw = (tmp_path / "v" / "b.pkl").read_bytes()
    (tmp_path / "v" / "b.pkl").write_bytes(raw[:40])
    res = pack_folder(tmp_path / "v", tmp_path / "store", modality="video")
    assert res["packed"] == 1 and list(res["failed"]) == ["b.pkl"]
    assert "b.pkl" in json.loads((tmp_path / "store" / "failures.json").read_text())
    recs = read_records(write_json(tmp_path / "t.json", [
        {"id": x, "video": f"{x}.pkl", "conversations": [{"from": "human", "value": "<video>"},
                                                         {"from": "gpt", "value": "A."}]} for x in "ab"]))
    ds = ADLXDataset(recs, tok, model.config, {"video": tmp_path / "store"}, missing="zeros")
    assert ds[1]["video"].shape == (356, 1024) and dict(ds.issues.counts) == {"missing_zeros": 1}
    with pytest.raises(DataError, match=r"record 1 b \(video: b\.pkl\).*no entry 'b\.pkl'"):
        ADLXDataset(recs, tok, model.config, {"video": tmp_path / "store"})[1]


@pytest.mark.parametrize("field,value", [("video", "../../etc/passwd.pkl"), ("pose", "/abs/p.pickle"),
                                         ("object", "a/../../b.pkl")])
def test_record_paths_that_leave_their_folder_are_refused(tmp_path, field, value):
    from llavidal.data.dataset import DataError, read_records

    records = [{"id": "ok", "video": "v.pkl", "conversations": [{"from": "human", "value": "Q\n<video>"},
                                                                {"from": "gpt", "value": "A"}]},
               {"id": "bad", field: value, "conversations": [{"from": "human", "value": "Q"},
                                                             {"from": "gpt", "value": "A"}]}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"record 1 \(id 'bad'\): {field} file .* leaves the {field} folder"):
        read_records(path)
    path.write_text(json.dumps([{"video_id": "../x", "q": "Q", "a": "A"}]))
    with pytest.raises(DataError, match="record 0: video_id '../x' leaves the video folder"):
        read_records(path)

"""The generation engine against plain ``model.generate`` on the tiny model: identical greedy tokens for batches of
mixed lengths and every modality subset, </s> and max_new_tokens, suppressed modality tokens, repetition penalty,
seeded sampling, continuous vs static batching, cancellation, the queue bound and failing requests."""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch

from helpers_generation import chain_model
from llavidal.engine import Engine, EngineBusy, EngineConfig, GenerationRequest
from llavidal.inference import GenerationOptions, Query, make_request, prepare_inputs

QUESTIONS = ["What is the person doing?", "Describe the video in detail.", "Objects?",
             "And then what happens next after the person stands up from the sofa in the living room?", "Hi",
             "Which hand?", "Order of actions?"]


def _features(rng):
    return {"video": rng.standard_normal((356, 1024)).astype(np.float16),
            "object": rng.standard_normal((2, 8, 512)).astype(np.float32),
            "pose": rng.standard_normal((256, 216)).astype(np.float32)}


def _queries(rng, n=None):
    """One query per modality subset (none, each alone, pairs, all three), with questions of different lengths."""
    feats = _features(rng)
    subsets = [c for k in range(4) for c in itertools.combinations(("video", "object", "pose"), k)]
    qs = [Query(QUESTIONS[i % len(QUESTIONS)], **{m: feats[m] for m in subset}) for i, subset in enumerate(subsets)]
    return qs[:n] if n else qs


def _generate_ids(model, tok, queries, opts) -> list[list[int]]:
    """Today's path: one left-padded ``model.generate`` call; new tokens up to (without) </s>."""
    batch = prepare_inputs(model, tok, queries, opts)
    with torch.inference_mode():
        out = model.generate(**batch, **opts.generate_kwargs(tok))
    rows = []
    for row in out.tolist():
        rows.append(row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    return rows


def _engine_ids(model, tok, queries, opts, **cfg) -> list[list[int]]:
    engine = Engine(model, tok, EngineConfig(**cfg))
    try:
        return [r.token_ids for r in engine.generate([make_request(model, tok, q, opts) for q in queries])]
    finally:
        engine.close()


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_greedy_tokens_equal_generate_for_every_modality_subset(tiny, rng, slots):
    model, tok = tiny
    queries = _queries(rng)
    opts = GenerationOptions(max_new_tokens=24)
    want = _generate_ids(model, tok, queries, opts)
    got = _engine_ids(model, tok, queries, opts, max_batch_size=slots)
    assert got == want
    assert len({tuple(x) for x in want}) > 1  # different inputs, different replies


def test_static_windows_and_eager_attention_give_the_same_tokens(tiny, rng):
    model, tok = tiny
    queries = _queries(rng, 4)
    opts = GenerationOptions(max_new_tokens=16)
    want = _generate_ids(model, tok, queries, opts)
    assert _engine_ids(model, tok, queries, opts, max_batch_size=3, static_window=True) == want
    model.config._attn_implementation = "eager"
    assert _engine_ids(model, tok, queries, opts, max_batch_size=3) == _generate_ids(model, tok, queries, opts)


def test_compiled_decode_step_gives_the_same_tokens(tiny, rng):
    """torch.compile of the decode step (the "eager" backend checks the capture of the slot cache in seconds;
    inductor is the same graph, compiled)."""
    model, tok = tiny
    queries = _queries(rng, 3)
    opts = GenerationOptions(max_new_tokens=12)
    got = _engine_ids(model, tok, queries, opts, max_batch_size=2, compile=True, compile_backend="eager")
    assert got == _generate_ids(model, tok, queries, opts)


def test_small_prefill_budget_splits_admissions_without_changing_tokens(tiny, rng):
    model, tok = tiny
    queries = _queries(rng, 5)
    opts = GenerationOptions(max_new_tokens=10)
    engine = Engine(model, tok, EngineConfig(max_batch_size=5, max_prefill_tokens=64))
    got = [r.token_ids for r in engine.generate([make_request(model, tok, q, opts) for q in queries])]
    assert engine.stats.prefill_forwards == 5  # every prompt is longer than the budget: one forward each
    assert got == _generate_ids(model, tok, queries, opts)


def test_repetition_penalty_matches_generate(tiny, rng):
    """The penalty covers the tokens generated so far (with a prompt given as embeddings ``generate`` has no
    prompt ids either). ``generate`` is compared one query at a time: in a left-padded batch it also skips, in
    each row, as many generated tokens as the row has padding (transformers' ``prompt_ignore_length`` measures
    the prompt's padding but indexes the generated ids), so its batched replies depend on the batch."""
    model, tok = tiny
    queries = _queries(rng, 4)
    opts = GenerationOptions(max_new_tokens=48, repetition_penalty=1.5)
    want = [_generate_ids(model, tok, [q], opts)[0] for q in queries]
    assert want != _generate_ids(model, tok, queries, GenerationOptions(max_new_tokens=48))  # the penalty acts
    assert _engine_ids(model, tok, queries, opts, max_batch_size=2) == want


def test_eos_and_max_new_tokens(tiny, tiny_base):
    model, tok = tiny
    chain_model(model, tok, ["▁drinks", "▁water"], "▁kitchen")
    feats = np.zeros((4, 1024), np.float32)
    engine = Engine(model, tok, EngineConfig(max_batch_size=2))
    reqs = [make_request(model, tok, Query("hi", video=feats), GenerationOptions(max_new_tokens=n)) for n in (30, 1, 2)]
    full, one, two = engine.generate(reqs)
    words = [tok(w, add_special_tokens=False).input_ids[-1] for w in ("▁drinks", "▁water")]
    assert full.token_ids == words and full.finish_reason == "stop"  # </s> ends it and is not returned
    assert one.token_ids == words[:1] and one.finish_reason == "length"
    assert two.token_ids == words and two.finish_reason == "length"
    assert tok.decode(full.token_ids, skip_special_tokens=True) == "drinks water"


def test_modality_tokens_are_never_generated(tiny, rng):
    model, tok = tiny
    video_patch = model.config.token_id("<vid_patch>")
    with torch.no_grad():  # make a modality token the most likely next token everywhere
        model.get_output_embeddings().weight[video_patch] = 50 * model.get_output_embeddings().weight.abs().max()
    queries = _queries(rng, 3)
    opts = GenerationOptions(max_new_tokens=8)
    got = _engine_ids(model, tok, queries, opts)
    assert got == _generate_ids(model, tok, queries, opts)
    suppressed = set(model.never_generated_token_ids())
    assert video_patch in suppressed and not suppressed & {t for row in got for t in row}


def test_sampling_is_reproducible_per_seed_whoever_shares_the_batch(tiny, rng):
    model, tok = tiny
    queries = _queries(rng, 4)
    opts = GenerationOptions(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=11)
    alone = _engine_ids(model, tok, queries[:1], opts, max_batch_size=1)
    crowded = _engine_ids(model, tok, queries[1:] + queries[:1], opts, max_batch_size=4)  # another slot, others
    assert crowded[-1] == alone[0]
    other_seed = _engine_ids(model, tok, queries[:1], GenerationOptions(max_new_tokens=16, temperature=1.0, seed=12))
    greedy = _engine_ids(model, tok, queries[:1], GenerationOptions(max_new_tokens=16))
    assert other_seed != alone and alone != greedy
    # without a seed, torch's global generator picks one: torch.manual_seed makes it reproducible
    torch.manual_seed(5)
    a = _engine_ids(model, tok, queries[:2], GenerationOptions(max_new_tokens=16, temperature=1.0))
    torch.manual_seed(5)
    assert a == _engine_ids(model, tok, queries[:2], GenerationOptions(max_new_tokens=16, temperature=1.0))


def test_gumbel_noise_depends_only_on_seed_and_step():
    from llavidal.engine.sampling import gumbel_noise

    seed, step = torch.tensor([1, 2, 1, 3]), torch.tensor([0, 0, 0, 5])
    g = gumbel_noise(seed, step, 1000)
    assert torch.equal(g[0], g[2]) and not torch.equal(g[0], g[1]) and torch.isfinite(g).all()
    u = torch.exp(-torch.exp(-gumbel_noise(torch.arange(64), torch.zeros(64, dtype=torch.long), 4096)))
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005  # uniform underneath


def test_continuous_batching_refills_finished_slots(tiny, rng):
    """One long reply and several short ones on two slots: with refill, the short ones run beside the long one;
    a static batch waits for its longest row. Replies are the same either way."""
    model, tok = tiny
    queries = _queries(rng, 5)
    lengths = [40, 6, 6, 6, 6]
    reqs = lambda: [make_request(model, tok, q, GenerationOptions(max_new_tokens=n))  # noqa: E731
                    for q, n in zip(queries, lengths)]
    runs = {}
    for refill in (True, False):
        engine = Engine(model, tok, EngineConfig(max_batch_size=2, refill=refill))
        runs[refill] = ([r.token_ids for r in engine.generate(reqs())], engine.stats)
    (cont, s_cont), (stat, s_stat) = runs[True], runs[False]
    assert cont == stat
    assert s_cont.decode_steps < s_stat.decode_steps
    assert s_cont.slot_steps / s_cont.decode_steps > s_stat.slot_steps / s_stat.decode_steps  # busier slots


def test_cancel_frees_the_slot_and_the_queue_is_bounded(tiny):
    model, tok = tiny
    engine = Engine(model, tok, EngineConfig(max_batch_size=1, max_queue=1))
    long_opts = GenerationOptions(max_new_tokens=1500)
    streamed = []
    first = threading.Event()

    def on_tokens(ids):
        streamed.extend(ids)
        first.set()

    r = make_request(model, tok, Query("Describe the video."), long_opts, on_tokens=on_tokens)
    running = engine.submit(r)
    assert first.wait(30)
    waiting = engine.submit(make_request(model, tok, Query("Hi"), GenerationOptions(max_new_tokens=3)))
    with pytest.raises(EngineBusy) as busy:
        engine.submit(make_request(model, tok, Query("Hi"), GenerationOptions(max_new_tokens=3)))
    assert busy.value.retry_after >= 1
    running.cancel()
    res = running.result(timeout=30)
    assert res.finish_reason == "cancelled" and 0 < len(res.token_ids) < 1500
    assert streamed[:len(res.token_ids)] == res.token_ids[:len(streamed)]
    assert waiting.result(timeout=30).finish_reason in ("stop", "length")  # got the freed slot
    assert engine.stats.cancelled == 1
    deadline = time.time() + 10
    while engine.busy and time.time() < deadline:  # an idle engine keeps no thread
        time.sleep(0.01)
    assert not engine.busy


def test_bad_requests_fail_alone(tiny, rng):
    model, tok = tiny
    engine = Engine(model, tok, EngineConfig(max_batch_size=2))
    with pytest.raises(ValueError, match="exceeds the model's 2048 positions"):
        engine.submit(GenerationRequest(input_ids=[1] * 2000, max_new_tokens=100))
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        engine.submit(GenerationRequest(input_ids=[1, 2], max_new_tokens=0))
    good = make_request(model, tok, _queries(rng, 2)[1], GenerationOptions(max_new_tokens=5))
    bad = make_request(model, tok, _queries(rng, 2)[1], GenerationOptions(max_new_tokens=5))
    bad.features["video"] = bad.features["video"][:10]  # fewer rows than the prompt's patch tokens
    with pytest.raises(ValueError, match="356 patch tokens but 10 feature rows"):
        engine.submit(bad)
    # a request that fails inside the forward fails alone; the others of its prefill group go on
    broken = make_request(model, tok, _queries(rng, 2)[1], GenerationOptions(max_new_tokens=5))
    broken.features["video"] = torch.empty(356, 1024, device="meta")  # rows without data: cannot be copied
    h_broken, h_good = engine.submit_many([broken, good])
    with pytest.raises(RuntimeError):
        h_broken.result(timeout=30)
    assert len(h_good.result(timeout=30).token_ids) == 5 and engine.stats.failed == 1


def test_answer_helpers_share_one_engine_per_model(tiny, rng):
    from llavidal.engine import get_engine
    from llavidal.inference import answer_batch

    model, tok = tiny
    queries = _queries(rng, 3)
    opts = GenerationOptions(max_new_tokens=6)
    replies = answer_batch(model, tok, queries, opts, batch_size=2)
    engine = get_engine(model, tok)
    assert engine.config.max_batch_size == 2 and engine.stats.finished == 3
    assert get_engine(model, tok, max_batch_size=2) is engine
    want = [s.strip() for s in tok.batch_decode(_generate_ids(model, tok, queries, opts), skip_special_tokens=True)]
    assert replies == want


def test_the_cache_grows_with_what_is_admitted(tiny, rng):
    """Eager decoding allocates the slots and positions the admitted requests need (a single short question on a
    small GPU does not reserve max_batch_size x max positions); growing keeps what the slots hold."""
    model, tok = tiny
    queries = _queries(rng, 6)
    engine = Engine(model, tok, EngineConfig(max_batch_size=8))
    short = [make_request(model, tok, q, GenerationOptions(max_new_tokens=4)) for q in queries[:1]]
    engine.generate(short)
    cache = engine._cache
    first = (cache.n_slots, cache.max_cache_len)
    assert first[0] == 1 and first[1] < model.config.max_position_embeddings
    # a long request in slot 0, then more arrive while it runs: rows and columns grow mid-generation
    opts = [GenerationOptions(max_new_tokens=n) for n in (60, 5, 5, 300, 5, 5)]
    started = threading.Event()
    first_req = make_request(model, tok, queries[0], opts[0], on_tokens=lambda ids: started.set())
    h0 = engine.submit(first_req)
    assert started.wait(30)
    rest = engine.submit_many([make_request(model, tok, q, o) for q, o in zip(queries[1:], opts[1:])])
    got = [h.result(timeout=60).token_ids for h in [h0, *rest]]
    assert cache.n_slots > first[0] and cache.max_cache_len > first[1]
    assert got == [_generate_ids(model, tok, [q], o)[0] for q, o in zip(queries, opts)]


def test_an_engine_that_cannot_start_fails_its_requests_instead_of_hanging(tiny, rng, monkeypatch):
    """A cache that cannot be built (as with a transformers whose cache classes differ) fails the waiting requests with
    that error; the next request tries again."""
    import llavidal.engine.engine as engine_module

    model, tok = tiny
    real = engine_module.SlotCache

    def broken(*args, **kwargs):
        raise AttributeError("property 'max_cache_len' of 'SlotCache' object has no setter")

    monkeypatch.setattr(engine_module, "SlotCache", broken)
    engine = Engine(model, tok, EngineConfig(max_batch_size=2))
    try:
        requests = [make_request(model, tok, q, GenerationOptions(max_new_tokens=3)) for q in _queries(rng, 2)]
        handles = engine.submit_many(requests)
        for h in handles:
            with pytest.raises(AttributeError, match="max_cache_len"):
                h.future.result(timeout=30)
        assert engine.stats.failed == 2
        monkeypatch.setattr(engine_module, "SlotCache", real)
        assert [len(r.token_ids) for r in engine.generate(requests)] == [3, 3]
    finally:
        engine.close()

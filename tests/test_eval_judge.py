"""LLM judge: reply parsing, retries, failure records, cache, concurrency, prompt sets - against a real HTTP stub."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")
import openai  # noqa: E402,F401 - imported here so that no test pays for the first import

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_stub import Action, OpenAIStub, garbage, reply, slow, status  # noqa: E402

from llavidal.eval.judge import (  # noqa: E402
    DUMMY_API_KEY, Judge, JudgeCache, JudgeConfig, JudgeConfigError, JudgeRequest, ReplyParseError, cache_key,
    parse_letter, parse_reply, parse_score,
)
from llavidal.eval.metrics import aggregate_scores  # noqa: E402
from llavidal.eval.prompts import (  # noqa: E402
    CRITERIA, JUDGE_SPECS, PromptSetError, default_prompt_set, format_options, load_prompt_set, save_prompt_set,
)
from llavidal.eval.prompts import JudgePromptSet as PromptSet  # noqa: E402

PS = default_prompt_set()


@pytest.fixture
def stub():
    with OpenAIStub() as s:
        yield s


def make_judge(stub, cache=None, **kw):
    cfg = dict(base_url=stub.base_url, model="stub-judge", timeout=2.0)
    cfg.update(kw)
    return Judge(JudgeConfig(**cfg), cache=cache)


def score_req(i=0, criterion="correctness", prompts=PS):
    return prompts.score_request(criterion, f"What happens in video {i}?", "The person opens the fridge.",
                                 f"Someone opens a fridge ({i}).", id=f"v{i}/{criterion}")


# ----------------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("{'score': 3}", 3),
    ('{"score": 4}', 4),
    ("{'score': 0}", 0),
    ("Score: 2", 2),
    ("score = 5", 5),
    ("```python\n{'score': 5}\n```", 5),
    ("```\n{\"score\": 1}\n```", 1),
    ("Sure! Here is my evaluation:\n{'score': 1}\nThe prediction misses the fridge.", 1),
    ("{'score': '4'}", 4),
    ("{'score': 4.0}", 4),
    ("{'Score': 2, 'reason': 'wrong order'}", 2),
    ("3", 3),
    (" 4. ", 4),
    ("I would rate this 4/5.", 4),
    ("2 out of 5", 2),
    ("<think>The score could be 2 or 3... I'd say {'score': 2}</think>\n{'score': 3}", 3),
])
def test_parse_score_shapes(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text,why", [
    ("{'score': 4.8}", "not an integer"),
    ("{'score': 7}", "outside"),
    ("{'score': -1}", "outside"),
    ("{'score': True}", "boolean"),
    ("{'score': 'high'}", "not a number"),
    ("I cannot evaluate this.", "no score"),
    ("", "empty"),
    (None, "empty"),
    ("{'score': 2} ... on reflection {'score': 4}", "ambiguous"),
])
def test_parse_score_rejects(text, why):
    with pytest.raises(ReplyParseError, match=why):
        parse_score(text)


@pytest.mark.parametrize("text,choices,expected", [
    ("(B)", "ABCD", "B"),
    ("The best answer is: (C)", "ABCD", "C"),
    ("Answer: D", "ABCD", "D"),
    ("The answer is B.", "ABCD", "B"),
    ("B", "ABCD", "B"),
    ("b", "ABCD", "B"),
    ("(z)", "ABCD", "Z"),
    ("Z", "ABCD", "Z"),
    ('{"answer": "A"}', "ABCD", "A"),
    ("{'answer': '(C)'}", "ABCD", "C"),
    ("C) drinking from a cup", "ABCD", "C"),
    ("(F)", "ABCDEF", "F"),
    ("The best answer is (F) because the person sits down.", "ABCDEF", "F"),
    ("Options (A) and (B) are wrong. The best answer is (D).", "ABCD", "D"),
])
def test_parse_letter_shapes(text, choices, expected):
    assert parse_letter(text, choices) == expected


@pytest.mark.parametrize("text,choices,why", [
    ("The answer is A person drinking water", "ABCD", "no option letter"),  # an article, not option A
    ("Drinking from a Cup", "ABCD", "no option letter"),  # capitals inside words are not letters
    ("(E)", "ABCD", "not an option"),
    ("(A) walk (B) run", "ABCD", "ambiguous"),
    ("", "ABCD", "empty"),
])
def test_parse_letter_rejects(text, choices, why):
    with pytest.raises(ReplyParseError, match=why):
        parse_letter(text, choices)


def test_parse_reply_text():
    assert parse_reply("text", "  A person cooks.  ") == "A person cooks."
    assert parse_reply("text", "```\nA person cooks.\n```") == "A person cooks."
    assert parse_reply("text", "<think>plan the summary</think>\nThe person cooks.") == "The person cooks."
    with pytest.raises(ReplyParseError):
        parse_reply("text", "   ")
    with pytest.raises(ReplyParseError):
        parse_reply("text", "<think>only thinking</think>")


# ----------------------------------------------------------------------------------------------------------------
# protocol, retries and failures against the stub
# ----------------------------------------------------------------------------------------------------------------

def test_reply_shapes_through_server(stub):
    replies = ["{'score': 3}", '```json\n{"score": 5}\n```', "Score: 1", "Here you go: {'score': 0}", "4"]
    stub.push(*replies)
    judge = make_judge(stub)
    results = judge.judge_many([score_req(i) for i in range(5)], concurrency=1, progress=False)
    assert [r.value for r in results] == [3, 5, 1, 0, 4]
    assert all(r.ok and r.attempts == 1 and not r.cached for r in results)
    assert [r.id for r in results] == [f"v{i}/correctness" for i in range(5)]
    body = stub.requests[0]
    assert body["model"] == "stub-judge" and body["temperature"] == 0 and body["seed"] == 0
    assert body["max_tokens"] == 256  # the judge's budget: the score prompt asks for no more
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert results[0].served_model == "stub-judge" and results[0].usage["total_tokens"] > 0


def test_429_then_success_honours_retry_after(stub):
    stub.push(status(429, retry_after=0.3), "{'score': 4}")
    judge = make_judge(stub)
    t0 = time.perf_counter()
    r = judge.judge(score_req())
    elapsed = time.perf_counter() - t0
    assert r.ok and r.value == 4 and r.attempts == 2
    assert stub.count == 2
    assert elapsed >= 0.3  # waited as the server asked
    assert judge.stats.retries == 1 and judge.stats.failures == 0


def test_500_then_success(stub):
    stub.push(status(500), status(503), "{'score': 2}")
    judge = make_judge(stub)
    r = judge.judge(score_req())
    assert r.ok and r.value == 2 and r.attempts == 3 and stub.count == 3


def test_slow_reply_times_out_and_is_retried(stub):
    stub.push(slow(1.5), "{'score': 5}")
    judge = make_judge(stub, timeout=0.3)
    t0 = time.perf_counter()
    r = judge.judge(score_req())
    assert r.ok and r.value == 5 and r.attempts == 2
    assert time.perf_counter() - t0 < 1.4  # did not wait for the slow reply


def test_unparsable_after_all_retries_is_a_failure_not_zero(stub):
    stub.push("I refuse to grade.", "Looks fine to me!", "{'score': 'excellent'}", "{'score': 5}")
    judge = make_judge(stub, max_parse_failures=3)
    r = judge.judge(score_req())
    assert not r.ok and r.value is None
    assert r.error.startswith("unparsable")
    assert r.reply == "{'score': 'excellent'}" and r.attempts == 3 and stub.count == 3
    assert judge.stats.failures == 1 and judge.stats.failure_reasons == {"unparsable": 1}
    # aggregated: excluded from the mean and counted
    agg = aggregate_scores({c: ([r, 5] if c == "correctness" else [5]) for c in CRITERIA})
    assert agg.criteria["correctness"].score == 100.0 and agg.criteria["correctness"].n_failed == 1
    assert agg.n_failed == 1


def test_persistent_errors_bounded_and_non_retryable_not_retried(stub):
    judge = make_judge(stub, max_attempts=3)
    stub.push(status(503), status(503), status(503))
    r = judge.judge(score_req(1))
    assert not r.ok and r.error.startswith("http 503") and "3 attempts" in r.error
    assert stub.count == 3
    stub.reset_counts()
    stub.push(status(401))
    r = judge.judge(score_req(2))
    assert not r.ok and r.error.startswith("http 401") and r.attempts == 1 and stub.count == 1


def test_garbage_body_then_success(stub):
    stub.push(garbage(), "{'score': 3}")
    r = make_judge(stub).judge(score_req())
    assert r.ok and r.value == 3 and r.attempts == 2


def test_connection_refused_is_a_failure_record():
    with OpenAIStub() as s:
        url = s.base_url
    judge = Judge(JudgeConfig(base_url=url, model="m", max_attempts=2, timeout=1.0))
    r = judge.judge(score_req())
    assert not r.ok and r.error.startswith("connection") and r.attempts == 2


def test_mcq_letter_validated_against_item_options(stub):
    stub.push("(E)", "(E)", "(B)")  # E is not an option of a 4-option item: asked again
    judge = make_judge(stub)
    req = PS.mcq_request("What does the person do?", ["walk", "sit down", "drink", "read"],
                         "they take a seat", id="m1")
    assert req.choices == ("A", "B", "C", "D")
    r = judge.judge(req)
    assert r.ok and r.value == "B" and r.attempts == 3
    user = stub.requests[0]["messages"][1]["content"]
    assert "(A) walk (B) sit down (C) drink (D) read" in user and "they take a seat" in user


def test_summary_request(stub):
    stub.push("  The person walks into the kitchen, then cooks.  ")
    req = PS.summary_request(["walks into the kitchen", "cooks  pasta"], id="P02T01")
    r = make_judge(stub).judge(req)
    assert r.ok and r.value == "The person walks into the kitchen, then cooks."
    body = stub.requests[0]
    assert body["max_tokens"] == PS.prompts["tsu_summary"].max_tokens == 700  # the prompt asks for more than 256
    user = body["messages"][1]["content"]
    assert user.index("Clip 1: walks into") < user.index("Clip 2: cooks pasta")


# ----------------------------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------------------------

def test_cache_hit_makes_no_request(stub, tmp_path):
    db = tmp_path / "judge.sqlite"
    reqs = [score_req(i, c) for i in range(3) for c in CRITERIA[:4]]
    with make_judge(stub, cache=db) as judge:
        first = judge.judge_many(reqs, concurrency=4, progress=False)
    assert stub.count == len(reqs) and all(r.ok and not r.cached for r in first)

    stub.reset_counts()
    with make_judge(stub, cache=db) as judge:  # a new process would see the same file
        again = judge.judge_many(reqs, concurrency=4, progress=False)
        assert judge.stats.cache_hits == len(reqs) and judge.stats.http_requests == 0
        assert judge._client is None  # never even built a client
    assert stub.count == 0
    assert [r.value for r in again] == [r.value for r in first] and all(r.cached for r in again)

    # another temperature, seed, model or prompt-set version -> miss
    other_version = PromptSet.from_dict({**PS.to_dict(), "version": "2"})
    for kw, reqs2 in [({"temperature": 0.7}, reqs[:1]), ({"seed": 1}, reqs[:1]), ({"model": "other"}, reqs[:1]),
                      ({}, [score_req(0, prompts=other_version)])]:
        stub.reset_counts()
        with make_judge(stub, cache=db, **kw) as judge:
            r = judge.judge_many(reqs2, progress=False)[0]
        assert stub.count == 1 and r.ok and not r.cached, kw


def test_failures_are_not_cached(stub, tmp_path):
    db = tmp_path / "judge.sqlite"
    stub.push("no idea", "no idea")
    with make_judge(stub, cache=db, max_parse_failures=2) as judge:
        assert not judge.judge(score_req()).ok
    assert len(JudgeCache(db)) == 0
    stub.reset_counts()
    with make_judge(stub, cache=db) as judge:  # the re-run asks again, and this time it works
        r = judge.judge(score_req())
    assert r.ok and r.value == 3 and stub.count == 1
    assert len(JudgeCache(db)) == 1


def test_cache_key_covers_messages_and_ignores_api_key():
    a = JudgeConfig(base_url="http://h:1/v1/", model="m", api_key="k1").identity()
    b = JudgeConfig(base_url="http://h:1/v1", model="m", api_key="k2").identity()
    assert a == b  # trailing slash normalised, key never part of the identity
    r1, r2 = score_req(1), score_req(2)
    assert cache_key(a, r1, 64) != cache_key(a, r2, 64)
    assert cache_key(a, r1, 64) != cache_key(a, r1, 128)
    assert cache_key(a, r1, 64) == cache_key(b, score_req(1), 64)


# ----------------------------------------------------------------------------------------------------------------
# concurrency
# ----------------------------------------------------------------------------------------------------------------

def test_concurrency_overlaps_and_keeps_order():
    with OpenAIStub(latency=0.2, responder=lambda body: "{'score': %d}" % (len(body["messages"][1]["content"]) % 6)) \
            as stub:
        judge = make_judge(stub)
        judge.judge(score_req(99))  # warm the client (connection pool) outside the timing
        stub.reset_counts()
        reqs = [score_req(i) for i in range(16)]
        t0 = time.perf_counter()
        results = judge.judge_many(reqs, concurrency=16, progress=False)
        elapsed = time.perf_counter() - t0
    assert stub.count == 16 and stub.max_in_flight >= 8
    assert elapsed < 0.5 * 16 * 0.2, elapsed  # serial would take 3.2 s
    assert [r.id for r in results] == [r.id for r in reqs]
    assert [r.value for r in results] == [len(r.messages[1]["content"]) % 6 for r in reqs]


def test_concurrency_limit_is_respected():
    with OpenAIStub(latency=0.05) as stub:
        make_judge(stub).judge_many([score_req(i) for i in range(12)], concurrency=3, progress=True)
        assert stub.max_in_flight <= 3


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------

def test_config_resolution(monkeypatch):
    for v in ("LLAVIDAL_JUDGE_API_KEY", "OPENAI_API_KEY", "LLAVIDAL_JUDGE_BASE_URL", "OPENAI_BASE_URL",
              "LLAVIDAL_JUDGE_MODEL", "OLLAMA_HOST"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(JudgeConfigError, match="no judge model"):
        JudgeConfig().resolved_model()
    with pytest.raises(JudgeConfigError, match="no API key"):
        JudgeConfig(model="gpt-4o-mini").resolved_api_key()
    local = JudgeConfig(base_url="http://localhost:8000/v1", model="x")
    assert local.resolved_api_key() == DUMMY_API_KEY
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert JudgeConfig(model="x").resolved_api_key() == "sk-openai"
    monkeypatch.setenv("LLAVIDAL_JUDGE_API_KEY", "sk-judge")
    assert JudgeConfig(model="x").resolved_api_key() == "sk-judge"
    assert JudgeConfig(model="x", api_key="explicit").resolved_api_key() == "explicit"
    monkeypatch.setenv("LLAVIDAL_JUDGE_MODEL", "llama3.1")
    monkeypatch.setenv("LLAVIDAL_JUDGE_BASE_URL", "http://gpu-box:11434/v1/")
    assert JudgeConfig().identity()["model"] == "llama3.1"
    assert JudgeConfig().identity()["base_url"] == "http://gpu-box:11434/v1"
    assert JudgeConfig.ollama().resolved_base_url() == "http://localhost:11434/v1"
    assert "explicit" not in repr(JudgeConfig(model="x", api_key="explicit"))
    with pytest.raises(JudgeConfigError):
        JudgeConfig(model="x", temperature=-1).validate()


def test_request_validation():
    with pytest.raises(ValueError):
        JudgeRequest(messages=(), kind="score")
    with pytest.raises(ValueError):
        JudgeRequest(messages=({"role": "user", "content": "x"},), kind="essay")


# ----------------------------------------------------------------------------------------------------------------
# prompt sets
# ----------------------------------------------------------------------------------------------------------------

def test_default_prompt_set_is_complete():
    assert PS.ident == "llavidal-judge@1"
    assert set(PS.prompts) == set(JUDGE_SPECS)
    for c in CRITERIA:
        p = PS.prompts[c]
        assert p.kind == "score" and "{'score': N}" in p.user
    req = PS.description_requests("vid", "Q?", "A.", "P.", "Q1?", "Q2?", "CA.", "P1.", "P2.")
    assert list(req) == list(CRITERIA) and req["consistency"].id == "vid/consistency"
    cons = req["consistency"].messages[1]["content"]
    assert all(s in cons for s in ("Q1?", "Q2?", "CA.", "P1.", "P2."))


def test_prompt_set_roundtrip_and_substitution(tmp_path):
    path = save_prompt_set(PS, tmp_path / "set.json")
    loaded = load_prompt_set(path)
    assert loaded == PS and loaded.source == str(path)
    # a prediction containing template syntax is inserted verbatim
    r = loaded.score_request("detail", "q", "a", "costs $5 or ${question}")
    assert "costs $5 or ${question}" in r.messages[1]["content"]
    assert load_prompt_set(None) is PS


def _broken(tmp_path, mutate):
    data = json.loads(json.dumps(PS.to_dict()))
    mutate(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["prompts"].pop("temporal"), r"missing prompts \['temporal'\]"),
    (lambda d: d.pop("version"), "missing or empty 'version'"),
    (lambda d: d["prompts"]["correctness"].update(user="Rate: ${question} ${prediction}"),
     r"placeholders missing: \['\$\{answer\}'\]"),
    (lambda d: d["prompts"]["mcq"].update(user="${question} ${options} ${prediction} ${video}"),
     r"unknown placeholders \['\$\{video\}'\]"),
    (lambda d: d["prompts"]["tsu_summary"].update(kind="score"), "kind must be 'text'"),
    (lambda d: d["prompts"]["detail"].update(system=""), "missing or empty 'system'"),
    (lambda d: d["prompts"].update(extra={"system": "s", "user": "u"}), r"unknown prompts \['extra'\]"),
    (lambda d: d["prompts"]["context"].update(user="${question} ${answer} ${prediction} $"), "malformed"),
    (lambda d: d["prompts"]["context"].update(max_tokens=0), "max_tokens"),
])
def test_prompt_set_validation_errors(tmp_path, mutate, message):
    with pytest.raises(PromptSetError, match=message):
        load_prompt_set(_broken(tmp_path, mutate))


def test_prompt_set_file_errors(tmp_path):
    with pytest.raises(PromptSetError, match="no such file"):
        load_prompt_set(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PromptSetError, match="not valid JSON"):
        load_prompt_set(bad)


def test_render_requires_exact_fields():
    with pytest.raises(TypeError, match="missing fields"):
        PS.request("correctness", question="q", answer="a")
    with pytest.raises(TypeError, match="unexpected fields"):
        PS.request("correctness", question="q", answer="a", prediction="p", extra="x")


def test_format_options():
    assert format_options({"1": "walk", "2": "sit"}) == ("(A) walk (B) sit", ("A", "B"))
    assert format_options({"a": "x", "F": "y"})[1] == ("A", "F")
    with pytest.raises(ValueError):
        format_options({"Z": "none"})
    with pytest.raises(TypeError):
        format_options("(A) x (B) y")


def test_custom_responder_action_type():
    # a responder may return an Action: used to script per-request behaviour in benchmarks
    with OpenAIStub(responder=lambda body: Action(200, "{'score': 1}")) as stub:
        assert make_judge(stub).judge(score_req()).value == 1
        stub.push(reply("{'score': 2}"))
        assert make_judge(stub).judge(score_req(1)).value == 2

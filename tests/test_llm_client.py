"""The one client for OpenAI-compatible endpoints (llavidal.llm): shared by the judge, the MCQ parser, the TSU
summariser and curation. Against a real loopback server: the circuit breaker, flags, bad judges inside `eval run`
(invalid JSON bodies, a judge that hangs), and an API key that must never reach a file or a log line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_stub import OpenAIStub, garbage, slow, status  # noqa: E402

from llavidal.eval.judge import Judge, JudgeConfig  # noqa: E402
from llavidal.eval.prompts import default_prompt_set  # noqa: E402
from llavidal.llm import LLMClient, LLMConfig, LLMConfigError, add_endpoint_args  # noqa: E402
from llavidal.llm.config import config_from_args  # noqa: E402

PS = default_prompt_set()


def _reqs(n):
    return [PS.score_request("correctness", f"q{i}", "a", "p", id=str(i)) for i in range(n)]


def test_circuit_breaker_stops_a_dead_judge_and_every_request_gets_a_record():
    with OpenAIStub(responder=lambda body: status(500)) as stub:
        judge = Judge(JudgeConfig(base_url=stub.base_url, model="m", max_attempts=1, max_consecutive_failures=3,
                                  timeout=2.0))
        results = judge.judge_many(_reqs(12), concurrency=1, progress=False)
    assert stub.count == 3  # three calls lost to the server, then nothing more is sent
    assert len(results) == 12 and not any(r.ok for r in results)
    assert all(r.error.startswith("http 500") for r in results[:3])
    assert all(r.error.startswith("not sent: the endpoint") for r in results[3:])
    assert judge.llm.tripped and judge.stats.failure_reasons == {"http 500": 3, "not sent": 9}


def test_malformed_replies_do_not_open_the_breaker_and_a_reply_closes_it():
    with OpenAIStub(default="no score here") as stub:
        client = LLMClient(LLMConfig(base_url=stub.base_url, model="m", max_parse_failures=1,
                                     max_consecutive_failures=2, timeout=2.0))
        for _ in range(4):  # the model answers, badly: not the endpoint's fault
            assert client.call([{"role": "user", "content": "x"}], parse=int).error.startswith("unparsable")
        assert client.tripped is None
        stub.push(status(401))
        assert client.call([{"role": "user", "content": "x"}]).error.startswith("http 401")
        stub.push("fine")
        assert client.call([{"role": "user", "content": "x"}]).ok  # resets the count
        stub.push(status(401))
        client.call([{"role": "user", "content": "x"}])
        assert client.tripped is None
        stub.push(status(401))
        client.call([{"role": "user", "content": "x"}])
        assert client.tripped is not None and "2 calls in a row" in client.tripped


def test_seed_changes_on_each_reask_and_the_openai_client_retries():
    with OpenAIStub() as stub:
        stub.push("bad", status(503), "fine")
        client = LLMClient(LLMConfig(base_url=stub.base_url, model="m", seed=7, timeout=2.0))
        r = client.call([{"role": "user", "content": "x"}], parse=lambda t: t if t == "fine" else int(t))
        assert r.ok and r.value == "fine" and r.parse_failures == 1
        assert [b["seed"] for b in stub.requests] == [7, 8, 8]  # re-ask with seed+1; a transport retry keeps it
        assert r.attempts == 3 and client.stats.retries == 2 and client.stats.http_requests == 3


def test_endpoint_flags_build_the_config():
    p = argparse.ArgumentParser()
    add_endpoint_args(p, "judge", JudgeConfig, concurrency=16)
    args = p.parse_args(["--judge-endpoint", "http://h:1/v1/", "--judge-model", "m", "--judge-timeout", "5",
                         "--judge-max-attempts", "2", "--judge-no-seed", "--judge-extra-body", '{"a": 1}'])
    cfg = config_from_args(args, "judge", JudgeConfig)
    assert isinstance(cfg, JudgeConfig) and cfg.identity()["base_url"] == "http://h:1/v1"
    assert (cfg.timeout, cfg.max_attempts, cfg.seed, dict(cfg.extra_body)) == (5.0, 2, None, {"a": 1})
    assert args.judge_concurrency == 16
    with pytest.raises(LLMConfigError, match="--judge-max-attempts must be >= 1"):
        config_from_args(p.parse_args(["--judge-model", "m", "--judge-max-attempts", "0"]), "judge", JudgeConfig)
    with pytest.raises(LLMConfigError, match="--judge-extra-body is not valid JSON"):
        config_from_args(p.parse_args(["--judge-model", "m", "--judge-extra-body", "{"]), "judge", JudgeConfig)


# ----------------------------------------------------------------------------------------------------------------
# bad judges inside `eval run`, and secrets
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def desc_bench(tmp_path_factory):
    from llavidal.synthetic import WorldSpec, make_dataset

    root = tmp_path_factory.mktemp("llmdesc")
    data = make_dataset(root / "data", n_train=0, n_test=2, seed=1, spec=WorldSpec(video_rows=8, pose_rows=6))
    feats = sorted(data["video_folder"].iterdir())
    items = [{"video_name": p.stem, "Q": "What does the person do?", "A": "The person drinks.",
              "cons_Q1": "Describe the video.", "cons_Q2": "What happens?", "cons_A": "The person drinks."}
             for p in feats[:2]]
    (root / "charades_desc.json").write_text(json.dumps(items))
    return root / "charades_desc.json", data["video_folder"]


def _eval_desc(tiny_base, desc_bench, out, stub, *extra):
    from llavidal.cli import main

    qa, videos = desc_bench
    return main(["eval", "run", "--task", "charades-desc", "--qa-file", str(qa), "--video-dir", str(videos),
                 "--base", str(tiny_base), "--output", str(out), "--max-new-tokens", "4", "--judge-model", "stub",
                 "--judge-base-url", stub.base_url, "--no-embedding", *extra])


def test_judge_answering_invalid_json_is_recorded_and_the_summary_is_written(tiny_base, desc_bench, tmp_path):
    with OpenAIStub(responder=lambda body: garbage(b"<html>gateway</html>")) as stub:
        assert _eval_desc(tiny_base, desc_bench, tmp_path / "out", stub, "--judge-max-parse-failures", "2") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["judge_stats"]["failures"] == 10 and s["judge_stats"]["ok"] == 0  # 2 items x 5 criteria
    assert set(s["judge_stats"]["failure_reasons"]) == {"bad response"}
    assert s["score"] is None  # no judge score at all: not a zero
    assert s["description_scores"]["judge"]["n_failed"] == 10


def test_a_hanging_judge_is_bounded_by_timeout_attempts_and_the_breaker(tiny_base, desc_bench, tmp_path):
    with OpenAIStub(responder=lambda body: slow(30)) as stub:
        t0 = time.perf_counter()
        assert _eval_desc(tiny_base, desc_bench, tmp_path / "out", stub, "--judge-timeout", "0.2",
                          "--judge-max-attempts", "1", "--judge-max-consecutive-failures", "2",
                          "--judge-concurrency", "1") == 0
        elapsed = time.perf_counter() - t0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert stub.count == 2 and s["judge_stats"]["failure_reasons"] == {"timeout": 2, "not sent": 8}
    assert elapsed < 60, elapsed  # model load + generation; the judge adds about 0.4 s, not 10 x 30 s


def test_secret_never_reaches_a_file_or_the_output(tiny_base, desc_bench, tmp_path, capfd, monkeypatch, caplog):
    import logging

    sentinel = "sk-SENTINEL-7f3a9c"
    monkeypatch.setenv("OPENAI_API_KEY", sentinel)
    caplog.set_level(logging.DEBUG)
    seen = []

    def responder(body):
        seen.append(body)
        return "{'score': 3}"

    with OpenAIStub(responder=responder) as stub:
        out = tmp_path / "out"
        assert _eval_desc(tiny_base, desc_bench, out, stub, "--judge-api-key", sentinel) == 0
        assert _eval_desc(tiny_base, desc_bench, tmp_path / "out2", stub) == 0  # key from $OPENAI_API_KEY
    assert seen  # the judge really ran
    captured = capfd.readouterr()
    assert sentinel not in captured.out and sentinel not in captured.err and sentinel not in caplog.text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert sentinel.encode() not in f.read_bytes(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["judge"]["model"] == "stub" and "api_key" not in s["config"]["judge"]

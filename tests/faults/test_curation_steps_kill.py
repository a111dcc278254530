"""kill -9 in the middle of the curation steps that call models (frame captions, descriptions, QA), then the same
command again: each step's final output equals that of an uninterrupted run. The inputs (crops, stitched videos) come
from one run of the real driver against a loopback OpenAI-compatible server; the killed steps are then run one by one
on copies of that run's folder, with the server slowed down so that a kill lands between two requests. Stitching is
killed on a map of many videos."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ntu_fixture import make_ntu_root
from openai_stub import OpenAIStub
from test_curation_e2e import ROOT, _reply

from faults.harness import count_lines, kill_and_rerun, kill_when, llavidal, run

SEEDS = (21, 22, 23)


def _results(work: Path, pattern: str) -> int:
    return sum(count_lines(p) for p in work.glob(pattern))


def test_curation_model_steps_resume_after_kill(tmp_path):
    ntu = make_ntu_root(tmp_path / "NTU120", performers=(1, 2), actions=(1, 2, 3, 8), frames=12, size=(96, 72),
                        with_txt=False)
    ref = tmp_path / "ref"
    with OpenAIStub(responder=_reply, model="stub") as stub:
        env = {**os.environ, "NTU_ROOT": str(ntu), "WORK": str(ref), "SEED": "3", "CROP_WORKERS": "1",
               "VLM_ENDPOINT": stub.base_url, "VLM_MODEL": "stub", "LLM_ENDPOINT": stub.base_url,
               "LLM_MODEL": "stub", "LLAVIDAL": llavidal()[0] + " -m llavidal", "CAPTION_CONCURRENCY": "1",
               "LLM_CONCURRENCY": "1", "OPENAI_API_KEY": "test"}
        driver = subprocess.run(["bash", str(ROOT / "adlx_curation" / "gen_adlx_videos_and_QA.sh")], env=env,
                                capture_output=True, text=True, timeout=600)
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]

        endpoint = ["--endpoint", stub.base_url, "--model", "stub", "--concurrency", "1"]
        steps = {  # name: (command on a work folder, its final output, the outputs to remove, progress so far)
            "captions": (lambda w: llavidal("curate", "captions", "--videos", w / "stitched", "--out",
                                            w / "captions", "--fps", "2", "--procs", "1", *endpoint),
                         "captions/captions.json", ["captions"], lambda w: _results(w, "captions/captions.shard*")),
            "describe": (lambda w: llavidal("curate", "describe", "--captions", w / "captions" / "captions.json",
                                            "--actions", w / "stitched" / "actions.json", "--out",
                                            w / "descriptions.json", *endpoint),
                         "descriptions.json", ["descriptions.*"], lambda w: _results(w, "descriptions.results.jsonl")),
            "qa": (lambda w: llavidal("curate", "qa", "--descriptions", w / "descriptions.json", "--actions",
                                      w / "stitched" / "actions.json", "--out", w / "adlx_train.json", *endpoint),
                   "adlx_train.json", ["adlx_train.*"], lambda w: _results(w, "adlx_train.results.jsonl")),
        }
        stub.latency = 0.4  # every request now outlasts the kill delay
        for seed, (name, (cmd, final, outputs, progress)) in zip(SEEDS, steps.items()):
            work = tmp_path / name
            shutil.copytree(ref, work)
            for pattern in outputs:
                for p in work.glob(pattern):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            keyed = ["env", "OPENAI_API_KEY=test", *map(str, cmd(work))]
            assert kill_when(keyed, tmp_path, lambda: progress(work) >= 1, seed, max_delay=0.1), name
            assert not (work / final).exists(), f"{name}: killed after it finished"
            before = stub.count  # the rerun's requests only
            proc = run(keyed, tmp_path)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert (work / final).read_bytes() == (ref / final).read_bytes(), name
            assert stub.count - before < progress(work), f"{name}: the rerun redid finished requests"


def test_curation_stitch_resumes_after_kill(tmp_path):
    """kill -9 while stitching (a map of many videos over a few crops, so that the kill lands mid-run), rerun: every
    stitched video and actions.json equal an uninterrupted run's, and no temporary is left behind."""
    import json

    ntu = make_ntu_root(tmp_path / "NTU120", performers=(1,), actions=(1, 2, 3), frames=8, size=(64, 48),
                        with_txt=False)
    crops = tmp_path / "crops"
    assert run(llavidal("curate", "crop", "--ntu-root", ntu, "--out", crops, "--slack", "4", "--size", "32",
                        "--no-progress"), tmp_path).returncode == 0
    clips = sorted(p.name for p in crops.glob("*_rgb.*"))
    assert len(clips) == 3
    smap = tmp_path / "map.json"  # 60 videos, each 2-3 of the crops in a different order
    smap.write_text(json.dumps({f"001_video_{i:03d}": [clips[(i + k) % 3] for k in range(2 + i % 2)]
                                for i in range(60)}))

    def cmd(out):
        return llavidal("curate", "stitch", "--crops", crops, "--map", smap, "--out", out, "--no-progress")

    ref = tmp_path / "ref"
    assert run(cmd(ref), tmp_path).returncode == 0
    want = {p.name: p.read_bytes() for p in sorted(ref.glob("*.mp4"))}
    assert len(want) == 60
    out = tmp_path / "killed"
    kill_and_rerun(cmd(out), tmp_path, lambda: len(list(out.glob("*.mp4"))) >= 5, SEEDS[0], max_delay=0.1,
                   finished=out / "actions.json")
    assert {p.name: p.read_bytes() for p in sorted(out.glob("*.mp4"))} == want
    assert (out / "actions.json").read_bytes() == (ref / "actions.json").read_bytes()
    assert not list(out.glob(".*"))  # the killed run's temporary is gone

"""evaluation/ADL-X/run_evals.sh configured through the original release's variable names: all six tasks, in both
protocols, from another directory; raw videos are extracted once into a cache that later runs reuse."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from original_fixture import make_original_repo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    """The six benchmark files in the release's formats (current combined MCQ files) and their video folders:
    feature files for most, raw videos for Charades."""
    from llavidal.eval.tasks import load_task, to_combined
    from llavidal.features import save_feature
    from llavidal.synthetic import WorldSpec, make_dataset
    from llavidal.video.clip import make_tiny_clip
    from llavidal.video.io import write_video

    root = tmp_path_factory.mktemp("adlx")
    data = make_dataset(root / "data", n_train=0, n_test=3, seed=2, spec=WorldSpec(video_rows=6, pose_rows=5))
    items, _ = load_task("smarthome-ar", data["test"])
    combined = to_combined(items)
    env = {}
    for var in ("LEMMA_TC", "SMARTHOME_AR", "TSU_TC"):
        (root / f"{var}.json").write_text(json.dumps(combined))
        env[var] = str(root / f"{var}.json")
    for var in ("LEMMA_VID_PATH", "SMARTHOME_VID_PATH", "TSU_TC_VID_PATH"):
        env[var] = str(data["video_folder"])
    # Charades: raw videos, features extracted by run_evals.sh through the (tiny) CLIP
    raw = root / "charades_videos"
    rng = np.random.default_rng(0)
    for it in combined:
        write_video(raw / it["video_filename"].replace(".pkl", ".mp4"),
                    rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=4)
    charades = [{**it, "video_filename": it["video_filename"].replace(".pkl", ".mp4")} for it in combined]
    (root / "charades_ar.json").write_text(json.dumps(charades))
    (root / "charades_desc.json").write_text(json.dumps([
        {"video_name": Path(it["video_filename"]).stem, "Q": "What does the person do?", "A": "The person sits.",
         "cons_Q1": "Describe it.", "cons_Q2": "What happens?", "cons_A": "Someone sits."} for it in charades[:2]]))
    env.update(CHARADES_AR=str(root / "charades_ar.json"), CHARADES_DESCRIPTIONS=str(root / "charades_desc.json"),
               CHARADES_VID_PATH=str(raw), CLIP=str(make_tiny_clip(root / "clip", seed=0)))
    tsu = root / "tsu_desc_videos"
    for i in (1, 2):
        save_feature(rng.standard_normal((6, 1024)).astype(np.float16), tsu / f"P02T01C07_clip{i}.pkl")
        (tsu / f"P02T01C07_clip{i}.mp4").write_bytes(b"")  # what the release globbed; the features are beside it
    (root / "tsu_desc.json").write_text(json.dumps({"P02T01C07": "A person walks in and makes tea."}))
    env.update(TSU_DESCRIPTIONS=str(root / "tsu_desc.json"), TSU_DESC_VID_PATH=str(tsu))
    return env


def _run(tiny_base, benchmarks, out, cwd, **extra):
    env = {**os.environ, **benchmarks, "MODEL_PATHS": f"{tiny_base}", "OUTPUT_NAMES": "tiny", "OUTPUT_DIR": str(out),
           "LIMIT": "2", "BATCH_SIZE": "2", "MAX_NEW_TOKENS": "4", **extra}
    return subprocess.run(["bash", str(REPO / "evaluation/ADL-X/run_evals.sh"), "1"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _table(stdout: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| tiny |")]
    return {r[1].strip(): [c.strip() for c in r] for r in rows}


def test_clean_protocol_all_six_tasks_through_the_original_variables(tiny_base, benchmarks, tmp_path):
    proc = _run(tiny_base, benchmarks, tmp_path / "res", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = _table(proc.stdout)
    assert set(table) == {"charades-ar", "lemma-tc", "smarthome-ar", "tsu-tc", "charades-desc", "tsu-desc"}
    assert all(row[2] == "clean" for row in table.values())
    assert table["charades-ar"][4] == "accuracy (%)" and table["charades-ar"][6] == "0"  # raw videos: extracted
    assert table["charades-desc"][4].startswith("offline metrics (no judge)")
    caches = list((tmp_path / "res" / "video_features").iterdir())
    assert len(caches) == 1 and len(list(caches[0].glob("*.pkl"))) == 2  # once, for the Charades folder (2 items)
    # a second run reuses the cache and the predictions (no extraction): the same row
    again = _run(tiny_base, benchmarks, tmp_path / "res", cwd=tmp_path, TASKS="charades-ar")
    assert again.returncode == 0 and _table(again.stdout) == {"charades-ar": table["charades-ar"]}


def test_paper_protocol_all_six_tasks_with_a_loopback_judge(tiny_base, benchmarks, tmp_path):
    from openai_stub import OpenAIStub

    repo = make_original_repo(tmp_path / "original")

    def responder(body):
        if body["model"] == "summ":
            return "The person walks in and makes tea."
        return "(B)" if "Letter picker" in body["messages"][0]["content"] else "{'score': 3}"

    with OpenAIStub(responder=responder) as stub:
        proc = _run(tiny_base, benchmarks, tmp_path / "res", cwd=tmp_path, PROTOCOL="paper",
                    ORIGINAL_REPO=str(repo), JUDGE_BASE_URL=stub.base_url, SUMMARIZER_BASE_URL=stub.base_url,
                    SUMMARIZER_MODEL="summ")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = _table(proc.stdout)
    assert len(table) == 6 and all(row[2] == "paper" for row in table.values())
    assert table["tsu-desc"][4] == "judge, paper protocol (0-100)" and "llama3.1" in table["tsu-desc"][7]
    s = json.loads((tmp_path / "res" / "paper" / "tiny" / "charades-desc" / "summary.json").read_text())
    assert s["score"] == pytest.approx(60.0)  # every judge call scored 3 -> 3 x 20


def test_unconfigured_tasks_are_skipped_with_one_line_each(tiny_base, benchmarks, tmp_path):
    only = {k: v for k, v in benchmarks.items() if k in ("SMARTHOME_AR", "SMARTHOME_VID_PATH")}
    env = {k: "" for k in benchmarks if k != "CLIP"}
    proc = _run(tiny_base, {**env, **only}, tmp_path / "res", cwd=tmp_path, TASKS="smarthome-ar lemma-tc tsu-desc")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skip lemma-tc: set LEMMA_TC and LEMMA_VID_PATH" in proc.stdout
    assert "skip tsu-desc: set TSU_DESCRIPTIONS and TSU_DESC_VID_PATH" in proc.stdout
    assert set(_table(proc.stdout)) == {"smarthome-ar"}

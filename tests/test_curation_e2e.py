"""The curation driver for real: ``bash adlx_curation/gen_adlx_videos_and_QA.sh`` on a synthetic NTU root, every step
run by the real ``llavidal`` command against a loopback OpenAI-compatible server, then run again (nothing is redone)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ntu_fixture import make_ntu_root  # noqa: E402
from openai_stub import OpenAIStub  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _reply(body: dict) -> str:
    last = body["messages"][-1]["content"]
    if isinstance(last, list):  # a frame to caption
        return "A person stands in a small room and moves their arms."
    text = "\n".join(m["content"] if isinstance(m["content"], str) else "" for m in body["messages"])
    if "Write the description now" in text:
        return " ".join(["The person"] + ["moves"] * 178) + "."
    if "summary question-answer" in text:
        qs = ["What happens in the video?", "Summarise the video.", "What is the overall activity?"]
    else:
        qs = ["In what order does the person do the actions?", "What does the person do first?",
              "What does the person do last?"]
    return json.dumps([{"Q": q, "A": f"The person does action {i}."} for i, q in enumerate(qs)])


def test_driver_end_to_end_and_rerun(tmp_path):
    from llavidal.data.dataset import read_records

    ntu = make_ntu_root(tmp_path / "NTU120", performers=(1, 2), actions=(1, 2, 3, 8), frames=12, size=(96, 72),
                        with_txt=False)
    work = tmp_path / "work"
    with OpenAIStub(responder=_reply, model="stub") as stub:
        env = {**os.environ, "NTU_ROOT": str(ntu), "WORK": str(work), "SEED": "3", "CROP_WORKERS": "1",
               "VLM_ENDPOINT": stub.base_url, "VLM_MODEL": "stub", "LLM_ENDPOINT": stub.base_url,
               "LLM_MODEL": "stub", "LLAVIDAL": f"{sys.executable} -m llavidal", "CAPTION_CONCURRENCY": "4",
               "LLM_CONCURRENCY": "4", "OPENAI_API_KEY": "test"}
        script = ROOT / "adlx_curation" / "gen_adlx_videos_and_QA.sh"
        run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        first = stub.count

        stitched = sorted(p.stem for p in (work / "stitched").glob("*.mp4"))
        actions = json.loads((work / "stitched" / "actions.json").read_text())
        assert stitched and sorted(actions) == stitched
        assert all(name.split("_video_")[0] in ("001", "002") for name in stitched)
        records = read_records(work / "adlx_train.json")
        assert len(records) == 6 * len(stitched)  # 3 summary + 3 detail QAs per video
        assert {r["id"] for r in records} == set(stitched)
        assert first > 0

        before = (work / "adlx_train.json").read_bytes()
        again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert stub.count == first  # every step resumed: no request was made again
        assert (work / "adlx_train.json").read_bytes() == before

"""Run by the Python that has lmms-eval (tests/test_lmms_eval.py): offline inputs for lmms-eval's own tasks, and a
direct call of the plugin's request methods.

``python tests/lmms_fixture.py mvbench HF_HOME VIDEO...`` lays out what lmms-eval's ``mvbench_action_sequence`` task
reads, without any download: the videos where its ``doc_to_visual`` looks (``$HF_HOME/mvbench_video/star/
Charades_segment/``; the folder existing is what stops lmms-eval from fetching the archive) and the task's records, in
MVBench's JSON format, prepared by the ``datasets`` library's own JSON builder into the datasets cache where an
offline ``load_dataset("OpenGVLab/MVBench", "action_sequence")`` finds it.

``python tests/lmms_fixture.py loglik MODEL_ARGS VIDEO`` builds the model through lmms-eval's registry (the entry
point), gives it lmms-eval ``Instance`` s of loglikelihood requests in both modes, and prints the results as JSON.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

CANDIDATES = ["Sat down on the sofa.", "Stood up from the chair.", "Opened the fridge."]


def mvbench(hf_home: Path, videos: list[str]) -> None:
    from datasets.packaged_modules.json.json import Json

    folder = hf_home / "mvbench_video" / "star" / "Charades_segment"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, v in enumerate(videos):
        shutil.copy(v, folder / f"seg{i}.mp4")
        records.append({"video": f"seg{i}.mp4", "question": f"What did the person do first in clip {i}?",
                        "candidates": CANDIDATES, "answer": CANDIDATES[i % 3], "start": 0.5, "end": 2.5})
    source = hf_home / "action_sequence.json"
    source.write_text(json.dumps(records))
    builder = Json(cache_dir=str(hf_home / "build"), dataset_name="mv_bench", config_name="action_sequence",
                   data_files={"train": str(source)}, hash="offline")
    builder.download_and_prepare()
    built = Path(builder.cache_dir)  # .../mv_bench/action_sequence-<hash>/0.0.0/offline
    target = hf_home / "datasets" / "OpenGVLab___mv_bench" / "action_sequence" / built.parent.name / built.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(built, target)


def loglik(model_args: str, video: str) -> None:
    from lmms_eval.api.instance import Instance
    from lmms_eval.models import get_model

    cls = get_model("llavidal")
    out = {"class": f"{cls.__module__}.{cls.__name__}"}
    context = "What is the person doing?"
    for mode in ("loss", "logprob"):
        lm = cls.create_from_arg_string(f"{model_args},loglikelihood={mode}", {"batch_size": 2, "device": "cpu"})
        lm.task_dict = {"t": {"test": [{"video": video}]}}
        reqs = [Instance(request_type="loglikelihood", arguments=(context, f" {c}", lambda d: [d["video"]], 0, "t",
                                                                  "test"), idx=k,
                         metadata={"task": "t", "doc_id": 0, "repeats": 1}) for k, c in enumerate(CANDIDATES)]
        out[mode] = [list(r) for r in lm.loglikelihood(reqs)]
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "mvbench":
        mvbench(Path(sys.argv[2]), sys.argv[3:])
    else:
        loglik(sys.argv[2], sys.argv[3])

"""The modality registry: a fourth modality added in ONE place (a ``register_modality`` call) is trained and asked
about through the same code as video, object and pose — tokens, projector, feature validation, prompts, training
flags and data, inference flags, evaluation folders. Runs in a subprocess so the registration does not leak into
other tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import numpy as np
    import torch
    from safetensors.torch import load_file

    from llavidal.constants import Modality, register_modality

    # the one place: a toy "gaze" modality, 12-wide rows, 4 per sample
    register_modality(Modality("gaze", placeholder="<gaze>", patch_token="<gaze_patch>", start_token="<gaze_start>",
                               end_token="<gaze_end>", string_prefix=" gaze: ", projector="mm_projector_forgaze",
                               dim_attr="gaze_hidden_size", default_dim=12, default_rows=4))

    from llavidal.cli import main
    from llavidal.features import save_feature
    from llavidal.model.tiny import make_tiny

    out = Path(sys.argv[1])
    base = make_tiny(out / "base", seed=0)
    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        save_feature(rng.standard_normal((6, 1024)).astype(np.float16), out / "video" / f"v{i}.pkl")
        save_feature(rng.standard_normal((4, 12)).astype(np.float32), out / "gaze" / f"v{i}_gaze.pkl")
        answer = "The person looks left." if i % 2 else "The person looks right."
        records.append({"id": f"v{i}", "video": f"v{i}.pkl", "gaze": f"v{i}_gaze.pkl",
                        "conversations": [{"from": "human", "value": "Where does the person look?\\n<video><gaze>"},
                                          {"from": "gpt", "value": answer}]})
    (out / "train.json").write_text(json.dumps(records))
    assert main(["train", "--model_name_or_path", str(base), "--data_path", str(out / "train.json"),
                 "--video_folder", str(out / "video"), "--gaze_folder", str(out / "gaze"),
                 "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end", "True", "--output_dir", str(out / "run"),
                 "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
                 "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no"]) == 0
    adapter = load_file(str(out / "run" / "adapter.safetensors"))
    summary = json.loads((out / "run" / "train_summary.json").read_text())
    print("TRAINED", json.dumps({"modalities": summary["modalities"],
                                 "gaze_weight": list(adapter["model.mm_projector_forgaze.weight"].shape),
                                 "gaze_rows": sorted(k for k in adapter if "gaze" in k)}))
    assert main(["infer", "--base", str(out / "run"), "--video", str(out / "video" / "v0.pkl"), "--gaze",
                 str(out / "gaze" / "v0_gaze.pkl"), "-q", "Where?", "--max-new-tokens", "3", "--json",
                 "--device", "cpu"]) == 0
    bad = np.zeros((4, 7), np.float32)
    save_feature(bad, out / "bad_gaze.npy")
    assert main(["infer", "--base", str(out / "run"), "--gaze", str(out / "bad_gaze.npy"), "-q", "Where?",
                 "--max-new-tokens", "2", "--device", "cpu"]) == 2
''')


def test_a_fourth_modality_trains_and_answers(tmp_path):
    script = tmp_path / "gaze.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = json.loads(proc.stdout.split("TRAINED ", 1)[1].splitlines()[0])
    assert trained["modalities"] == ["video", "gaze"]
    assert trained["gaze_weight"] == [64, 12]  # Linear(12 -> hidden 64) of the tiny model
    assert {"added_tokens.embed_tokens.<gaze_start>", "added_tokens.embed_tokens.<gaze_end>"} <= set(
        trained["gaze_rows"])
    reply = json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"question"')][0])
    assert reply["modalities"] == ["video", "gaze"]
    assert "gaze features have shape [4, 7], expected [N, 12]" in proc.stderr  # a wrong-width file: a clear error

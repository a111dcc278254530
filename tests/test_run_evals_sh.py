"""evaluation/ADL-X/run_evals.sh runs from any directory and prints the final table."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_run_evals_from_another_directory(tiny_base, tmp_path):
    from llavidal.synthetic import WorldSpec, make_dataset

    data = make_dataset(tmp_path / "data", n_train=0, n_test=4, seed=2, spec=WorldSpec(video_rows=6, pose_rows=5))
    env = {**os.environ, "BASE_MODEL": str(tiny_base), "MODELS": f"tiny={tiny_base}",
           "SMARTHOME_AR": str(data["test"]), "SMARTHOME_FEATURES": str(data["video_folder"])}
    proc = subprocess.run(["bash", str(REPO / "evaluation/ADL-X/run_evals.sh"), "--tasks", "smarthome-ar lemma-tc",
                           "--output", str(tmp_path / "res"), "--mcq-mode", "loglik", "--batch-size", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skip lemma-tc for tiny" in proc.stdout
    assert "| tiny | smarthome-ar |" in proc.stdout
    assert (tmp_path / "res" / "tiny" / "smarthome-ar" / "summary.json").is_file()

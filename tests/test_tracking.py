"""Experiment tracking: ``--report_to tensorboard`` on a tiny training run writes TensorBoard event files offline,
whose scalars are the losses the Trainer logged; the report viewer reads the run's curves."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers_train import synthetic_data, train_flags


def test_report_to_tensorboard_writes_event_files(tiny_base, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[tracking]')")
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llavidal.eval.report import find_runs
    from llavidal.train.train import train

    data = synthetic_data(tmp_path / "data")
    out = tmp_path / "out"
    train(train_flags(tiny_base, data, out, ("video",), report_to="tensorboard", max_steps=3))
    events = sorted(out.glob("runs/*/events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    expected = {h["step"]: h["loss"] for h in history if "loss" in h}
    assert sorted(logged) == [1, 2, 3] and logged == pytest.approx(expected, rel=1e-5)
    assert "train/learning_rate" in acc.Tags()["scalars"]
    (run,) = find_runs([out]).trains
    assert run.source == "trainer_state.json" and [h["step"] for h in run.history if "loss" in h] == [1, 2, 3]
    assert Path(run.path) == out

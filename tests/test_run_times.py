"""MLflow run times on a real SQLite store: a trial's run starts when the trial starts (a run is
opened when Tune is handed its cell, which may wait for a free slot) and its duration is the trial's own."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from study.grids import ExpandContext, expand
from study.tracking import Tracker, default_tracking_uri


def _trial(run_id: str, trial_id: str) -> Any:
    """The parts of a Tune trial the callback reads."""
    return SimpleNamespace(trial_id=trial_id, config={"trial": {
        "run_id": run_id, "trial_id": trial_id, "name": f"cell/{trial_id}"}})


def _times(tracker: Tracker, run_id: str) -> tuple[float, float]:
    info = tracker.client.get_run(run_id).info
    return info.start_time / 1000, (info.end_time or 0) / 1000


def test_runs_start_with_their_trial_and_last_as_long_as_it(tmp_path):
    from study.callbacks import StudyCallback

    tracker = Tracker(default_tracking_uri(tmp_path), "t", artifact_root=tmp_path / "art")
    specs = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[:2]
    tracker.start_parent("first", {}, {"grid": "smoke"})
    # both cells are handed to Tune: both runs are opened now
    stage_start = time.time()
    runs = [tracker.open_trial_run(s, {"trial_id": f"t{i}"}, None) for i, s in enumerate(specs)]
    callback = StudyCallback(tracker, total=2, done_before=0, label="study")
    time.sleep(1.0)
    first_start = time.time()
    callback.on_trial_start(0, [], _trial(runs[0], "t0"))
    callback.on_trial_start(0, [], _trial(runs[0], "t0"))  # a retry keeps the first start
    time.sleep(2.0)
    second_start = time.time()
    callback.on_trial_start(0, [], _trial(runs[1], "t1"))
    time.sleep(1.0)
    tracker.finish(runs[0], "FINISHED")
    first_end = time.time()
    time.sleep(0.5)
    tracker.finish(runs[1], "FINISHED")
    second_end = time.time()

    (s0, e0), (s1, e1) = _times(tracker, runs[0]), _times(tracker, runs[1])
    assert s0 - stage_start > 0.9  # not the stage's start
    assert abs(s0 - first_start) < 0.3 and abs(s1 - second_start) < 0.3
    assert s1 - s0 > 1.7  # started seconds apart, as their trials did
    assert abs((e0 - s0) - (first_end - first_start)) < 0.3  # each run lasts its own trial
    assert abs((e1 - s1) - (second_end - second_start)) < 0.3


def test_a_resumed_run_with_epochs_keeps_its_first_start(tmp_path):
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "t", artifact_root=tmp_path / "art")
    trained, untrained = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[:2]
    tracker.start_parent("first", {}, {"grid": "smoke"})
    a = tracker.open_trial_run(trained, {"trial_id": trained.trial_id}, None)
    b = tracker.open_trial_run(untrained, {"trial_id": untrained.trial_id}, None)
    tracker.trial_started(a)
    tracker.log_metrics(a, {"train/loss_s": 1.0}, step=1)
    tracker.close_open("KILLED", "interrupted")  # b never ran
    first_a = _times(tracker, a)[0]
    time.sleep(1.0)
    again = Tracker(uri, "t")
    again.start_parent("second", {}, {"grid": "smoke"})
    existing = again.trial_runs()
    for spec, run_id in ((trained, a), (untrained, b)):
        assert again.open_trial_run(spec, {}, existing[spec.trial_id]) == run_id
        again.trial_started(run_id)
    now = time.time()
    assert _times(again, a)[0] == first_a  # its history began then
    assert abs(_times(again, b)[0] - now) < 0.5  # its old start meant nothing

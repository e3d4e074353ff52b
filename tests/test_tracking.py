"""MLflow adapter on a real SQLite store: one run per cell, nothing left RUNNING."""

from __future__ import annotations

from study.grids import ExpandContext, expand
from study.tracking import Tracker, default_tracking_uri


def test_cells_reuse_their_run_and_stale_runs_get_closed(tmp_path):
    tracker = Tracker(default_tracking_uri(tmp_path), "t", artifact_root=tmp_path / "art")
    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("first", {}, {"grid": "smoke"})
    run_id = tracker.open_trial_run(spec, {"trial_id": spec.trial_id}, None)
    params = tracker.client.get_run(run_id).data.params
    assert params["train.seed"] == "0" and params["data.modalities"] == "flair"
    # the driver "dies": its runs stay RUNNING until the next invocation closes them
    tracker2 = Tracker(default_tracking_uri(tmp_path), "t")
    assert tracker2.close_running("KILLED", "test") == 2  # the child and the first parent
    assert tracker2.client.get_run(run_id).info.status == "KILLED"
    tracker2.start_parent("second", {}, {"grid": "smoke"})
    existing = tracker2.trial_runs()[spec.trial_id]
    assert tracker2.open_trial_run(spec, {"trial_id": spec.trial_id}, existing) == run_id
    assert len(tracker2.trial_runs()) == 1
    tracker2.finish(run_id, "FINISHED")
    tracker2.end_parent("FINISHED", {"done": 1})
    assert tracker2.close_running("KILLED", "test") == 0

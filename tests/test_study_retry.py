"""A Tune retry really restores from Tune's checkpoint (real Ray, real MLflow).

The cell fails once after epoch 2 and loses its local ``last.pt`` (a node that died with
its disk); Tune retries it, the trainable brings a checkpoint back (Tune's copy of the last
reported epoch, or ``last.prev.pt``), and training resumes from it: every epoch is logged
exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import run_study
from tests.tiny_study import ONE_CELL_GRID

pytestmark = pytest.mark.slow

GRID = ONE_CELL_GRID


def test_retry_resumes_from_tunes_checkpoint(tmp_path: Path, synthetic_store: Path, ray_session):
    from mlflow.tracking import MlflowClient

    grid = tmp_path / "one.yaml"
    grid.write_text(GRID)
    study_dir = tmp_path / "study"
    rc = run_study.main(["--grid", str(grid), "--data", str(synthetic_store), "--study-dir",
                         str(study_dir), "--set", "train.max_epochs=4", "--max-failures", "1",
                         "--inject-failure", "flair@2", "--no-report"])
    assert rc == 0
    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    exp = client.get_experiment_by_name(meta["experiment"])
    (run,) = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert run.info.status == "FINISHED"
    (trial_dir,) = (study_dir / "trials").iterdir()
    assert (trial_dir / ".injected-failure-2").exists()  # the failure did happen
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_s")]
    assert sorted(epochs) == [1, 2, 3, 4]  # nothing missing, nothing doubled
    from core.checkpoint import load_checkpoint

    last = load_checkpoint(trial_dir / "last.pt")
    assert [int(h["epoch"]) for h in last["history"]] == [1, 2, 3, 4]
    # the checkpoint says what produced it
    assert last["provenance"]["budget"] == "smoke" and last["provenance"]["cell"] == run.info.run_name
    assert last["store_id"] and last["code_version"] and last["config"]["train"]["max_epochs"] == 4

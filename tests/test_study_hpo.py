"""`--grid hpo`: Optuna + ASHA on Ray Tune; resumable; writes a usable overlay."""

from __future__ import annotations

import json

import pytest
import yaml

import run_study
from core.config import load_config

pytestmark = pytest.mark.slow


def test_hpo_runs_resumes_and_writes_an_overlay(tmp_path, synthetic_store, ray_session, capsys):
    from mlflow.tracking import MlflowClient

    args = ["--grid", "hpo", "--budget", "smoke", "--num-samples", "2", "--data", str(synthetic_store),
            "--study-dir", str(tmp_path)]
    assert run_study.main(args) == 0
    assert "0 samples already done, 2 to run" in capsys.readouterr().out
    overlay = tmp_path / "hpo_best.yaml"
    values = yaml.safe_load(overlay.read_text())
    assert set(values) <= {"optim", "loss", "model", "data"}
    cfg = load_config("smoke", overlays=[overlay])  # other grids accept it via --overlay
    assert cfg.optim.lr_s == pytest.approx(values["optim"]["lr_s"])

    meta = json.loads((tmp_path / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    exp = client.get_experiment_by_name(meta["experiment"])
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert len(runs) == 2 and all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    sampled = [json.loads(r.data.tags["hpo.sampled"]) for r in runs]
    assert sampled[0] != sampled[1]

    # asking for 3 samples runs only the missing one
    assert run_study.main([*args[:5], "3", *args[6:]]) == 0
    assert "2 samples already done, 1 to run" in capsys.readouterr().out
    assert len(client.search_runs([exp.experiment_id], "tags.role = 'trial'")) == 3

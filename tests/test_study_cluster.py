"""`--address`: the study joins an existing two-node Ray cluster instead of starting one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_smoke_study_on_an_existing_two_node_cluster(tmp_path, synthetic_store):
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cmd = [sys.executable, str(REPO / "run_study.py"), "--grid", "smoke", "--data", str(synthetic_store),
               "--study-dir", str(tmp_path), "--address", cluster.address, "--no-report",
               "--set", "train.max_epochs=1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        cluster.shutdown()
    assert "10 finished, 0 failed, 0 skipped" in proc.stdout
    meta = json.loads((tmp_path / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    exp = client.get_experiment_by_name(meta["experiment"])
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert len(runs) == 10 and all(r.info.status == "FINISHED" for r in runs)

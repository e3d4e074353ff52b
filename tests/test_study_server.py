"""The study against a real MLflow tracking server (the cluster setup), not SQLite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import run_study

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def mlflow_server(tmp_path: Path):
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{(tmp_path / 'server.db').as_posix()}",
           "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: uvicorn children too
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_smoke_study_logs_to_a_tracking_server(tmp_path, synthetic_store, ray_session, mlflow_server):
    from mlflow.tracking import MlflowClient

    rc = run_study.main(["--grid", "smoke", "--data", str(synthetic_store), "--study-dir", str(tmp_path / "s"),
                         "--tracking-uri", mlflow_server, "--experiment", "server-smoke"])
    assert rc == 0
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("server-smoke")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert len(runs) == 10 and all(r.info.status == "FINISHED" for r in runs)
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id)]
    assert "per_volume.json" in artifacts
    assert (tmp_path / "s" / "report" / "report.md").exists()
    assert not (tmp_path / "s" / "mlflow.db").exists()  # nothing went to a local store

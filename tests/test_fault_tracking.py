"""A tracking outage does not abort the study (real `mlflow server` subprocess, killed
mid-trial and restarted on the same port and store; real Ray).

While the server is down the trial trains on, its epochs go to the study's tracking
journal, the user gets one line; when the server is back the journal is replayed
(idempotently): the study exits 0, no run is left RUNNING, every epoch is in MLflow
exactly once, the journal is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import run_study
from core.checkpoint import load_checkpoint
from tests.tiny_study import ONE_CELL_GRID

pytestmark = pytest.mark.slow
EPOCHS = 30  # the outage must begin mid-trial: smoke epochs take ~0.1 s
OUTAGE_S = 15.0
GRID = ONE_CELL_GRID


class Server:
    """``mlflow server`` on a fixed port and SQLite store: can be killed and started again."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.root, self.proc = root, None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
               str(self.port), "--backend-store-uri", f"sqlite:///{(self.root / 'server.db').as_posix()}",
               "--default-artifact-root", (self.root / "artifacts").as_uri(), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 90
        while not self.healthy():
            assert self.proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(0.3)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _outage(server: Server, trials: Path, log: list[str]) -> None:
    """Kill the server once the trial has logged a few epochs; restart it OUTAGE_S later."""
    deadline = time.monotonic() + 180
    while not any(_epoch(p) >= 3 for p in trials.glob("*/last.pt")):
        if time.monotonic() > deadline:
            log.append("no third epoch")
            return
        time.sleep(0.05)
    server.kill()
    log.append(f"killed at epoch {max(_epoch(p) for p in trials.glob('*/last.pt'))}")
    time.sleep(OUTAGE_S)
    server.start()
    log.append("restarted")


def _epoch(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return 0


def test_server_killed_mid_trial_and_restarted(tmp_path, synthetic_store, ray_session, capsys):
    from mlflow.tracking import MlflowClient

    server = Server(tmp_path)
    server.start()
    grid = tmp_path / "one.yaml"
    grid.write_text(GRID)
    study_dir = tmp_path / "study"
    log: list[str] = []
    chaos = threading.Thread(target=_outage, args=(server, study_dir / "trials", log), daemon=True)
    chaos.start()
    try:
        rc = run_study.main(["--grid", str(grid), "--data", str(synthetic_store), "--study-dir",
                             str(study_dir), "--tracking-uri", server.url, "--experiment", "outage",
                             "--set", f"train.max_epochs={EPOCHS}", "--no-report"])
        chaos.join(timeout=120)
        out = capsys.readouterr().out
        assert log[:1] and log[0].startswith("killed at epoch") and log[-1] == "restarted", log
        killed_at = int(log[0].split()[-1])
        assert killed_at < EPOCHS, "the trial ended before the outage: raise EPOCHS"
        assert rc == 0, out
        assert "Traceback" not in out
        assert sum("is unavailable" in line for line in out.splitlines()) == 1, out
        assert sum("is back after" in line for line in out.splitlines()) == 1, out
        assert not (study_dir / "tracking-journal.jsonl").exists()

        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id], "")
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        (trial,) = [r for r in runs if r.data.tags.get("role") == "trial"]
        assert any(k.startswith("eval/test/") for k in trial.data.metrics)
        for key in ("train/loss_s", "val/dice", "time/epoch_s"):
            steps = [m.step for m in client.get_metric_history(trial.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, sorted(steps))
    finally:
        server.kill()

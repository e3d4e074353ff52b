"""MLflow adapter: one experiment per study, a parent run per invocation, one
child run per grid cell, keyed by the trial's identity hash.

Only the driver process talks to MLflow (trials report to Ray Tune; a Tune
callback forwards to this module), so a SQLite store never sees two writers and
cluster workers need no tracking credentials.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from core.config import flatten
from core.errors import UserError

# A dead server must not hang the study for minutes per call (stack-notes).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# No phoning home from a study (the machines may have no internet at all).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")



def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{(Path(study_dir).resolve() / 'mlflow.db').as_posix()}"


def ui_command(tracking_uri: str) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def search_runs(client: Any, experiment_id: str, filter_string: str) -> Iterator[Any]:
    """Every run of the experiment matching ``filter_string``, page by page."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


class Tracker:
    """Driver-side MLflow bookkeeping for one study (one experiment)."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        import logging

        import mlflow
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter

        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as exc:  # noqa: BLE001 - any transport/store failure: one clear line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"MLflow tracking at {tracking_uri} is not usable: {first[:300]}") from None
        if exp is None:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
        self.experiment = experiment
        self.parent_id: str | None = None

    # -- parent run -------------------------------------------------------
    def start_parent(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={**tags, "role": "study"})
        self.parent_id = run.info.run_id
        for key, value in params.items():
            self.client.log_param(self.parent_id, key, _param(value))
        return self.parent_id

    def end_parent(self, status: str, summary: Mapping[str, Any]) -> None:
        if self.parent_id is None:
            return
        for key, value in summary.items():
            self.client.set_tag(self.parent_id, f"summary.{key}", str(value))
        self.client.set_terminated(self.parent_id, status)

    # -- child runs -------------------------------------------------------
    def trial_runs(self) -> dict[str, Any]:
        """Latest child run per trial id (a cell never has two, but be robust)."""
        runs: dict[str, Any] = {}
        for run in self._search("tags.role = 'trial'"):
            tid = run.data.tags.get("trial_id")
            if tid and (tid not in runs or run.info.start_time > runs[tid].info.start_time):
                runs[tid] = run
        return runs

    def _search(self, filter_string: str) -> Iterable[Any]:
        return search_runs(self.client, self.experiment_id, filter_string)

    def open_trial_run(self, spec: Any, tags: Mapping[str, str], existing: Any | None) -> str:
        """Reuse the cell's run if it exists (resume), else create it with params and tags."""
        if existing is not None:
            run_id = existing.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "resumed_by", self.parent_id or "")
            return str(run_id)
        all_tags = {**tags, "role": "trial", "mlflow.parentRunId": self.parent_id or ""}
        run = self.client.create_run(self.experiment_id, run_name=all_tags.get("mlflow.runName", spec.name),
                                     tags=all_tags)
        run_id = run.info.run_id
        params = {k: _param(v) for k, v in flatten(spec.config).items()}
        params["eval_modalities"] = ";".join(spec.eval_modalities)
        self.log_params(run_id, params)
        return str(run_id)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def finish(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def mark_skipped(self, spec: Any, tags: Mapping[str, str], existing: Any | None, reason: str) -> str:
        run_id = self.open_trial_run(spec, tags, existing)
        self.set_tags(run_id, {"skipped_reason": reason})
        self.finish(run_id, "KILLED")
        return run_id

    def close_running(self, status: str, reason: str) -> int:
        """End every run of this experiment still marked RUNNING (a driver died or failed
        mid-stage); a later invocation reopens the cells it resumes. Returns the count."""
        n = 0
        for run in self._search("attributes.status = 'RUNNING'"):
            if run.info.run_id == self.parent_id:
                continue
            self.client.set_tag(run.info.run_id, "closed_because", reason)
            self.client.set_terminated(run.info.run_id, status)
            n += 1
        return n


def _param(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text[:6000]

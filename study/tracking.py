"""MLflow adapter: one experiment per study, a parent run per invocation, one
child run per grid cell, keyed by the trial's identity hash.

Only the driver process talks to MLflow (trials report to Ray Tune; a Tune
callback forwards to this module), so a SQLite store never sees two writers and
cluster workers need no tracking credentials.

Writes (metrics, tags, statuses, JSON) go through ``study.journal``: journaled first,
delivered in order, kept and retried while the store does not answer (the study goes
on), replayed idempotently later. Reads and run creation wait for the store, bounded
by ``wait_s``. Metrics are never logged twice for one (run, key, step).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from core.errors import UserError
from core.nested import flatten
from study.courier import Courier
from study.journal import Journal, Outage, first_line
from study.tracking_ops import deliver

# A dead or hung server must not hold the driver for minutes per call: ~33 s at most
# (10 s timeout, 2 retries); the journal takes over after that.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# No phoning home from a study (the machines may have no internet at all).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Ending a run on a server would print two "View run" lines (and cost a call) per run.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

T = TypeVar("T")
WAIT_S = 600.0
"""Default bound on waiting for the store where the study cannot go on without it."""
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
             "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
"""MLflow error codes that no retry fixes (the entry is dropped with one line)."""
ENDING_TAGS = ("closed_because", "skipped_reason", "error", "stopped_by")
"""Tags saying how a run last ended: cleared when the run is reopened."""


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


def permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in PERMANENT


class Tracker:
    """Driver-side MLflow bookkeeping for one study (one experiment)."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None,
                 journal: Path | None = None, wait_s: float = WAIT_S) -> None:
        import logging

        import mlflow
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter
        for noisy in ("mlflow.store.db.utils", "urllib3.connectionpool"):  # an outage is one
            logging.getLogger(noisy).setLevel(logging.CRITICAL)  # line of ours, no tracebacks

        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as exc:  # noqa: BLE001 - any transport/store failure: one clear line
            raise UserError(f"MLflow tracking at {tracking_uri} is not usable: "
                            f"{first_line(exc)}") from None
        if exp is None:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
        self.experiment = experiment
        self.parent_id: str | None = None
        self.wait_s = wait_s
        self.journal = Journal(journal)
        self.outage = Outage(tracking_uri, journal)
        self.courier = Courier(self._flush, lambda: self.outage.retry_every if self.outage.down else None)
        self._logged: dict[str, set[tuple[str, int]]] = {}
        self._open: set[str] = set()
        """Runs this invocation set RUNNING and has not ended yet."""
        self._unstarted: set[str] = set()
        """Opened runs without a logged metric: ``trial_started`` sets their start time."""
        if self.journal.pending:
            print(f"replaying {len(self.journal.pending)} tracking entries journaled by an "
                  f"earlier invocation ({journal})", flush=True)
            self.sync(self.wait_s, "replaying the journal")

    def claim_study_dir(self, study_dir: Path) -> None:
        """Refuse to mix two study folders in one experiment: their checkpoints and resume
        points would be taken for each other's."""
        exp = self._live("reading the experiment",
                         lambda: self.client.get_experiment(self.experiment_id))
        owner, mine = exp.tags.get("study_dir"), str(Path(study_dir).resolve())
        if owner and owner != mine:
            raise UserError(f"experiment {self.experiment!r} at {self.tracking_uri} belongs to "
                            f"study folder {owner}; use --study-dir {owner} to continue it, or "
                            f"another --experiment for {mine}")
        if not owner:
            self._live("tagging the experiment", lambda: self.client.set_experiment_tag(
                self.experiment_id, "study_dir", mine))

    # -- parent run -------------------------------------------------------
    def start_parent(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        run = self._live("starting the parent run", lambda: self.client.create_run(
            self.experiment_id, run_name=name, tags={**tags, "role": "study"}))
        self.parent_id = run.info.run_id
        self._open.add(run.info.run_id)
        self._live("logging parameters", lambda: self.log_params(
            run.info.run_id, {k: _param(v) for k, v in params.items()}))
        return str(self.parent_id)

    def end_parent(self, status: str, summary: Mapping[str, Any]) -> None:
        if self.parent_id is None:
            return
        self.set_tags(self.parent_id, {f"summary.{k}": v for k, v in summary.items()})
        self.finish(self.parent_id, status)

    # -- child runs -------------------------------------------------------
    def trial_runs(self) -> dict[str, Any]:
        """Latest child run per trial id (a cell never has two, but be robust)."""
        runs: dict[str, Any] = {}
        for run in self._live("listing the runs", lambda: list(self._search("tags.role = 'trial'"))):
            tid = run.data.tags.get("trial_id")
            if tid and (tid not in runs or run.info.start_time > runs[tid].info.start_time):
                runs[tid] = run
        return runs

    def _search(self, filter_string: str) -> Iterable[Any]:
        return search_runs(self.client, self.experiment_id, filter_string)

    def open_trial_run(self, spec: Any, tags: Mapping[str, str], existing: Any | None) -> str:
        """Reuse the cell's run if it exists (resume), else create it with params and tags."""
        if existing is not None:
            run_id = str(existing.info.run_id)
            for key in ENDING_TAGS:
                if key in existing.data.tags:
                    self._write({"op": "delete_tag", "run": run_id, "key": key})
            self._write({"op": "status", "run": run_id, "status": "RUNNING"})
            self.set_tags(run_id, {"resumed_by": self.parent_id or ""})
            self._open.add(run_id)
            if not existing.data.metrics:  # never trained: its old start time means nothing
                self._unstarted.add(run_id)
            return run_id
        all_tags = {**tags, "role": "trial", "mlflow.parentRunId": self.parent_id or ""}
        run = self._live("creating a run", lambda: self.client.create_run(
            self.experiment_id, run_name=all_tags.get("mlflow.runName", spec.name), tags=all_tags))
        run_id = str(run.info.run_id)
        self._open.add(run_id)
        self._unstarted.add(run_id)
        self._logged[run_id] = set()
        params = {k: _param(v) for k, v in flatten(spec.config).items()}
        params["eval_modalities"] = ";".join(spec.eval_modalities)
        self._live("logging parameters", lambda: self.log_params(run_id, params))
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    # -- writes: journaled, never raise --------------------------------------
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` unless the run already has that (key, step)."""
        self.log_steps(run_id, [(step, metrics)])

    def log_steps(self, run_id: str, rows: Iterable[tuple[int, Mapping[str, float]]],
                  background: bool = False) -> None:
        """Log several steps' metrics as one entry (one store call: a report carries the
        epochs held since the last one), skipping (key, step) pairs the run already has.
        ``background``: delivered by the courier, not before this returns."""
        import math

        known = self._logged.get(run_id, set())
        fresh = []
        for step, metrics in rows:
            values = {k: float(v) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and math.isfinite(float(v))
                      and (k, int(step)) not in known}
            if values:
                fresh.append([int(step), values])
        if fresh:  # else nothing new (e.g. history rows already logged)
            self._write({"op": "metrics", "run": run_id, "rows": fresh,
                         "time": int(time.time() * 1000)}, background)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._write({"op": "tags", "run": run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        self._write({"op": "json", "run": run_id, "file": artifact_file, "data": data})

    def trial_started(self, run_id: str) -> None:
        """The run's trial starts now: runs are created when their stage starts, so the
        start time is moved here (once per run and invocation; a run with logged epochs
        keeps its first start). Only SQL stores can change it (MLflow has no API for it)."""
        if run_id in self._unstarted:
            self._unstarted.discard(run_id)
            self._write({"op": "start_time", "run": run_id, "time": int(time.time() * 1000)})

    def finish(self, run_id: str, status: str) -> None:
        self._write({"op": "status", "run": run_id, "status": status,
                     "time": int(time.time() * 1000)})  # the end time, even if replayed later
        self._open.discard(run_id)
        self._unstarted.discard(run_id)

    def mark_skipped(self, spec: Any, tags: Mapping[str, str], existing: Any | None, reason: str) -> str:
        run_id = self.open_trial_run(spec, tags, existing)
        self.set_tags(run_id, {"skipped_reason": reason})
        self.finish(run_id, "KILLED")
        return run_id

    def close_running(self, status: str, reason: str) -> int:
        """End every run of this experiment still marked RUNNING (a driver died or failed
        mid-stage); a later invocation reopens the cells it resumes. Returns the count."""
        stale = self._live("listing running runs",
                           lambda: list(self._search("attributes.status = 'RUNNING'")))
        n = 0
        for run in stale:
            if run.info.run_id == self.parent_id:
                continue
            self.set_tags(run.info.run_id, {"closed_because": reason})
            self.finish(run.info.run_id, status)
            n += 1
        return n

    def close_open(self, status: str, reason: str) -> int:
        """End the runs this invocation opened, without asking the store (it may be down)."""
        runs = sorted(self._open - {self.parent_id or ""})
        for run_id in runs:
            self.set_tags(run_id, {"closed_because": reason})
            self.finish(run_id, status)
        return len(runs)

    def close(self, wait_s: float = 60.0) -> None:
        """Deliver what is journaled (bounded); say where the rest waits for the next run."""
        self.courier.stop(wait_s)
        try:
            self.sync(wait_s, "finishing")
        except UserError as exc:
            print(exc, flush=True)
        self.journal.close()

    # -- delivery -----------------------------------------------------------
    def _write(self, entry: dict[str, Any], background: bool = False) -> None:
        """Journal ``entry``, then deliver everything pending now (or, ``background``, soon)."""
        self.journal.add(entry)
        if background:
            self.courier.nudge()
            return
        with self.courier.lock:
            self._flush()

    def sync(self, wait_s: float, what: str) -> None:
        """Deliver every journaled entry, waiting up to ``wait_s`` for the store."""
        self._live(what, lambda: None, wait_s)

    def _live(self, what: str, call: Callable[[], T], wait_s: float | None = None) -> T:
        """``call`` once the journal is delivered; while the store does not answer, retry
        with a bounded backoff, then fail with one line (the journal keeps the writes)."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while True:
            with self.courier.lock:
                if self._flush(force=True):
                    try:
                        with self.outage.watch(what):
                            result = call()
                        self.outage.recovered(0)
                        return result
                    except Exception as exc:  # noqa: BLE001 - transport or store failure
                        if permanent(exc):
                            raise
                        self.outage.failed(exc, len(self.journal.pending))
            if time.monotonic() >= deadline:
                raise UserError(
                    f"MLflow tracking at {self.tracking_uri} did not answer for "
                    f"{self.outage.waited():.0f} s while {what}; {len(self.journal.pending)} "
                    f"entries wait in {self.journal.path or 'memory'} and are replayed by the "
                    "next invocation (re-run the same command once the store is back)")
            time.sleep(min(self.outage.retry_every, max(0.1, deadline - time.monotonic())))

    def _flush(self, force: bool = False) -> bool:
        """Deliver pending entries in order; False (and the entries kept) if the store
        does not answer. While it is down, retries are paced by the outage. Callers hold
        ``courier.lock``."""
        if not self.journal.pending:
            return True
        if not force and not self.outage.due():
            return False
        self.outage.tried()
        if self.outage.down and not self._healthy():
            self.outage.failed(ConnectionError("no answer to a health check"), len(self.journal.pending))
            return False
        if self.outage.down:
            self._logged.clear()  # a call cut by the outage may have landed: ask again
        done = 0
        try:
            with self.outage.watch("delivering tracking entries"):
                for entry in list(self.journal.pending):
                    self._deliver_or_drop(entry)
                    done += 1
        except Exception as exc:  # noqa: BLE001 - transport or store failure
            self.journal.delivered(done)
            self.outage.failed(exc, len(self.journal.pending))
            return False
        self.journal.delivered(done)
        self.outage.recovered(done)
        return True

    def _deliver_or_drop(self, entry: dict[str, Any]) -> None:
        try:
            self._deliver(entry)
        except Exception as exc:  # noqa: BLE001
            if not permanent(exc):
                raise
            print(f"MLflow refused a {entry.get('op')} entry for run {entry.get('run')} "
                  f"({first_line(exc)}); dropped", flush=True)

    def _deliver(self, entry: dict[str, Any]) -> None:
        deliver(self.client, entry, self._logged_steps)

    def _logged_steps(self, run_id: str) -> set[tuple[str, int]]:
        """(key, step) pairs the run already has (asked once per run, then kept current)."""
        if run_id not in self._logged:
            keys = self.client.get_run(run_id).data.metrics.keys()
            self._logged[run_id] = {(key, int(m.step)) for key in keys
                                    for m in self.client.get_metric_history(run_id, key)}
        return self._logged[run_id]

    def _healthy(self) -> bool:
        """A cheap check before replaying into a server that was down (bounded: 3 s)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return True
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.tracking_uri.rstrip('/')}/health", timeout=3) as r:
                return bool(r.status == 200)
        except OSError:
            return False


def _param(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text[:6000]

"""How one tracking-journal entry becomes MLflow calls (``Tracker`` journals every write,
then delivers it here, in order, as often as it takes: each op is idempotent)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BATCH = 500
"""Metrics per ``log_batch`` call (MLflow takes at most 1000)."""


def deliver(client: Any, entry: dict[str, Any],
            logged_steps: Callable[[str], set[tuple[str, int]]]) -> None:
    """Send ``entry`` (``op``: metrics, tags, delete_tag, status, start_time, json).
    ``logged_steps(run)`` is the (key, step) pairs the run has; it is updated here."""
    from mlflow.entities import Metric, RunTag

    op, run_id = entry["op"], entry["run"]
    if op == "metrics":  # "rows": [[step, {key: value}], ...]; older journals: one step
        logged = logged_steps(run_id)
        rows = entry.get("rows") or [[entry["step"], entry["metrics"]]]
        items = [Metric(k, v, int(entry["time"]), int(step)) for step, values in rows
                 for k, v in values.items() if (k, int(step)) not in logged]
        for i in range(0, len(items), BATCH):
            client.log_batch(run_id, metrics=items[i : i + BATCH])
        logged.update((m.key, m.step) for m in items)
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
    elif op == "delete_tag":
        if entry["key"] in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, entry["key"])
    elif op == "status":
        if entry["status"] == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, entry["status"], end_time=entry.get("time"))
    elif op == "start_time":
        set_start_time(client, run_id, int(entry["time"]))
    elif op == "json":
        client.log_dict(run_id, entry["data"], entry["file"])


def set_start_time(client: Any, run_id: str, millis: int) -> None:
    """Set a run's start time in a SQL store (sqlite, PostgreSQL, MySQL); other stores
    (an MLflow server over HTTP) have no way to change it and keep the creation time."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is None or not hasattr(store, "ManagedSessionMaker"):
        return
    from mlflow.store.tracking.dbmodels.models import SqlRun

    with store.ManagedSessionMaker() as session:
        session.query(SqlRun).filter(SqlRun.run_uuid == run_id).update({"start_time": millis})

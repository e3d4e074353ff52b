"""MLflow made for training runs: the experiment marked as model training (MLflow 3 opens
unmarked experiments in its GenAI view), the direct runs URL, the dataset of every run
(``log_inputs``: store id, path, split sizes), one ``eval/<split>/dice`` column per run so
a single sort ranks every cell, strict-JSON artifacts, and no empty parent run left by an
invocation that had nothing to do."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.protocol import eval_metric

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""Experiment tag read by MLflow 3's UI (``ExperimentKind`` in its JS bundle)."""
TRAINING_KIND = "custom_model_development"
DATASET_CONTEXT = "training"


def mark_training_experiment(client: Any, experiment_id: str) -> None:
    """Open the experiment in MLflow's runs view (model training), not the GenAI view.
    A store that does not answer only costs the tag (a warning), never the study."""
    try:
        exp = client.get_experiment(experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    except Exception as exc:  # noqa: BLE001 - a convenience tag: warn and go on
        print(f"warning: experiment not marked as model training: {_first(exc)}", flush=True)


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def runs_url(tracking_uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table: on the tracking server itself when it is one, else on
    the local ``mlflow ui`` (``run_study.py ui``) at ``ui``."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}/runs"


def open_runs_view(tracking_uri: str, experiment: str, ui: str) -> str:
    """For ``run_study.py ui``: mark the study's experiment as model training (studies made
    before the tag) and return its runs URL on ``ui``; the UI's root if the store cannot say."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001 - the UI may still start: link its root
        print(f"warning: {_first(exc)}", flush=True)
        return ui
    if exp is None:
        return ui
    mark_training_experiment(client, exp.experiment_id)
    return runs_url(tracking_uri, exp.experiment_id, ui)


def strict_json(value: Any) -> Any:
    """A copy that ``json.dumps(..., allow_nan=False)`` accepts, in the project's convention
    (``evaluate --json``): NaN (undefined) → null, ±inf (HD95 with one empty mask) → "inf"."""
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def summary_columns(cell: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, float]:
    """``eval/<split>/dice`` (+ CI): the cell's own evaluation set's dice under one name for
    every run — the set of its own modalities, or its only set."""
    split = str(cell.get("eval_split") or "")
    keys = {k.split("/")[2] for k in metrics if k.startswith(f"eval/{split}/") and k.count("/") == 3}
    own = "-".join((cell.get("config") or {}).get("data", {}).get("modalities", []))
    key = own if own in keys else (next(iter(keys)) if len(keys) == 1 else "")
    if not split or not key:
        return {}
    out = {}
    for name in ("dice", "dice_ci_low", "dice_ci_high"):
        value = metrics.get(eval_metric(split, key, name))
        if isinstance(value, (int, float)):
            out[f"eval/{split}/{name}"] = float(value)
    return out


@functools.lru_cache(maxsize=8)
def _store_facts(location: str) -> str:
    from core.data.store_facts import store_facts

    return json.dumps(store_facts(location))


def log_dataset(client: Any, run_id: str, location: str) -> None:
    """Record the run's store as its MLflow dataset input (name, digest = store id, source,
    split sizes as the profile, preprocessing as the schema); once per run and store."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not location:
        return
    facts = json.loads(_store_facts(location))
    splits = facts.get("store_splits", {})
    dataset = Dataset(
        name=Path(location.rstrip("/")).name or location, digest=str(facts.get("store_id", "")),
        source_type="zarr", source=json.dumps({"uri": location}),
        schema=json.dumps({"preprocessing": facts.get("preprocessing", {})}),
        profile=json.dumps({"cases": splits, "total": sum(splits.values())}))
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context",
                                                               DATASET_CONTEXT)])])


def record_dataset(tracker: Any, run_id: str, cell: Mapping[str, Any]) -> None:
    """``log_dataset`` for a trial's run from its cell; a failure is a warning, never the
    trial's end (the dataset is a convenience, the store id is a tag anyway)."""
    location = str((cell.get("config") or {}).get("data", {}).get("store") or "")
    try:
        log_dataset(tracker.client, run_id, location)
    except Exception as exc:  # noqa: BLE001 - store moved, tracking hiccup: keep going
        print(f"warning: dataset input of {cell.get('name')} not recorded: {_first(exc)}",
              flush=True)


def parent_was_idle(client: Any, experiment_id: str, parent_id: str) -> bool:
    """True if no child run was created or reopened under this parent run."""
    from study.tracking import search_runs

    for key in ("mlflow.parentRunId", "resumed_by"):
        if next(iter(search_runs(client, experiment_id, f"tags.`{key}` = '{parent_id}'")), None):
            return False
    return True


def drop_idle_parent(tracker: Any) -> bool:
    """Delete the invocation's parent run if it did nothing (a re-run of a finished study):
    no empty run per re-invocation. Returns True when it was dropped."""
    pid = tracker.parent_id
    try:
        if not pid or not parent_was_idle(tracker.client, tracker.experiment_id, pid):
            return False
        tracker.client.delete_run(pid)
    except Exception as exc:  # noqa: BLE001 - the store went away: keep the run, say so
        print(f"warning: could not check the parent run for activity: {_first(exc)}", flush=True)
        return False
    return True

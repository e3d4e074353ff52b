"""MLflow side of working with a study's results: find a cell's run (or the grid's best),
read the numbers a model card quotes, record an ``evaluate`` in a run, and log an export
to the cell's run as an artifact folder plus an MLflow PyTorch model (UI: Models column,
``mlflow.pytorch.load_model``, the registry)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.protocol import parse_eval_metric

# Artifact uploads and downloads would each print a progress bar on the CLI.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

EXPORT_ARTIFACTS = "export"
MODEL_NAME = "segmentor"


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter
    return MlflowClient(uri)


def metric_history(uri: str) -> Any:
    """A reader ``(run_id, key) -> {step: value}`` of logged metric histories (the latest
    value per step), over one client."""
    client = _client(uri)

    def read(run_id: str, key: str) -> dict[int, float]:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        return {int(m.step): float(m.value) for m in history}

    return read


def _experiment_id(client: Any, experiment: str, uri: str) -> str:
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001 - unreachable server, broken store: one line
        raise UserError(f"MLflow tracking at {uri} is not usable: "
                        f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}") from None
    if exp is None:
        raise UserError(f"MLflow experiment {experiment!r} not found at {uri}")
    return str(exp.experiment_id)


def _trial_runs(uri: str, experiment: str, extra: str = "") -> list[Any]:
    from study.tracking import search_runs

    client = _client(uri)
    query = "tags.role = 'trial'" + (f" and {extra}" if extra else "")
    return list(search_runs(client, _experiment_id(client, experiment, uri), query))


def cell_run(uri: str, experiment: str, trial_id: str) -> Any | None:
    """The latest run of the cell with this trial id, or None."""
    runs = _trial_runs(uri, experiment, f"tags.trial_id = '{trial_id}'")
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


def latest_runs(uri: str, experiment: str) -> list[Any]:
    """The latest run of every cell (by trial id), sorted by name."""
    latest: dict[str, Any] = {}
    for run in _trial_runs(uri, experiment):
        tid = run.data.tags.get("trial_id") or run.info.run_id
        if tid not in latest or (run.info.start_time or 0) > (latest[tid].info.start_time or 0):
            latest[tid] = run
    return sorted(latest.values(), key=lambda r: r.info.run_name or r.info.run_id)


def cell_states(uri: str, experiment: str) -> dict[str, str]:
    """trial id → what its latest run says: finished, failed, skipped, killed or running."""
    states = {}
    for run in latest_runs(uri, experiment):
        status = str(run.info.status).lower()
        if status == "killed" and "skipped_reason" in run.data.tags:
            status = "skipped"
        states[run.data.tags.get("trial_id", "")] = status
    return states


def best_run(uri: str, experiment: str) -> Any:
    """The FINISHED cell with its own checkpoint and the highest validation dice
    (``val/best_dice``: chosen on validation, never on the evaluation split)."""
    runs = [r for r in _trial_runs(uri, experiment, "attributes.status = 'FINISHED'")
            if r.data.tags.get("best_checkpoint")
            and math.isfinite(r.data.metrics.get("val/best_dice", math.nan))]
    if not runs:
        raise UserError(f"experiment {experiment!r}: no finished cell with a checkpoint and a "
                        f"val/best_dice yet")
    return max(runs, key=lambda r: r.data.metrics["val/best_dice"])


def run_metrics(run: Any) -> dict[str, Any]:
    """A run's final numbers for a model card: per evaluation split and set, each metric's
    mean with its 95% interval, volume counts, and the validation dice that chose it."""
    sets: dict[str, dict[str, dict[str, Any]]] = {}
    for name, value in sorted(run.data.metrics.items()):
        parsed = parse_eval_metric(name)
        if parsed is None:
            continue
        split, key, metric = parsed
        entry = sets.setdefault(f"{split}/{key}", {})
        for suffix, field in (("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            if metric.endswith(suffix):
                entry.setdefault(metric[: -len(suffix)], {})[field] = value
                break
        else:
            if metric in ("n_volumes", "n_excluded"):
                entry.setdefault("dice", {})[metric] = int(value)
            elif metric.startswith("n_") or "_n_" in metric:  # a count beside the means
                entry.setdefault(metric, {})["count"] = int(value)
            else:
                entry.setdefault(metric, {})["mean"] = value
    return {"evaluation": sets, "val_best_dice": run.data.metrics.get("val/best_dice"),
            "best_epoch": _int(run.data.metrics.get("best/epoch"))}


def _int(value: float | None) -> int | None:
    return None if value is None or not math.isfinite(value) else int(value)


def log_evaluation(uri: str, run_id: str, region: str, result: Mapping[str, Any]) -> list[str]:
    """Record an ``evaluate`` result (one pair or a folder summary) in a run: metrics
    ``original_grid/<region>/<metric>`` (``_ci_low``/``_ci_high``, ``n`` for folders) and
    the whole result as ``original_grid/<region>.json``. Returns the metric names."""
    from mlflow.entities import Metric

    numbers: dict[str, Any] = {}
    if "summary" in result:
        for name, s in result["summary"].items():
            numbers.update({name: s.get("mean"), f"{name}_ci_low": s.get("ci_low"),
                            f"{name}_ci_high": s.get("ci_high"), f"{name}_n": s.get("n")})
    else:
        numbers = {k: v for k, v in result.items() if k not in ("pred", "truth", "region")}
    import time

    now = int(time.time() * 1000)
    metrics = [Metric(f"original_grid/{region}/{k}", float(v), now, 0)
               for k, v in numbers.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    client = _client(uri)
    try:
        client.log_batch(run_id, metrics=metrics)
    except Exception as exc:  # noqa: BLE001 - unknown run, unreachable server: one line
        raise UserError(f"MLflow run {run_id!r} at {uri}: cannot record the result "
                        f"({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]})") from None
    client.log_dict(run_id, dict(result), f"original_grid/{region}.json")
    return [m.key for m in metrics]


def log_export(uri: str, run_id: str, folder: Path, state: Mapping[str, Any],
               card: Mapping[str, Any], register: str | None = None) -> dict[str, str]:
    """Log an export folder to the cell's run (artifacts ``export/``) and its segmentor as
    an MLflow PyTorch model (pickled with the ``core`` package as code, so
    ``mlflow.pytorch.load_model`` works without this checkout). Returns the URIs."""
    client = _client(uri)
    client.log_artifacts(run_id, str(folder), EXPORT_ARTIFACTS)
    out = {"artifacts": f"runs:/{run_id}/{EXPORT_ARTIFACTS}"}
    info = _log_model(uri, run_id, folder, state, card, register)
    out.update({"model_uri": info.model_uri, "model_id": str(getattr(info, "model_id", "") or "")})
    version = getattr(info, "registered_model_version", None)
    if register and version is not None:
        out["registered_model"] = f"models:/{register}/{version}"
    client.set_tag(run_id, "exported_model", info.model_uri)
    return out


def _log_model(uri: str, run_id: str, folder: Path, state: Mapping[str, Any],
               card: Mapping[str, Any], register: str | None) -> Any:
    import mlflow
    import mlflow.pytorch
    import torch

    from core.checkpoint import build_segmentor

    segmentor, _ = build_segmentor(dict(state))
    core_dir = Path(__file__).resolve().parents[1] / "core"
    card_params = {"modalities": ",".join(card["inputs"]["modalities"]),
                   "crop": ",".join(map(str, card["preprocessing"]["crop"])),
                   "cell": str(card["cell"]["name"]), "store_id": str(card["training"]["store_id"])}
    mlflow.set_tracking_uri(uri)
    # the logged model belongs to the run's experiment (MLflow puts it in the active one)
    mlflow.set_experiment(experiment_id=_client(uri).get_run(run_id).info.experiment_id)
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the pickle-format notice: loading needs this code, by design
    try:
        return mlflow.pytorch.log_model(
            segmentor, name=MODEL_NAME, run_id=run_id, code_paths=[str(core_dir)],
            serialization_format="pickle", pip_requirements=[f"torch>={torch.__version__.split('+')[0]}",
                                                             "numpy"],
            extra_files=[str(folder / "model_card.md"), str(folder / "model_card.json")],
            tags=card_params, registered_model_name=register)
    finally:
        quiet.setLevel(level)

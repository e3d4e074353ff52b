"""``report/results.csv``: one row per finished cell — name, run id, checkpoint, evaluation
split and set, dice mean with its 95% interval, volumes — read from MLflow (the same runs
as ``report.json``'s ``cells``), for spreadsheets, pandas and papers."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from core.atomic import write_text
from core.protocol import eval_metric, parse_eval_metric

COLUMNS = ("name", "kind", "family", "modalities", "region", "seed", "freeze", "run_id",
           "trial_id", "checkpoint", "split", "eval_set", "dice", "dice_ci_low",
           "dice_ci_high", "n_volumes", "n_excluded", "val_best_dice")
FILE_NAME = "results.csv"


def own_eval_set(tags: dict[str, str], metrics: dict[str, float]) -> tuple[str, str]:
    """(split, set) of a run's own evaluation: the set of its own modalities, else its only
    set; ("", "") when it logged none."""
    found = {p[:2] for p in map(parse_eval_metric, metrics) if p and p[2] == "dice"}
    own = "-".join(m for m in tags.get("modalities", "").split(",") if m)
    mine = sorted(f for f in found if f[1] == own)
    if mine:
        return mine[0]
    return next(iter(found)) if len(found) == 1 else ("", "")


def cell_row(run: Any, checkpoints: dict[str, str]) -> dict[str, Any]:
    """The CSV row of one finished run (``checkpoints``: trial id → best checkpoint, for
    evaluate cells, whose checkpoint is their source's)."""
    tags, metrics = dict(run.data.tags), dict(run.data.metrics)
    split, key = own_eval_set(tags, metrics)

    def number(name: str) -> Any:
        return metrics.get(eval_metric(split, key, name), "") if split else ""

    counts = {k: (int(v) if isinstance(v, float) else v)
              for k, v in (("n_volumes", number("n_volumes")), ("n_excluded", number("n_excluded")))}
    return {"name": run.info.run_name or run.info.run_id,
            **{k: tags.get(k, "") for k in ("kind", "family", "modalities", "region", "seed",
                                             "freeze", "trial_id")},
            "run_id": run.info.run_id,
            "checkpoint": tags.get("best_checkpoint") or checkpoints.get(tags.get("source_trial", ""), ""),
            "split": split, "eval_set": key, "dice": number("dice"),
            "dice_ci_low": number("dice_ci_low"), "dice_ci_high": number("dice_ci_high"),
            **counts, "val_best_dice": metrics.get("val/best_dice", "")}


def results_rows(uri: str, experiment: str) -> list[dict[str, Any]]:
    """One row per finished cell (its latest run), sorted by name."""
    from study.mlflow_results import latest_runs

    runs = [r for r in latest_runs(uri, experiment) if r.info.status == "FINISHED"]
    checkpoints = {r.data.tags.get("trial_id", ""): r.data.tags.get("best_checkpoint", "")
                   for r in runs}
    return [cell_row(r, checkpoints) for r in runs]


def write_results_csv(uri: str, experiment: str, out_dir: Path) -> Path:
    """Write ``out_dir/results.csv`` (atomically) and return its path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(results_rows(uri, experiment))
    path = Path(out_dir) / FILE_NAME
    write_text(path, buffer.getvalue())
    return path

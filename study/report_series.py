"""The series behind the report's distribution and learning-curve figures, read from MLflow:
per-volume dice of every cell (from each run's ``per_volume.json``, under the empty-truth
policy of ``core.metrics``: tumour volumes only) and the per-epoch history of validation
dice and training losses (each trial run's MLflow metric history).

Cells are grouped per family (one figure each); a cell is its runs over seeds (the latest
FINISHED run per seed, as in the tables); ``hpo`` samples are a search, not cells.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

from study.report_stats import PerVolume, TrialRun, by_seed

CURVE_KEYS = ("val/dice", "train/loss_s", "train/loss_d")
"""Per-epoch metrics drawn as learning curves (validation dice, segmentor and critic loss)."""


def cell_label(run: TrialRun) -> str:
    """A cell's name within its family: the run name without the family and the seed."""
    name = run.name
    family = run.tag("family")
    if family and name.startswith(f"{family}/"):
        name = name[len(family) + 1:]
    return re.sub(rf"/(seed)?{re.escape(run.seed)}$", "", name) or name


def _cells(runs: list[TrialRun]) -> dict[str, dict[str, list[TrialRun]]]:
    """family -> cell label -> finished runs (every seed), in run-name order."""
    out: dict[str, dict[str, list[TrialRun]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.status == "FINISHED" and r.tag("family") not in ("", "hpo"):
            out[r.tag("family")][cell_label(r)].append(r)
    return {fam: dict(cells) for fam, cells in sorted(out.items())}


def volume_distributions(runs: list[TrialRun], vols: PerVolume) -> dict[str, list[dict[str, Any]]]:
    """family -> one entry per (cell, evaluation set): the per-volume dice of each seed.

    A model evaluated on its own inputs is the cell itself; an ``evaluate`` cell scored on
    other inputs adds ``→ <key>``. Runs without ``per_volume.json`` are left out (the
    report's header counts them)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for family, cells in _cells(runs).items():
        entries = []
        for label, cell_runs in cells.items():
            seeds = by_seed(cell_runs)
            own = "-".join(next(iter(seeds.values())).mods)
            keys = sorted({k for r in seeds.values() for k in r.test_keys()},
                          key=lambda k: (k != own, k))
            for key in keys:
                per_seed = {seed: [v for v in vols.values(r.run_id, key, "dice").values()
                                   if math.isfinite(v)] for seed, r in seeds.items()}
                per_seed = {s: v for s, v in per_seed.items() if v}
                if per_seed:
                    counts = [len(v) for v in per_seed.values()]
                    entries.append({"cell": label if key == own else f"{label} → {key}",
                                    "key": key, "seeds": list(per_seed),
                                    "dice": list(per_seed.values()), "n_seeds": len(per_seed),
                                    "n_volumes": max(counts), "n": sum(counts)})
        if entries:
            out[family] = entries
    return out


def learning_curves(tracking_uri: str, runs: list[TrialRun]) -> dict[str, list[dict[str, Any]]]:
    """family -> one entry per cell: per seed, each ``CURVE_KEYS`` metric's history as
    ``{"epoch": [...], "value": [...]}`` (MLflow step = epoch), sorted by epoch."""
    from study.mlflow_results import metric_history  # MLflow only through its adapters

    history_of = metric_history(tracking_uri)
    out: dict[str, list[dict[str, Any]]] = {}
    for family, cells in _cells(runs).items():
        entries = []
        for label, cell_runs in cells.items():
            seeds: dict[str, dict[str, Any]] = {}
            for seed, r in by_seed(cell_runs).items():
                series = {}
                for key in (k for k in CURVE_KEYS if k in r.metrics):
                    last = history_of(r.run_id, key)  # latest value per epoch
                    series[key] = {"epoch": list(last), "value": list(last.values())}
                if series:
                    seeds[seed] = series
            if seeds:
                entries.append({"cell": label, "seeds": seeds})
        if entries:
            out[family] = entries
    return out


def figure_series(tracking_uri: str, runs: list[TrialRun], vols: PerVolume) -> dict[str, Any]:
    """The report's ``distributions`` and ``curves`` sections."""
    return {"distributions": volume_distributions(runs, vols),
            "curves": learning_curves(tracking_uri, runs)}

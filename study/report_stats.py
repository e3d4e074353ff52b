"""Runs and statistics for the report: load a study's runs from MLflow, then
per-cell means with CIs over volumes and seeds, and paired transfer-vs-scratch
differences (helpers from ``core.metrics``, none re-implemented here)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import paired_difference, summarize
from core.protocol import eval_metric, parse_eval_metric


# -- runs ---------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRun:
    """One child run as the report sees it."""

    run_id: str
    name: str
    status: str
    start_time: int
    tags: dict[str, str]
    metrics: dict[str, float]

    def tag(self, key: str, default: str = "") -> str:
        return self.tags.get(key, default)

    @property
    def mods(self) -> tuple[str, ...]:
        return tuple(m for m in self.tag("modalities").split(",") if m)

    @property
    def seed(self) -> str:
        return self.tag("seed", "?")

    @property
    def eval_split(self) -> str:
        """The split this run's final metrics were computed on (``test`` or ``val``)."""
        for k in self.metrics:
            parsed = parse_eval_metric(k)
            if parsed:
                return parsed[0]
        return ""

    def metric(self, key: str, name: str) -> float | None:
        split = self.eval_split
        value = self.metrics.get(eval_metric(split, key, name)) if split else None
        return None if value is None or not math.isfinite(value) else float(value)

    def test_keys(self) -> list[str]:
        """Evaluation keys with a logged dice (``flair``, ``flair-t1-t1c-t2`` …)."""
        found = (parse_eval_metric(k) for k in self.metrics)
        return sorted({p[1] for p in found if p and p[2] == "dice"})


def load_runs(tracking_uri: str, experiment: str) -> tuple[list[Any], list[TrialRun]]:
    """(parent runs, latest child run per trial id) of ``experiment``; UserError if absent."""
    from mlflow.tracking import MlflowClient

    from core.errors import UserError
    from study.tracking import search_runs

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment {experiment!r} not found at {tracking_uri}")
    parents = list(search_runs(client, exp.experiment_id, "tags.role = 'study'"))
    latest: dict[str, TrialRun] = {}
    for run in search_runs(client, exp.experiment_id, "tags.role = 'trial'"):
        tr = TrialRun(run.info.run_id, run.info.run_name or run.info.run_id, run.info.status,
                      int(run.info.start_time or 0), dict(run.data.tags), dict(run.data.metrics))
        tid = tr.tag("trial_id") or tr.run_id
        if tid not in latest or tr.start_time > latest[tid].start_time:
            latest[tid] = tr
    return parents, sorted(latest.values(), key=lambda r: r.name)


class PerVolume:
    """``per_volume.json`` of finished runs, downloaded once each."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.cache: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.missing: set[str] = set()

    def rows(self, run_id: str, key: str) -> list[dict[str, Any]]:
        import mlflow.artifacts

        if run_id not in self.cache:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path="per_volume.json", tracking_uri=self.tracking_uri)
                self.cache[run_id] = dict(json.loads(Path(path).read_text()))
            except Exception:  # noqa: BLE001 - a missing artifact only leaves per-volume stats out
                self.missing.add(run_id)
                self.cache[run_id] = {}
        return self.cache[run_id].get(key, [])

    def values(self, run_id: str, key: str, metric: str) -> dict[str, float]:
        """case_id -> metric value (NaN when undefined: NaN or null in the file)."""
        return {str(r["case_id"]): _number(r.get(metric)) for r in self.rows(run_id, key)}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


# -- statistics ---------------------------------------------------------------
def seed_interval(values: Iterable[float]) -> tuple[float, float]:
    """95% Student-t interval of the mean of ``values`` (NaN for fewer than 2)."""
    from scipy import stats

    v = np.asarray(list(values), dtype=float)
    if v.size < 2:
        return (math.nan, math.nan)
    if np.all(v == v[0]):
        return (float(v[0]), float(v[0]))
    low, high = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return (float(low), float(high))


def _stack(vols: PerVolume, runs: list[TrialRun], key: str, metric: str) -> np.ndarray:
    """(runs, cases) array of per-volume values over the case ids all runs share."""
    maps = [vols.values(r.run_id, key, metric) for r in runs]
    cases = sorted(set.intersection(*(set(m) for m in maps))) if maps else []
    return np.array([[m[c] for c in cases] for m in maps], dtype=float).reshape(len(maps), -1)


def _nanmean0(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where a column has no finite value."""
    finite = np.isfinite(a)
    n = finite.sum(axis=0)
    return np.where(n > 0, np.where(finite, a, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)


def by_seed(runs: Iterable[TrialRun]) -> dict[str, TrialRun]:
    """Latest FINISHED run per seed, ordered by seed."""
    out: dict[str, TrialRun] = {}
    for r in runs:
        if r.status == "FINISHED" and (r.seed not in out or r.start_time > out[r.seed].start_time):
            out[r.seed] = r
    return dict(sorted(out.items(), key=lambda kv: (len(kv[0]), kv[0])))  # "2" before "10"


def cell_stats(runs: Iterable[TrialRun], key: str, metric: str,
               vols: PerVolume) -> dict[str, Any] | None:
    """One table cell: ``eval/<split>/<key>/<metric>`` over the cell's seeds (module docstring)."""
    seeds = {s: r for s, r in by_seed(runs).items() if r.metric(key, metric) is not None}
    if not seeds:
        return None
    per_seed = [{"seed": s, "run_id": r.run_id, "mean": r.metric(key, metric),
                 "ci_low": r.metric(key, f"{metric}_ci_low"),
                 "ci_high": r.metric(key, f"{metric}_ci_high"),
                 "n_volumes": r.metric(key, "n_volumes"), "n_excluded": r.metric(key, "n_excluded")}
                for s, r in seeds.items()]
    cell: dict[str, Any] = {"n_seeds": len(per_seed), "seeds": list(seeds), "per_seed": per_seed,
                            "n_volumes": _sum(p["n_volumes"] for p in per_seed),
                            "n_excluded": _sum(p["n_excluded"] for p in per_seed)}
    if len(per_seed) == 1:
        p = per_seed[0]
        return {**cell, "mean": p["mean"], "ci_low": p["ci_low"], "ci_high": p["ci_high"],
                "seed_ci_low": None, "seed_ci_high": None}
    means = [float(p["mean"]) for p in per_seed]
    lo, hi = seed_interval(means)
    # dice, precision and sensitivity live in [0, 1]; a t-interval over 2–3 seeds can
    # overshoot, so it is clipped to the metric's range
    lo, hi = max(lo, 0.0), min(hi, 1.0)
    values = _stack(vols, list(seeds.values()), key, metric)
    vol = summarize(_nanmean0(values)) if values.size else None
    return {**cell, "mean": float(np.mean(means)), "ci_low": vol.ci_low if vol else None,
            "ci_high": vol.ci_high if vol else None, "seed_ci_low": lo, "seed_ci_high": hi}


def _sum(values: Iterable[float | None]) -> int | None:
    vals = [v for v in values if v is not None]
    return int(sum(vals)) if vals else None


def paired_vs_scratch(transfer: Iterable[TrialRun], scratch: Iterable[TrialRun], key: str,
                      vols: PerVolume) -> dict[str, Any] | None:
    """Transfer − scratch dice per volume (same seed, same case_id), mean with bootstrap CI.

    With several seeds each side is averaged over seeds per volume first (only over
    seeds where both are defined), then ``paired_difference`` runs over volumes.
    """
    t_runs, s_runs = by_seed(transfer), by_seed(scratch)
    seeds = [s for s in t_runs if s in s_runs]
    if not seeds:
        return None
    values = _stack(vols, [t_runs[s] for s in seeds] + [s_runs[s] for s in seeds], key, "dice")
    if not values.size:
        return {"seeds": seeds, "mean_diff": None, "ci_low": None, "ci_high": None, "n_pairs": 0,
                "n_excluded": 0, "verdict": "no per-volume rows"}
    a, b = values[: len(seeds)], values[len(seeds):]
    both = np.isfinite(a) & np.isfinite(b)
    s = paired_difference(_nanmean0(np.where(both, a, np.nan)),
                          _nanmean0(np.where(both, b, np.nan)))
    verdict = ("transfer better" if s.ci_low > 0 else "scratch better" if s.ci_high < 0
               else "no clear difference")
    return {"seeds": seeds, "mean_diff": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high,
            "n_pairs": s.n, "n_excluded": s.n_excluded, "verdict": verdict}


def gain_over_scratch(transfer: Iterable[TrialRun], scratch: Iterable[TrialRun],
                      key: str) -> dict[str, Any] | None:
    """Logged mean dice transfer − scratch per common seed, averaged (t-interval over seeds)."""
    s_runs = by_seed(scratch)
    pairs = {s: (r.metric(key, "dice"), s_runs[s].metric(key, "dice"))
             for s, r in by_seed(transfer).items() if s in s_runs}
    diffs = {s: a - b for s, (a, b) in pairs.items() if a is not None and b is not None}
    if not diffs:
        return None
    lo, hi = seed_interval(diffs.values())
    return {"gain": float(np.mean(list(diffs.values()))), "per_seed": diffs,
            "seed_ci_low": lo, "seed_ci_high": hi}

"""Runs and statistics for the report: load a study's runs from MLflow, then per-cell
means with hierarchical intervals over seeds and volumes, and paired transfer-vs-scratch
differences (helpers from ``core.metrics``, none re-implemented here).

Every number follows ``core.metrics``' empty-truth policy: dice, precision, sensitivity
and HD95 are computed from each run's ``per_volume.json`` over the volumes whose truth is
non-empty (the same volumes for every model of a comparison); tumour-free volumes are
counted apart (false-positive volumes); specificity covers every volume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import (
    SCORED_ON_EVERY_VOLUME,
    hierarchical_interval,
    policy_values,
    tumour_free,
)
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
    params: dict[str, str] = field(default_factory=dict)
    """The run's resolved config, flattened (``loss.l1_mode`` …)."""

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
                      int(run.info.start_time or 0), dict(run.data.tags), dict(run.data.metrics),
                      dict(run.data.params))
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
        """case_id -> value under the empty-truth policy (``core.metrics.policy_values``:
        NaN on tumour-free volumes but for specificity, and when undefined)."""
        rows = self.rows(run_id, key)
        return dict(zip((str(r["case_id"]) for r in rows), policy_values(rows, metric).tolist(),
                        strict=True))

    def tumour_free(self, run_id: str, key: str) -> tuple[int, int]:
        """(tumour-free volumes, false-positive volumes among them) of one run."""
        return tumour_free(self.rows(run_id, key))


# -- statistics ---------------------------------------------------------------
N_BOOT = 2000
"""Bootstrap resamples of every interval (seeded: the report is reproducible)."""
BOUNDS = {"hd95": (0.0, math.inf)}
"""Range a cell's interval is clipped to; [0, 1] for the ratio metrics."""
ONE_SEED = "1 seed — no verdict"
STATISTICS = {
    "policy": "dice, precision, sensitivity and HD95 over the volumes whose truth is "
              "non-empty (the same volumes for every model); tumour-free volumes are counted "
              "apart as false-positive volumes; specificity over every volume",
    "cell_ci": "95% hierarchical bootstrap over seeds × volumes (2000 resamples: seeds, then "
               "volumes, one volume draw shared by the drawn seeds), mean ± t·SE with "
               "Welch–Satterthwaite df; one seed: volumes only, training noise not included",
    "paired_ci": "the same hierarchical interval of the per-volume dice difference (paired by "
                 "seed and case_id)",
    "verdicts": f"from ≥ 2 seeds only (else \"{ONE_SEED}\"); per cell at 95%, unadjusted "
                "(exploratory); the Holm column corrects over the table's cells",
}


def by_seed(runs: Iterable[TrialRun]) -> dict[str, TrialRun]:
    """Latest FINISHED run per seed, ordered by seed."""
    out: dict[str, TrialRun] = {}
    for r in runs:
        if r.status == "FINISHED" and (r.seed not in out or r.start_time > out[r.seed].start_time):
            out[r.seed] = r
    return dict(sorted(out.items(), key=lambda kv: (len(kv[0]), kv[0])))  # "2" before "10"


def _matrix(maps: list[dict[str, float]]) -> np.ndarray:
    """(len(maps), shared cases) array of per-volume values over the case ids all maps share."""
    cases = sorted(set.intersection(*(set(m) for m in maps))) if maps else []
    return np.array([[m[c] for c in cases] for m in maps], dtype=float).reshape(
        len(maps), len(cases))


def _seed_mean(run: TrialRun, key: str, metric: str, vols: PerVolume
               ) -> tuple[float | None, dict[str, float]]:
    """A run's mean under the policy and its per-volume values (from ``per_volume.json``;
    without it, the logged mean — the same number for runs of this code)."""
    values = vols.values(run.run_id, key, metric)
    if not values:
        return run.metric(key, metric), {}
    v = np.array(list(values.values()), dtype=float)
    v = v[np.isfinite(v)]
    return (float(v.mean()) if v.size else None), values


def _seed_row(seed: str, run: TrialRun, key: str, metric: str, vols: PerVolume,
              mean: float, values: dict[str, float]) -> dict[str, Any]:
    v = np.array(list(values.values()), dtype=float)
    free, false_pos = vols.tumour_free(run.run_id, key)
    undefined = int(np.isnan(v).sum()) - (0 if metric in SCORED_ON_EVERY_VOLUME else free)
    return {"seed": seed, "run_id": run.run_id, "mean": mean,
            "n_volumes": int(np.isfinite(v).sum()) if values else run.metric(key, "n_volumes"),
            "n_excluded": undefined if values else run.metric(key, "n_excluded"),
            "n_inf": int(np.isinf(v).sum()), "n_tumour_free": free if values else None,
            "n_false_positive": false_pos if values else None}


def cell_stats(runs: Iterable[TrialRun], key: str, metric: str,
               vols: PerVolume) -> dict[str, Any] | None:
    """One table cell: ``metric`` on evaluation set ``key`` over the cell's seeds.

    ``mean`` = mean over seeds of each seed's mean over its scored volumes; ``ci_low`` /
    ``ci_high`` = ``core.metrics.hierarchical_interval`` over seeds × volumes (volumes
    only with one seed); ``n_volumes`` = volumes per seed in it; counts summed over seeds.
    """
    per_seed, maps = [], []
    for seed, run in by_seed(runs).items():
        mean, values = _seed_mean(run, key, metric, vols)
        if mean is not None:
            per_seed.append(_seed_row(seed, run, key, metric, vols, mean, values))
            maps += [values] if values else []
    if not per_seed:
        return None
    iv = hierarchical_interval(_matrix(maps), N_BOOT, bounds=BOUNDS.get(metric, (0.0, 1.0)))
    one = per_seed[0]
    if iv is None and len(per_seed) == 1:  # no per-volume rows: the run's logged interval
        run = by_seed(runs)[one["seed"]]
        low, high = run.metric(key, f"{metric}_ci_low"), run.metric(key, f"{metric}_ci_high")
    else:
        low, high = (iv.low, iv.high) if iv else (None, None)
    return {"n_seeds": len(per_seed), "seeds": [p["seed"] for p in per_seed],
            "per_seed": per_seed, "mean": float(np.mean([p["mean"] for p in per_seed])),
            "ci_low": low, "ci_high": high, "interval_seeds": iv.n_seeds if iv else None,
            "n_volumes": iv.n_volumes if iv else one["n_volumes"],
            **{k: _sum(p[k] for p in per_seed)
               for k in ("n_excluded", "n_inf", "n_false_positive")},
            "n_tumour_free": one["n_tumour_free"]}


def _sum(values: Iterable[float | None]) -> int | None:
    vals = [v for v in values if v is not None]
    return int(sum(vals)) if vals else None


def paired_vs_scratch(transfer: Iterable[TrialRun], scratch: Iterable[TrialRun], key: str,
                      vols: PerVolume,
                      labels: tuple[str, str] = ("transfer better", "scratch better"),
                      ) -> dict[str, Any] | None:
    """Transfer − scratch dice per tumour volume (same seed, same case_id), its mean over
    seeds and volumes with the hierarchical interval, and a verdict (≥ 2 seeds only):
    ``labels`` name an interval above / below 0 (any two groups of runs can be compared)."""
    t_runs, s_runs = by_seed(transfer), by_seed(scratch)
    seeds = [s for s in t_runs if s in s_runs]
    if not seeds:
        return None
    pairs = [(vols.values(t_runs[s].run_id, key, "dice"),
              vols.values(s_runs[s].run_id, key, "dice")) for s in seeds]
    both = _matrix([m for pair in pairs if pair[0] and pair[1] for m in pair])
    diff = both[0::2] - both[1::2]
    iv = hierarchical_interval(diff, N_BOOT, bounds=(-1.0, 1.0))
    if iv is None:
        return {"seeds": seeds, "n_seeds": 0, "mean_diff": None, "ci_low": None,
                "ci_high": None, "p_value": None, "n_pairs": 0, "n_excluded": 0,
                "verdict": "no per-volume rows"}
    tumour = np.isfinite(both).any(axis=0)  # tumour volumes: dice defined on some side
    verdict = (ONE_SEED if iv.n_seeds < 2 else labels[0] if iv.low > 0
               else labels[1] if iv.high < 0 else "no clear difference")
    return {"seeds": seeds, "n_seeds": iv.n_seeds, "mean_diff": iv.mean, "ci_low": iv.low,
            "ci_high": iv.high, "p_value": iv.p_value if iv.n_seeds > 1 else None,
            "n_pairs": iv.n_volumes, "n_excluded": int(np.isnan(diff[:, tumour]).sum()),
            "verdict": verdict}


def gain_over_scratch(transfer: Iterable[TrialRun], scratch: Iterable[TrialRun], key: str,
                      vols: PerVolume) -> dict[str, Any] | None:
    """Mean dice transfer − mean dice scratch per common seed, averaged over seeds.

    Both means are over the volumes where both runs' dice is defined (under the
    empty-truth policy: the same tumour volumes), so the gain equals the paired mean
    difference; within one study (same target, same split) these means are the tables'.
    Without per-volume rows, the logged means.
    """
    s_runs = by_seed(scratch)
    diffs = {}
    for seed, run in by_seed(transfer).items():
        if seed not in s_runs:
            continue
        (a, a_vals), (b, b_vals) = (_seed_mean(r, key, "dice", vols) for r in (run, s_runs[seed]))
        if a_vals and b_vals:  # the volumes where both are scored
            shared = _matrix([a_vals, b_vals])
            shared = shared[:, np.isfinite(shared).all(axis=0)]
            a, b = (float(v.mean()) if v.size else None for v in shared)
        if a is not None and b is not None:
            diffs[seed] = a - b
    if not diffs:
        return None
    return {"gain": float(np.mean(list(diffs.values()))), "per_seed": diffs}


def holm(p_values: list[float | None], alpha: float = 0.05) -> list[bool | None]:
    """Holm's step-down over the non-None p-values: True where the hypothesis is rejected
    with family-wise error ≤ ``alpha`` (None stays None)."""
    out: list[bool | None] = [None if p is None else False for p in p_values]
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    for rank, (p, i) in enumerate(ranked):
        if p > alpha / (len(ranked) - rank):
            break
        out[i] = True
    return out

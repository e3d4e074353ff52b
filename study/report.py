"""The study report, built from MLflow alone: Tables I–III, the 4×4 cross-modality
matrix, source×target transfer heatmaps, and paired transfer-vs-scratch comparisons.

``write_report`` reads every run of one experiment (parent runs ``role=study``,
child runs ``role=trial``; schema in ``study/tracking.py`` and ``study/runner.py``)
and writes ``report.md``, ``report.json`` (every number in the tables, keyed so it
can be checked against MLflow) and PNG heatmaps (``study/report_plots.py``).

Statistics (helpers from ``core.metrics``, none re-implemented here):
- One seed: a cell is the run's logged ``test/<key>/<metric>`` mean and its
  ``_ci_low``/``_ci_high`` (95% bootstrap over test volumes), copied unchanged.
- Several seeds: the mean over seeds of the per-seed means, a 95% Student-t
  interval over those seed means, and a per-volume bootstrap CI of the
  seed-averaged per-volume values (``per_volume.json``).
- Transfer vs scratch: per target volume (paired by ``case_id``) the difference
  transfer − scratch, averaged over the seeds both have, mean with a bootstrap CI
  (``core.metrics.paired_difference``).
- Only FINISHED runs enter the numbers; per cell and seed the latest run counts.
  The paper's sections use variant SegAN-CAT for unimodal models and transfers,
  and ``hpo`` trials (a search, not a grid cell) are summarised apart.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import MODALITIES, REGIONS
from core.metrics import paired_difference, summarize
from study.report_plots import report_summary_lines, write_outputs

__all__ = ["build_report", "load_runs", "report_summary_lines", "write_report"]

# Per-run artifact downloads would each print a progress bar on the CLI.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

METRIC_NAMES = ("dice", "precision", "sensitivity")
VARIANT_LABELS = {"segan": "SegAN", "segan-dice": "SegAN + dice", "segan-cat": "SegAN-CAT"}
PAPER_TABLE1 = {  # variant -> year -> (dice, precision, sensitivity)
    "segan": {"2015": (0.705, 0.759, 0.694), "2019": (0.766, 0.745, 0.834)},
    "segan-dice": {"2015": (0.825, 0.901, 0.785), "2019": (0.814, 0.850, 0.810)},
    "segan-cat": {"2015": (0.859, 0.882, 0.852), "2019": (0.825, 0.842, 0.835)},
}
PAPER_TABLE2 = {"t1": (0.538, 0.542), "t1c": (0.578, 0.587), "t2": (0.721, 0.675),
                "flair": (0.810, 0.763)}  # dice (2015, 2019)
PAPER_TABLE3 = {("t2", "s_din"): (0.781, 0.741)}  # (target, freeze) -> dice (2015, 2019)
TABLE3_FREEZES = ("full", "s_din")
SEED_CI = "95% Student-t interval over the seeds' means"
VOLUME_CI = "95% percentile bootstrap over test volumes (2000 resamples)"
PAIRED_CI = "95% bootstrap over volumes of the per-volume difference (paired by case_id)"


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

    def metric(self, key: str, name: str) -> float | None:
        value = self.metrics.get(f"test/{key}/{name}")
        return None if value is None or not math.isfinite(value) else float(value)

    def test_keys(self) -> list[str]:
        """Evaluation keys with a logged dice (``flair``, ``flair-t1-t1c-t2`` …)."""
        found = (re.fullmatch(r"test/(.+)/dice", k) for k in self.metrics)
        return sorted({m.group(1) for m in found if m})


def _search(client: Any, experiment_id: str, role: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], f"tags.role = '{role}'", max_results=1000,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def load_runs(tracking_uri: str, experiment: str) -> tuple[list[Any], list[TrialRun]]:
    """(parent runs, latest child run per trial id) of ``experiment``; UserError if absent."""
    from mlflow.tracking import MlflowClient

    from core.errors import UserError

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment {experiment!r} not found at {tracking_uri}")
    parents = list(_search(client, exp.experiment_id, "study"))
    latest: dict[str, TrialRun] = {}
    for run in _search(client, exp.experiment_id, "trial"):
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
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return (float(v.mean()) - half, float(v.mean()) + half)


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
    """One table cell: ``test/<key>/<metric>`` over the cell's seeds (module docstring)."""
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


# -- sections -----------------------------------------------------------------
def _is_cat(run: TrialRun) -> bool:
    return run.tag("variant", "segan-cat") == "segan-cat"


@dataclass
class Sections:
    """Builds the report's sections for one region from the finished runs."""

    runs: list[TrialRun]
    region: str
    vols: PerVolume

    def select(self, kind: str, pred: Callable[[TrialRun], bool]) -> list[TrialRun]:
        return [r for r in self.runs if r.status == "FINISHED" and r.tag("kind") == kind
                and r.tag("family") != "hpo" and r.tag("region", "wt") == self.region
                and pred(r)]

    def table1(self) -> list[dict[str, Any]]:
        """One row per multimodal variant (and modality set), paper order."""
        groups = _group(self.select("train", lambda r: len(r.mods) > 1),
                        lambda r: (r.tag("variant"), r.tag("modalities")))
        order = list(VARIANT_LABELS)
        rows = []
        for (variant, mods), runs in sorted(groups.items(),
                                            key=lambda kv: (_index(order, kv[0][0]), kv[0][1])):
            key = "-".join(mods.split(","))
            four = key.count("-") == 3
            paper = PAPER_TABLE1.get(variant) if self.region == "wt" and four else None
            rows.append({"variant": variant, "label": VARIANT_LABELS.get(variant, variant),
                         "modalities": mods, "key": key, "paper": paper,
                         **{m: cell_stats(runs, key, m, self.vols) for m in METRIC_NAMES}})
        return rows

    def unimodal(self) -> dict[str, list[TrialRun]]:
        """modality -> SegAN-CAT unimodal train runs."""
        runs = self.select("train", lambda r: len(r.mods) == 1 and _is_cat(r))
        return _group(runs, lambda r: r.mods[0])

    def table2(self) -> list[dict[str, Any]]:
        groups = self.unimodal()
        order = ["t1", "t1c", "t2", "flair"]  # the paper's
        return [{"modality": m, "dice": cell_stats(groups[m], m, "dice", self.vols),
                 "paper": PAPER_TABLE2.get(m) if self.region == "wt" else None}
                for m in sorted(groups, key=lambda m: _index(order, m))]

    def cross_modality(self) -> dict[str, Any]:
        """Rows: trained on; cols: evaluated on. Evaluate runs, unimodal runs on the diagonal."""
        evals = _group(self.select("evaluate", lambda r: len(r.mods) == 1 and _is_cat(r)),
                       lambda r: r.mods[0])
        cells = []
        for src, runs in evals.items():
            keys = sorted({k for r in runs for k in r.test_keys()})
            cells += [{"trained_on": src, "evaluated_on": k, "from": "evaluate",
                       "dice": cell_stats(runs, k, "dice", self.vols)} for k in keys]
        have = {(c["trained_on"], c["evaluated_on"]) for c in cells if c["dice"]}
        if evals:
            cells += [{"trained_on": m, "evaluated_on": m, "from": "unimodal",
                       "dice": cell_stats(runs, m, "dice", self.vols)}
                      for m, runs in self.unimodal().items() if (m, m) not in have]
        cells = [c for c in cells if c["dice"]]
        return {"rows": _modalities({c["trained_on"] for c in cells}),
                "cols": _modalities({c["evaluated_on"] for c in cells}), "cells": cells}

    def transfers(self) -> dict[str, Any]:
        """Source × target × strategy cells, each against scratch on the same target."""
        runs = self.select("transfer", _is_cat)
        scratch = _group([r for r in runs if r.tag("freeze") == "scratch"],
                         lambda r: r.tag("target"))
        groups = _group([r for r in runs if r.tag("freeze") != "scratch"],
                        lambda r: (r.tag("source"), r.tag("target"), r.tag("freeze")))
        cells = []
        for (src, tgt, freeze), cell_runs in sorted(groups.items()):
            base = scratch.get(tgt, [])
            cells.append({"source": src, "target": tgt, "freeze": freeze,
                          "dice": cell_stats(cell_runs, tgt, "dice", self.vols),
                          "scratch": cell_stats(base, tgt, "dice", self.vols),
                          "gain": gain_over_scratch(cell_runs, base, tgt),
                          "paired": paired_vs_scratch(cell_runs, base, tgt, self.vols)})
        order = ["full", "s_din", "s_only", "decoder_only"]
        base_cells = {t: cell_stats(v, t, "dice", self.vols) for t, v in scratch.items()}
        return {"cells": cells,
                "freezes": sorted({c["freeze"] for c in cells}, key=lambda f: _index(order, f)),
                "sources": _modalities({c["source"] for c in cells}),
                "targets": _modalities({c["target"] for c in cells}),
                "scratch": {k: v for k, v in base_cells.items() if v}}

    def build(self) -> dict[str, Any]:
        transfers = self.transfers()
        flair_targets = {c["target"] for c in transfers["cells"] if c["source"] == "flair"}
        out = {"table1": self.table1(), "table2": self.table2(),
               "cross_modality": self.cross_modality(),
               "table3": [_table3_row(t, transfers) for t in ("t1", "t1c", "t2")
                          if t in flair_targets],
               "transfer": transfers}
        out["excluded"] = {name: _excluded(name, out[name]) for name in out}
        return out


def _table3_row(target: str, transfers: dict[str, Any]) -> dict[str, Any]:
    cells = {c["freeze"]: c["dice"] for c in transfers["cells"]
             if c["source"] == "flair" and c["target"] == target}
    return {"target": target, "scratch": transfers["scratch"].get(target),
            **{f: cells.get(f) for f in TABLE3_FREEZES},
            "paper": {f: PAPER_TABLE3.get((target, f)) for f in TABLE3_FREEZES}}


def _dice_cells(name: str, section: Any) -> list[dict[str, Any] | None]:
    """Every dice cell a section shows (for its excluded-volume count)."""
    if name in ("table1", "table2"):
        return [row["dice"] for row in section]
    if name == "cross_modality":
        return [c["dice"] for c in section["cells"]]
    if name == "table3":
        return [row[k] for row in section for k in (*TABLE3_FREEZES, "scratch")]
    return [c["dice"] for c in section["cells"]] + list(section["scratch"].values())


def _excluded(name: str, section: Any) -> dict[str, int]:
    """Volumes left out by the empty-mask rule (dice undefined), summed over a section's cells."""
    cells = [c for c in _dice_cells(name, section) if c]
    return {"n_excluded": sum(c["n_excluded"] or 0 for c in cells),
            "n_volumes": sum(c["n_volumes"] or 0 for c in cells), "n_cells": len(cells)}


def _group(runs: Iterable[TrialRun], key: Callable[[TrialRun], Any]) -> dict[Any, list[TrialRun]]:
    out: dict[Any, list[TrialRun]] = defaultdict(list)
    for r in runs:
        out[key(r)].append(r)
    return dict(out)


def _index(order: list[str], value: str) -> int:
    return order.index(value) if value in order else len(order)


def _modalities(found: set[str]) -> list[str]:
    return [m for m in MODALITIES if m in found] + sorted(found - set(MODALITIES))


# -- header and the public API -------------------------------------------------
def _values(*groups: Iterable[Any]) -> list[str]:
    return sorted({str(v) for g in groups for v in g if v not in (None, "")})


def _header(parents: list[Any], runs: list[TrialRun], context: dict[str, Any]) -> dict[str, Any]:
    """Where the numbers came from, and how many runs finished, failed or were skipped."""
    params = [p.data.params for p in parents]
    skipped = sum(r.status == "KILLED" and bool(r.tag("skipped_reason")) for r in runs)
    header: dict[str, Any] = {
        "grids": _values((p.get("grid") for p in params), (r.tag("grid") for r in runs)),
        "budgets": _values((p.get("budget") for p in params), (r.tag("budget") for r in runs)),
        "data": _values(p.get("data") for p in params),
        "store_ids": _values(r.tag("store_id") for r in runs),
        "hardware": _values(p.get("hardware") for p in params),
        "code_versions": _values(r.tag("code_version") for r in runs),
        "eval_splits": _values(r.tag("eval_split") for r in runs if r.status == "FINISHED"),
        "invocations": len(parents),
        "runs": {"total": len(runs), "finished": sum(r.status == "FINISHED" for r in runs),
                 "failed": sum(r.status == "FAILED" for r in runs), "skipped": skipped,
                 "killed": sum(r.status == "KILLED" for r in runs) - skipped,
                 "unfinished": sum(r.status not in ("FINISHED", "FAILED", "KILLED") for r in runs)},
    }
    for key, ctx_key in (("grids", "grid"), ("budgets", "budget"), ("data", "data"),
                         ("hardware", "hardware")):
        if not header[key] and context.get(ctx_key):  # context fills what MLflow lacks
            header[key] = [f"{context[ctx_key]} (from the report's caller)"]
    header["synthetic"] = (bool(context.get("synthetic"))
                           or any("synthetic" in d for d in header["data"]))
    header["notes"] = [str(context["note"])] if context.get("note") else []
    return header


def _problems(runs: list[TrialRun]) -> list[dict[str, str]]:
    """Runs that did not finish, with the reason MLflow recorded."""
    return [{"name": r.name, "run_id": r.run_id, "status": r.status,
             "reason": r.tag("skipped_reason") or r.tag("error") or "(no reason recorded)"}
            for r in runs if r.status != "FINISHED"]


def _hpo(runs: list[TrialRun]) -> dict[str, Any] | None:
    """HPO trials: how many, and the best by validation dice (they never enter the tables)."""
    hpo = [r for r in runs if r.tag("family") == "hpo" and r.status == "FINISHED"]
    if not hpo:
        return None
    scored = [r for r in hpo if math.isfinite(r.metrics.get("best/val_dice", math.nan))]
    best = max(scored, key=lambda r: r.metrics["best/val_dice"]) if scored else None
    return {"n_trials": len(hpo), "best_run_id": best.run_id if best else None,
            "best_name": best.name if best else None,
            "best_val_dice": best.metrics["best/val_dice"] if best else None}


def build_report(tracking_uri: str, experiment: str,
                 context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every number of the report as a JSON-ready dict (NaN → None), read from MLflow only."""
    parents, runs = load_runs(tracking_uri, experiment)
    vols = PerVolume(tracking_uri)
    found = {r.tag("region", "wt") for r in runs if r.status == "FINISHED"} or {"wt"}
    report = {"experiment": experiment, "tracking_uri": tracking_uri,
              "header": _header(parents, runs, context or {}),
              "statistics": {"volume_ci": VOLUME_CI, "seed_ci": SEED_CI, "paired_ci": PAIRED_CI},
              "regions": {g: Sections(runs, g, vols).build()
                          for g in sorted(found, key=lambda g: _index(list(REGIONS), g))},
              "hpo": _hpo(runs), "problems": _problems(runs)}
    report["header"]["runs_without_per_volume"] = sorted(vols.missing)
    return _clean(report)


def _clean(node: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists, numpy scalars → Python."""
    if isinstance(node, dict):
        return {str(k): _clean(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_clean(v) for v in node]
    if isinstance(node, (float, np.floating)):
        return float(node) if math.isfinite(node) else None
    return int(node) if isinstance(node, np.integer) else node


def write_report(tracking_uri: str, experiment: str, out_dir: Path,
                 context: dict[str, Any] | None = None) -> Path:
    """Write ``report.md``, ``report.json`` and the heatmap PNGs into ``out_dir``.

    ``context`` fills header fields MLflow lacks (``hardware``, ``data``, ``budget``,
    ``grid``), may flag ``synthetic`` data and add a ``note``. Returns the path of
    ``report.md``. Raises ``UserError`` if the experiment does not exist.
    """
    return write_outputs(build_report(tracking_uri, experiment, context), Path(out_dir))

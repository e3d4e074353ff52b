"""The study report, built from MLflow alone: Tables I–III, the 4×4 cross-modality
matrix, source×target transfer heatmaps, and paired transfer-vs-scratch comparisons.

``write_report`` reads every run of one experiment (parent runs ``role=study``,
child runs ``role=trial``; schema in ``study/tracking.py`` and ``study/runner.py``)
and writes ``report.md``, ``report.json`` (every number in the tables, keyed so it
can be checked against MLflow) and PNG heatmaps (``study/report_markdown.py``, ``study/report_figures.py``).

Statistics (helpers from ``core.metrics``, none re-implemented here):
- One seed: a cell is the run's logged ``eval/<split>/<key>/<metric>`` mean and its
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

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.version import code_version
from core.vocabulary import MODALITIES, REGIONS, STUDY_METRICS
from study.report_format import report_summary_lines
from study.report_markdown import write_outputs
from study.report_stats import (
    PerVolume,
    TrialRun,
    cell_stats,
    gain_over_scratch,
    load_runs,
    paired_vs_scratch,
)

__all__ = ["build_report", "load_runs", "report_summary_lines", "write_report"]

# Per-run artifact downloads would each print a progress bar on the CLI.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

VARIANT_LABELS = {"segan": "SegAN", "segan-dice": "SegAN + dice", "segan-cat": "SegAN-CAT"}
PAPER_TABLE1 = {  # variant -> year -> (dice, precision, sensitivity)
    "segan": {"2015": (0.705, 0.759, 0.694), "2019": (0.766, 0.745, 0.834)},
    "segan-dice": {"2015": (0.825, 0.901, 0.785), "2019": (0.814, 0.850, 0.810)},
    "segan-cat": {"2015": (0.859, 0.882, 0.852), "2019": (0.825, 0.842, 0.835)},
}
PAPER_TABLE2 = {"t1": (0.538, 0.542), "t1c": (0.578, 0.587), "t2": (0.721, 0.675),
                "flair": (0.810, 0.763)}  # dice (2015, 2019)
# (target, freeze) -> the paper's Table III dice (BraTS 2015, 2019)
PAPER_TABLE3 = {
    ("t1", "full"): (0.496, 0.502), ("t1c", "full"): (0.467, 0.468), ("t2", "full"): (0.692, 0.674),
    ("t1", "s_din"): (0.561, 0.528), ("t1c", "s_din"): (0.577, 0.598), ("t2", "s_din"): (0.781, 0.741),
}
TABLE3_FREEZES = ("full", "s_din", "s_only")
"""full = the paper's (S, D); s_din = (S, Din); s_only = the authors' code's second mode
("freeze all critic layers"), which no paper column reports."""
SEED_CI = "95% Student-t interval over the seeds' means, clipped to [0, 1]"
VOLUME_CI = "95% percentile bootstrap over test volumes (2000 resamples)"
PAIRED_CI = "95% bootstrap over volumes of the per-volume difference (paired by case_id)"


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
                         **{m: cell_stats(runs, key, m, self.vols) for m in STUDY_METRICS}})
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
        "eval_cases": _values(r.tag("eval_cases") for r in runs if r.status == "FINISHED"),
        "eval_patients": _values(r.tag("eval_patients") for r in runs if r.status == "FINISHED"),
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
    scored = [r for r in hpo if math.isfinite(r.metrics.get("val/best_dice", math.nan))]
    best = max(scored, key=lambda r: r.metrics["val/best_dice"]) if scored else None
    return {"n_trials": len(hpo), "best_run_id": best.run_id if best else None,
            "best_name": best.name if best else None,
            "best_val_dice": best.metrics["val/best_dice"] if best else None}


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
              "hpo": _hpo(runs), "problems": _problems(runs), "cells": _cells(runs),
              "produced_by": {"code_version": code_version(),
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    report["header"]["runs_without_per_volume"] = sorted(vols.missing)
    return _clean(report)


def _cells(runs: list[TrialRun]) -> list[dict[str, Any]]:
    """Every finished cell: where its run and checkpoint are, and its own dice."""
    out = []
    for r in runs:
        if r.status != "FINISHED":
            continue
        key = f"{'-'.join(r.mods)}"
        out.append({"name": r.name, "run_id": r.run_id, "trial_id": r.tag("trial_id"),
                    "kind": r.tag("kind"), "checkpoint": r.tag("best_checkpoint") or None,
                    "eval_split": r.eval_split, "dice": r.metric(key, "dice"),
                    "val_best_dice": r.metrics.get("val/best_dice")})
    return out


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

"""The study report, built from MLflow alone: Tables I–III, the 4×4 cross-modality
matrix, source×target transfer heatmaps, and paired transfer-vs-scratch comparisons.

``write_report`` reads every run of one experiment (parent runs ``role=study``,
child runs ``role=trial``; schema in ``study/tracking.py`` and ``study/runner.py``)
and writes ``report.md``, ``report.json`` (every number in the tables, keyed so it
can be checked against MLflow) and PNG figures (``report_markdown.py``, ``report_figures.py``,
``report_plots.py``; their series — per-volume dice, learning curves — ``report_series.py``).

Statistics (helpers from ``core.metrics``, none re-implemented here):
- Empty-truth policy (``core.metrics``): dice, precision, sensitivity and HD95 — cell
  means, gains, paired differences, heatmaps — are computed from ``per_volume.json`` over
  the volumes whose truth is non-empty, the same volumes for every model; tumour-free
  volumes are counted apart (false-positive volumes); specificity covers every volume.
- A cell: the mean over seeds of each seed's mean over volumes, with a 95% hierarchical
  bootstrap interval over seeds × volumes (``core.metrics.hierarchical_interval``; one
  seed: volumes only, training noise not included).
- Transfer vs scratch: per target volume (paired by ``case_id``, same seed) the dice
  difference transfer − scratch, with the same hierarchical interval; a verdict needs
  ≥ 2 seeds ("1 seed — no verdict"). Verdicts are per cell, unadjusted, so exploratory;
  a Holm column says which survive a family-wise correction over the table's cells.
- Only FINISHED runs enter the numbers; per cell and seed the latest run counts.
  The paper's sections use variant SegAN-CAT for unimodal models and transfers,
  ``hpo`` trials (a search, not a grid cell) are summarised apart, and ``ablation*``
  families have their own table.
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
from study.report_format import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    PAPER_TABLE3,
    TABLE3_FREEZES,
    VARIANT_LABELS,
    report_summary_lines,
)
from study.report_markdown import write_outputs
from study.report_series import figure_series
from study.report_stats import (
    STATISTICS,
    PerVolume,
    TrialRun,
    cell_stats,
    gain_over_scratch,
    holm,
    load_runs,
    paired_vs_scratch,
)

__all__ = ["build_report", "load_runs", "report_summary_lines", "write_report"]

# Per-run artifact downloads would each print a progress bar on the CLI.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

ABLATION_AXES = ("loss.l1_mode", "loss.dice_weight", "model.critic_input")
"""The config keys the ``ablations`` grid varies (read from each run's params)."""

# -- sections -----------------------------------------------------------------
def _is_cat(run: TrialRun) -> bool:
    return run.tag("variant", "segan-cat") == "segan-cat"


def _is_ablation(run: TrialRun) -> bool:
    return run.tag("family").startswith("ablation")


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

    def metrics(self, runs: list[TrialRun], key: str) -> dict[str, Any]:
        """Every study metric's cell for ``runs`` on evaluation set ``key``."""
        return {m: cell_stats(runs, key, m, self.vols) for m in STUDY_METRICS}

    def table1(self) -> list[dict[str, Any]]:
        """One row per multimodal variant (and modality set), paper order."""
        groups = _group(self.select("train", lambda r: len(r.mods) > 1 and not _is_ablation(r)),
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
                         **self.metrics(runs, key)})
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
                          "gain": gain_over_scratch(cell_runs, base, tgt, self.vols),
                          "paired": paired_vs_scratch(cell_runs, base, tgt, self.vols)})
        _holm([c["paired"] for c in cells])
        order = ["full", "s_din", "s_only", "decoder_only"]
        base_cells = {t: cell_stats(v, t, "dice", self.vols) for t, v in scratch.items()}
        return {"cells": cells,
                "freezes": sorted({c["freeze"] for c in cells}, key=lambda f: _index(order, f)),
                "sources": _modalities({c["source"] for c in cells}),
                "targets": _modalities({c["target"] for c in cells}),
                "scratch": {k: v for k, v in base_cells.items() if v}}

    def ablations(self) -> list[dict[str, Any]]:
        """One row per (L1 mode, dice weight, critic input, modalities) of ``ablation*``
        families, each against SegAN-CAT as the authors ran it (global, 1, concat)."""
        runs = [r for r in self.runs if r.status == "FINISHED" and _is_ablation(r)
                and r.tag("region", "wt") == self.region]
        groups = _group(runs, lambda r: (*(r.params.get(k, "?") for k in ABLATION_AXES),
                                         r.tag("modalities")))
        rows = []
        for (l1, weight, critic, mods), cell_runs in sorted(groups.items(), key=_ablation_order):
            key = "-".join(mods.split(","))
            ref = groups.get(("global", _reference_weight(groups), "concat", mods), [])
            paired = (paired_vs_scratch(cell_runs, ref, key, self.vols, ABLATION_VERDICTS)
                      if ref and ref is not cell_runs else None)
            rows.append({"l1_mode": l1, "dice_weight": weight, "critic_input": critic,
                         "modalities": mods, "key": key, "vs_reference": paired,
                         **self.metrics(cell_runs, key)})
        _holm([r["vs_reference"] for r in rows])
        return rows

    def build(self) -> dict[str, Any]:
        transfers = self.transfers()
        flair_targets = {c["target"] for c in transfers["cells"] if c["source"] == "flair"}
        table2 = self.table2()
        unimodal = {row["modality"]: row["dice"] for row in table2}
        out = {"table1": self.table1(), "table2": table2,
               "cross_modality": self.cross_modality(),
               "table3": [_table3_row(t, transfers, unimodal) for t in ("t1", "t1c", "t2")
                          if t in flair_targets],
               "transfer": transfers, "ablations": self.ablations()}
        out["excluded"] = {name: _excluded(name, out[name]) for name in out}
        return out


ABLATION_VERDICTS = ("better than SegAN-CAT", "worse than SegAN-CAT")


def _reference_weight(groups: dict[Any, Any]) -> str:
    """How the runs' params spell dice weight 1 (``1.0``)."""
    return next((k[1] for k in groups if _float(k[1]) == 1.0), "1.0")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _ablation_order(item: tuple[tuple[str, ...], Any]) -> tuple[Any, ...]:
    l1, weight, critic, mods = item[0]
    return (_index(["global", "per_layer"], l1), -_float(weight), _index(["concat"], critic), mods)


def _holm(paired: list[dict[str, Any] | None]) -> None:
    """Adds ``holm`` (True/False/None) to each paired comparison: Holm over the list."""
    present = [p for p in paired if p]
    for p, rejected in zip(present, holm([p.get("p_value") for p in present]), strict=True):
        p["holm"] = rejected


def _table3_row(target: str, transfers: dict[str, Any],
                unimodal: dict[str, Any]) -> dict[str, Any]:
    """One target of Table III: each strategy, the same-budget scratch control, the
    target's full-budget unimodal model (the paper's comparison) and the paper's values."""
    cells = {c["freeze"]: c["dice"] for c in transfers["cells"]
             if c["source"] == "flair" and c["target"] == target}
    return {"target": target, "scratch": transfers["scratch"].get(target),
            "unimodal": unimodal.get(target),
            **{f: cells.get(f) for f in TABLE3_FREEZES},
            "paper": {f: PAPER_TABLE3.get((target, f)) for f in TABLE3_FREEZES}}


def _dice_cells(name: str, section: Any) -> list[dict[str, Any] | None]:
    """Every dice cell a section shows (for its volume counts)."""
    if name in ("table1", "table2", "ablations"):
        return [row["dice"] for row in section]
    if name == "cross_modality":
        return [c["dice"] for c in section["cells"]]
    if name == "table3":
        return [row[k] for row in section for k in (*TABLE3_FREEZES, "scratch", "unimodal")]
    return [c["dice"] for c in section["cells"]] + list(section["scratch"].values())


def _excluded(name: str, section: Any) -> dict[str, int]:
    """Volume evaluations of a section's dice cells (summed over cells and seeds): on
    tumour volumes, tumour-free (left out by the policy), false-positive among those, and
    undefined dice on tumour volumes (none unless a row is damaged)."""
    cells = [c for c in _dice_cells(name, section) if c]

    def total(field: str, per_seed: bool) -> int:
        return sum((c[field] or 0) * (c["n_seeds"] if per_seed else 1) for c in cells)

    return {"n_cells": len(cells), "n_tumour": total("n_volumes", True),
            "n_tumour_free": total("n_tumour_free", True),
            "n_false_positive": total("n_false_positive", False),
            "n_excluded": total("n_excluded", False)}


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
    order = sorted(found, key=lambda g: _index(list(REGIONS), g))
    report: dict[str, Any] = {
        "experiment": experiment, "tracking_uri": tracking_uri,
        "header": _header(parents, runs, context or {}), "statistics": STATISTICS,
        "regions": {g: Sections(runs, g, vols).build() for g in order},
        "hpo": _hpo(runs), "problems": _problems(runs), "cells": _cells(runs),
        "produced_by": {"code_version": code_version(),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    report["region_table"] = _region_table(report["regions"])
    report.update(figure_series(tracking_uri, runs, vols))  # per-volume dice, learning curves
    report["header"]["runs_without_per_volume"] = sorted(vols.missing)
    return _clean(report)


def _region_table(regions: dict[str, Any]) -> list[dict[str, Any]]:
    """Multimodal SegAN-CAT per BraTS region (from each region's Table I), when the study
    has a region other than WT; the paper reports WT only."""
    rows = [{"region": g, **row, "paper": row["paper"] if g == "wt" else None}
            for g, sec in regions.items() for row in sec["table1"]
            if row["variant"] == "segan-cat" and row["modalities"].count(",") == len(MODALITIES) - 1]
    return rows if any(r["region"] != "wt" for r in rows) else []


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

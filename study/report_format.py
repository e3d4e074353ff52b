"""Text of the study report shared by the markdown and the console: how numbers, cells,
intervals and labels print, the comparability caveat, and the CLI's summary lines.

Reads only the JSON-ready dict of ``study.report.build_report`` (no MLflow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.protocol import EVAL_WINDOW
from core.vocabulary import MODALITY_LABELS

FREEZE_LABELS = {"full": "(S, D) = full", "s_din": "(S, Din) = s_din",
                 "s_only": "S only (critic frozen)", "decoder_only": "decoder only",
                 "scratch": "from scratch"}
NONE = "—"
# -- the paper's numbers ----------------------------------------------------------
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


def modality_label(key: str) -> str:
    return "+".join(MODALITY_LABELS.get(m, m) for m in key.replace(",", "-").split("-"))


def num(x: float | None, signed: bool = False) -> str:
    return NONE if x is None else f"{x:+.3f}" if signed else f"{x:.3f}"


def interval(lo: float | None, hi: float | None, signed: bool = False) -> str:
    return "" if lo is None or hi is None else f" [{num(lo, signed)}, {num(hi, signed)}]"


def fmt_cell(cell: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean [95% CI]`` (hierarchical over seeds × volumes; volumes only with one seed),
    plus ``(k inf)`` when HD95 was infinite on k tumour volumes (no predicted voxel)."""
    if not cell:
        return NONE

    def fmt(x: float | None) -> str:
        return NONE if x is None else f"{x:.{digits}f}"

    text = fmt(cell["mean"])
    if cell["ci_low"] is not None and cell["ci_high"] is not None:
        text += f" [{fmt(cell['ci_low'])}, {fmt(cell['ci_high'])}]"
    return text + (f" ({cell['n_inf']} inf)" if cell.get("n_inf") else "")


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def seeds_text(*cells: dict[str, Any] | None) -> str:
    """n of a row's cells: ``3 seeds × 45 vol.`` (tumour volumes per seed), ranges if they differ."""
    found = [c for c in cells if c]
    if not found:
        return NONE
    seeds = _span([c["n_seeds"] for c in found])
    vols = [c["n_volumes"] for c in found if c.get("n_volumes") is not None]
    unit = "seed" if seeds == "1" else "seeds"
    return f"{seeds} {unit}" + (f" × {_span(vols)} vol." if vols else "")


def excluded_text(cell: dict[str, Any] | None) -> str:
    """Tumour-free volumes per seed and, in brackets, false-positive volume evaluations."""
    if not cell or cell.get("n_tumour_free") is None:
        return NONE
    return f"{cell['n_tumour_free']} ({cell['n_false_positive'] or 0} FP)"


def marked(paired: dict[str, Any] | None) -> bool:
    """Whether a paired comparison has a verdict (≥ 2 seeds) whose interval excludes 0."""
    return bool(paired and paired.get("n_seeds", 0) > 1 and paired["ci_low"] is not None
                and (paired["ci_low"] > 0 or paired["ci_high"] < 0))


EVAL_WINDOW_TEXT = f"centre {EVAL_WINDOW}² of each slice, or the whole slice when smaller"


def comparability(header: dict[str, Any]) -> str:
    """Why these numbers are not comparable to the paper's columns ('' when they are)."""
    if header.get("synthetic"):
        return ("synthetic data: a smoke test of the pipeline on the embedded dataset, not "
                "comparable to the paper's BraTS columns")
    budgets = [b.split(" ")[0] for b in header.get("budgets", [])]
    if any(b != "paper" for b in budgets):
        return (f"budget {'/'.join(budgets)}, not the paper's: a shorter schedule and a smaller "
                "network; the paper columns are context, not a like-for-like comparison")
    return ""


def report_summary_lines(report_path: Path) -> list[str]:
    """A few lines for the CLI: run counts, Table I and II dice, transfer vs scratch.

    ``report_path`` is the report folder, ``report.md`` or ``report.json``.
    """
    path = Path(report_path)
    report = json.loads((path / "report.json" if path.is_dir() else path.with_suffix(".json"))
                        .read_text())
    runs = report["header"]["runs"]
    split = "/".join(report["header"]["eval_splits"]) or "?"
    lines = [f"runs: {runs['finished']} finished, {runs['failed']} failed, {runs['skipped']} "
             f"skipped; numbers from the {split} split"]
    caveat = comparability(report["header"])
    if caveat:
        lines.append(f"note: {caveat}")
    for region, sec in report["regions"].items():
        tag = "" if region == "wt" else f" ({region})"
        if sec["table1"]:
            lines.append(f"Table I dice{tag}: " + " | ".join(
                f"{r['label']} {fmt_cell(r['dice'])}" for r in sec["table1"]))
        if sec["table2"]:
            lines.append(f"Table II dice{tag}: " + " | ".join(
                f"{modality_label(r['modality'])} {fmt_cell(r['dice'])}" for r in sec["table2"]))
        paired = [c for c in sec["transfer"]["cells"]
                  if c["paired"] and c["paired"]["mean_diff"] is not None]
        if paired:
            lines.append(f"transfer vs scratch{tag}: {_verdicts_line(paired)}")
    return lines


def _verdicts_line(paired: list[dict[str, Any]]) -> str:
    """How many transfer cells beat scratch, and the largest paired difference."""
    best = max(paired, key=lambda c: c["paired"]["mean_diff"])
    p = best["paired"]
    pair = f"{modality_label(best['source'])}→{modality_label(best['target'])}"
    largest = (f"largest difference {pair} {best['freeze']} {num(p['mean_diff'], True)}"
               f"{interval(p['ci_low'], p['ci_high'], True)}")
    judged = [c["paired"] for c in paired if c["paired"].get("n_seeds", 0) > 1]
    if not judged:
        return f"1 seed — no verdicts; {largest}"
    better = sum(q["verdict"] == "transfer better" for q in judged)
    holm = sum(bool(q.get("holm")) and q["verdict"] == "transfer better" for q in judged)
    return (f"{better}/{len(judged)} cells better (95% CI > 0, exploratory; {holm} after Holm); "
            f"{largest}")

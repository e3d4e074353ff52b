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


def modality_label(key: str) -> str:
    return "+".join(MODALITY_LABELS.get(m, m) for m in key.replace(",", "-").split("-"))


def num(x: float | None, signed: bool = False) -> str:
    return NONE if x is None else f"{x:+.3f}" if signed else f"{x:.3f}"


def interval(lo: float | None, hi: float | None, signed: bool = False) -> str:
    return "" if lo is None or hi is None else f" [{num(lo, signed)}, {num(hi, signed)}]"


def fmt_cell(cell: dict[str, Any] | None) -> str:
    """``mean [volume CI]``, plus ``; seeds [t-interval]`` when several seeds exist."""
    if not cell:
        return NONE
    text = num(cell["mean"]) + interval(cell["ci_low"], cell["ci_high"])
    if cell["n_seeds"] > 1 and cell["seed_ci_low"] is not None:
        text += f"; seeds{interval(cell['seed_ci_low'], cell['seed_ci_high'])}"
    return text


def seeds_text(*cells: dict[str, Any] | None) -> str:
    n = max((c["n_seeds"] for c in cells if c), default=0)
    return NONE if n == 0 else "1 seed" if n == 1 else f"{n} seeds"


def excluded_text(cell: dict[str, Any] | None) -> str:
    if not cell or cell["n_excluded"] is None:
        return NONE
    return f"{cell['n_excluded']}/{cell['n_excluded'] + (cell['n_volumes'] or 0)}"


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
            best = max(paired, key=lambda c: c["paired"]["mean_diff"])
            p = best["paired"]
            better = sum(c["paired"]["verdict"] == "transfer better" for c in paired)
            pair = f"{modality_label(best['source'])}→{modality_label(best['target'])}"
            lines.append(f"transfer vs scratch{tag}: {better}/{len(paired)} cells better (95% CI "
                         f"> 0); largest gain {pair} {best['freeze']} {num(p['mean_diff'], True)}"
                         f"{interval(p['ci_low'], p['ci_high'], True)}")
    return lines

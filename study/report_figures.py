"""Figures of the study report: cross-modality and transfer heatmaps (PNG).

matplotlib's object API with the Agg canvas: no pyplot global state, no display needed.
Every file is written to a temporary name and renamed. Reads only the report dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_path
from study.report_format import FREEZE_LABELS, NONE, marked, modality_label, seeds_text

FIGURE_PATTERNS = ("fig2_cross_modality*.png", "transfer_dice_*.png", "transfer_gain_*.png")


def gain_span(cells: list[dict[str, Any]]) -> float:
    """Half-range of the colour scale shared by every gain heatmap of a transfer family:
    the largest |gain| over all its strategies (at least 0.05)."""
    gains = [abs(c["gain"]["gain"]) for c in cells if c["gain"] and c["gain"]["gain"] is not None]
    return max([0.05, *gains])


def heatmap(path: Path, matrix: np.ndarray, rows: list[str], cols: list[str], title: str,
            xlabel: str, ylabel: str, span: float | None = None,
            marks: np.ndarray | None = None) -> Path:
    """Annotated heatmap of ``matrix`` (rows × cols); NaN cells grey with a dash. Without
    ``span``: values on [0, 1]; with it: a diverging scale on [−span, span]. ``marks``
    (bool, same shape) appends ``*`` to a cell's text."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.3 * len(cols) + 2.2, 1.0 * len(rows) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    diverging = span is not None
    cmap = colormaps["RdBu" if diverging else "viridis"].with_extremes(bad="#dddddd")
    span = span if span is not None else 1.0
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap,
                      vmin=-span if diverging else 0.0, vmax=span)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(cols)), labels=[modality_label(c) for c in cols])
    ax.set_yticks(range(len(rows)), labels=[modality_label(r) for r in rows])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    for (i, j), v in np.ndenumerate(matrix):
        text = NONE if not np.isfinite(v) else f"{v:+.3f}" if diverging else f"{v:.3f}"
        text += "*" if marks is not None and marks[i, j] else ""
        dark = np.isfinite(v) and (abs(v) > 0.6 * span if diverging else v < 0.5)
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="white" if dark else "black")
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def _matrix(cells: list[dict[str, Any]], rows: list[str], cols: list[str], r: str, c: str,
            value: Any) -> np.ndarray:
    m = np.full((len(rows), len(cols)), np.nan)
    for cell in cells:
        v = value(cell)
        if v is not None and cell[r] in rows and cell[c] in cols:
            m[rows.index(cell[r]), cols.index(cell[c])] = v
    return m


def draw_figures(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write every heatmap; returns ``"<region>/<figure>" -> file name`` (relative to out_dir)."""
    out: dict[str, str] = {}
    for region, sec in report["regions"].items():
        sfx = "" if region == "wt" else f"_{region}"
        region_title = "" if region == "wt" else f" ({region.upper()})"
        cross = sec["cross_modality"]
        if cross["cells"]:
            name = f"fig2_cross_modality{sfx}.png"
            m = _matrix(cross["cells"], cross["rows"], cross["cols"], "trained_on", "evaluated_on",
                        lambda c: c["dice"]["mean"])
            heatmap(out_dir / name, m, cross["rows"], cross["cols"], f"Test dice{region_title}",
                    "evaluated on", "trained on")
            out[f"{region}/cross_modality"] = name
        tr = sec["transfer"]
        span = gain_span(tr["cells"])  # one colour scale for every gain heatmap of the family
        for freeze in tr["freezes"]:
            cells = [c for c in tr["cells"] if c["freeze"] == freeze]
            label = FREEZE_LABELS.get(freeze, freeze)
            shape = (tr["sources"], tr["targets"], "source", "target")
            dice = _matrix(cells, *shape, lambda c: c["dice"]["mean"] if c["dice"] else None)
            gain = _matrix(cells, *shape, lambda c: c["gain"]["gain"] if c["gain"] else None)
            marks = _matrix(cells, *shape, lambda c: float(marked(c["paired"]))) == 1.0
            for what, matrix, title, extra in (
                    ("dice", dice, "Transfer dice", {}),
                    ("gain", gain, "Gain over scratch (* = paired CI excludes 0)",
                     {"span": span, "marks": marks})):
                name = f"transfer_{what}_{freeze}{sfx}.png"
                n = seeds_text(*(c["dice"] for c in cells))
                heatmap(out_dir / name, matrix, tr["sources"], tr["targets"],
                        f"{title}, {label}{region_title}\nn = {n} per cell", "target", "source",
                        **extra)
                out[f"{region}/transfer_{what}/{freeze}"] = name
    return out



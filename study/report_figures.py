"""Figures of the study report: cross-modality and transfer heatmaps, and every gain
heatmap of a transfer family side by side on its shared scale (PNG); the per-volume and
learning-curve plots are ``study/report_plots.py``.

matplotlib's object API with the Agg canvas: no pyplot global state, no display needed.
Every file is written to a temporary name and renamed. Reads only the report dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.atomic import atomic_path
from study.report_format import FREEZE_LABELS, NONE, marked, modality_label, seeds_text

FIGURE_PATTERNS = ("fig2_cross_modality*.png", "transfer_dice_*.png", "transfer_gain_*.png",
                   "transfer_gains*.png")


def gain_span(cells: list[dict[str, Any]]) -> float:
    """Half-range of the colour scale shared by every gain heatmap of a transfer family:
    the largest |gain| over all its strategies (at least 0.05)."""
    gains = [abs(c["gain"]["gain"]) for c in cells if c["gain"] and c["gain"]["gain"] is not None]
    return max([0.05, *gains])


def canvas(figsize: tuple[float, float], layout: Literal["constrained"] | None = None) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path) -> Path:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def _draw(ax: Any, matrix: np.ndarray, rows: list[str], cols: list[str],
          span: float | None, marks: np.ndarray | None) -> Any:
    """The annotated heatmap on ``ax``; returns the image (for a colour bar)."""
    from matplotlib import colormaps

    diverging = span is not None
    cmap = colormaps["RdBu" if diverging else "viridis"].with_extremes(bad="#dddddd")
    span = span if span is not None else 1.0
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap,
                      vmin=-span if diverging else 0.0, vmax=span)
    ax.set_xticks(range(len(cols)), labels=[modality_label(c) for c in cols])
    ax.set_yticks(range(len(rows)), labels=[modality_label(r) for r in rows])
    for (i, j), v in np.ndenumerate(matrix):
        text = NONE if not np.isfinite(v) else f"{v:+.3f}" if diverging else f"{v:.3f}"
        text += "*" if marks is not None and marks[i, j] else ""
        dark = np.isfinite(v) and (abs(v) > 0.6 * span if diverging else v < 0.5)
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="white" if dark else "black")
    return image


def heatmap(path: Path, matrix: np.ndarray, rows: list[str], cols: list[str], title: str,
            xlabel: str, ylabel: str, span: float | None = None,
            marks: np.ndarray | None = None) -> Path:
    """Annotated heatmap of ``matrix`` (rows × cols); NaN cells grey with a dash. Without
    ``span``: values on [0, 1]; with it: a diverging scale on [−span, span]. ``marks``
    (bool, same shape) appends ``*`` to a cell's text."""
    fig = canvas((1.3 * len(cols) + 2.2, 1.0 * len(rows) + 1.6))
    ax = fig.add_subplot()
    fig.colorbar(_draw(ax, matrix, rows, cols, span, marks), ax=ax, fraction=0.046, pad=0.04)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.tight_layout()
    return save(fig, path)


def gain_panels(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray]], rows: list[str],
                cols: list[str], span: float, title: str) -> Path:
    """Every gain heatmap of a transfer family side by side, ``(label, gain, marks)`` each,
    on the one diverging scale ±``span`` with one colour bar."""
    fig = canvas((1.3 * len(cols) * len(panels) + 1.2 * len(panels) + 1.4,
                  1.0 * len(rows) + 2.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for i, (ax, (label, gain, marks)) in enumerate(zip(axes, panels, strict=True)):
        image = _draw(ax, gain, rows, cols, span, marks)
        ax.set(title=label, xlabel="target", ylabel="source" if i == 0 else "")
    fig.colorbar(image, ax=list(axes), shrink=0.8, pad=0.02,
                 label=f"gain over scratch (shared scale ±{span:.3f})")
    fig.suptitle(title)
    return save(fig, path)


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
        panels: list[tuple[str, np.ndarray, np.ndarray]] = []
        for freeze in tr["freezes"]:
            cells = [c for c in tr["cells"] if c["freeze"] == freeze]
            label = FREEZE_LABELS.get(freeze, freeze)
            shape = (tr["sources"], tr["targets"], "source", "target")
            dice = _matrix(cells, *shape, lambda c: c["dice"]["mean"] if c["dice"] else None)
            gain = _matrix(cells, *shape, lambda c: c["gain"]["gain"] if c["gain"] else None)
            marks = _matrix(cells, *shape, lambda c: float(marked(c["paired"]))) == 1.0
            panels.append((label, gain, marks))
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
        if panels:
            name = f"transfer_gains{sfx}.png"
            n = seeds_text(*(c["dice"] for c in tr["cells"]))
            gain_panels(out_dir / name, panels, tr["sources"], tr["targets"], span,
                        f"Gain over scratch, every strategy{region_title} "
                        f"(* = paired CI excludes 0; n = {n} per cell)")
            out[f"{region}/transfer_gains"] = name
    return out



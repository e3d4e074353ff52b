"""Per-family figures of the study report: per-volume dice distributions (box + strip plot)
and learning curves (validation dice and training losses per epoch), with their captions.

Reads only the report dict (``distributions`` and ``curves``, built by
``study/report_series.py``); matplotlib's object API on the Agg canvas, PNG written
atomically (``study.report_figures``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from study.report_figures import canvas, save
from study.report_format import seeds_text

PLOT_PATTERNS = ("volumes_*.png", "curves_*.png")
CURVE_TITLES = {"val/dice": "validation dice", "train/loss_s": "segmentor loss (train)",
                "train/loss_d": "critic loss (train)"}


def _file_part(family: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", family)


def _split(report: dict[str, Any]) -> str:
    return "/".join(report["header"].get("eval_splits") or []) or "evaluation"


def volume_plot(path: Path, family: str, entries: list[dict[str, Any]], split: str) -> Path:
    """One horizontal box per cell over its volumes pooled over seeds, the volumes drawn on
    top as points coloured by seed; cells on the y axis, ``n`` in each label."""
    from matplotlib import colormaps

    fig = canvas((7.5, 0.38 * len(entries) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    pooled = [np.concatenate([np.asarray(v, dtype=float) for v in e["dice"]]) for e in entries]
    positions = np.arange(len(entries))[::-1]  # the first cell on top
    ax.boxplot(pooled, positions=positions, orientation="horizontal", widths=0.6,
               showfliers=False, medianprops={"color": "black"})
    seeds = sorted({s for e in entries for s in e["seeds"]}, key=lambda s: (len(s), s))
    colours = colormaps["tab10"]
    rng = np.random.default_rng(0)  # the same jitter every time the report is written
    for pos, e in zip(positions, entries, strict=True):
        for seed, values in zip(e["seeds"], e["dice"], strict=True):
            jitter = rng.uniform(-0.18, 0.18, len(values))
            ax.scatter(values, pos + jitter, s=9, alpha=0.7, color=colours(seeds.index(seed) % 10),
                       label=f"seed {seed}", zorder=3)
    ax.set_yticks(positions, labels=[f"{e['cell']}  (n = {e['n_seeds']}×{e['n_volumes']})"
                                     for e in entries], fontsize=8)
    ax.set(xlim=(-0.02, 1.02), xlabel=f"dice per tumour volume ({split} split)",
           title=f"Per-volume dice — {family}")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if len(unique) > 1:
        fig.legend(unique.values(), unique.keys(), fontsize=7, loc="outside right upper")
    return save(fig, path)


def _mean_curve(series: list[dict[str, list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds on the epochs every seed has (NaN-aware)."""
    epochs = sorted(set.intersection(*(set(s["epoch"]) for s in series)))
    values = np.array([[dict(zip(s["epoch"], s["value"], strict=True))[e] for e in epochs]
                       for s in series], dtype=float)
    with np.errstate(all="ignore"):
        return np.array(epochs), np.nanmean(values, axis=0) if values.size else values


def curve_plot(path: Path, family: str, entries: list[dict[str, Any]]) -> Path:
    """One panel per metric of ``CURVE_TITLES`` found; per cell a thick line (mean over
    seeds) and thin lines (each seed) in one colour."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in CURVE_TITLES if any(k in s for e in entries for s in e["seeds"].values())]
    fig = canvas((4.2 * len(keys) + 2.8, 3.8), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colours = colormaps["tab20"]
    for i, e in enumerate(entries):
        colour, style = colours(i % 20), ("-", "--", ":")[(i // 20) % 3]
        for ax, key in zip(axes, keys, strict=True):
            series = [s[key] for s in e["seeds"].values() if key in s and s[key]["epoch"]]
            series = [{"epoch": s["epoch"], "value": [np.nan if v is None else v
                                                      for v in s["value"]]} for s in series]
            if not series:
                continue
            for s in series if len(series) > 1 else []:
                ax.plot(s["epoch"], s["value"], color=colour, lw=0.7, alpha=0.45)
            x, y = _mean_curve(series)
            ax.plot(x, y, color=colour, ls=style, lw=1.8, marker="." if len(x) < 3 else None,
                    label=f"{e['cell']} ({len(series)} seed{'s' * (len(series) > 1)})")
    for ax, key in zip(axes, keys, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=CURVE_TITLES[key], xlabel="epoch")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7,
               ncols=1 + len(labels) // 25)
    fig.suptitle(f"Learning curves — {family}")
    return save(fig, path)


def draw_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write both figures of every family; returns ``volumes/<family>`` and
    ``curves/<family>`` -> file name (relative to out_dir)."""
    out: dict[str, str] = {}
    for family, entries in (report.get("distributions") or {}).items():
        name = f"volumes_{_file_part(family)}.png"
        volume_plot(out_dir / name, family, entries, _split(report))
        out[f"volumes/{family}"] = name
    for family, entries in (report.get("curves") or {}).items():
        name = f"curves_{_file_part(family)}.png"
        curve_plot(out_dir / name, family, entries)
        out[f"curves/{family}"] = name
    return out


def plots_md(report: dict[str, Any]) -> str:
    """The report's figure section: each family's two figures, linked, with captions."""
    figures, parts = report.get("figures", {}), []
    split = _split(report)
    for family, entries in (report.get("distributions") or {}).items():
        n = seeds_text(*entries)
        parts.append(f"### Per-volume dice — `{family}`\n\n![per-volume dice, {family}]"
                     f"({figures.get(f'volumes/{family}')})\n\nDice of every tumour volume of "
                     f"the {split} split, one box per cell (median, quartiles, whiskers at "
                     f"1.5 IQR) over its volumes pooled over seeds; points are the volumes, "
                     f"coloured by seed. n = seeds × tumour volumes per seed: {n} per cell "
                     "(each cell's own n in its label); tumour-free volumes are left out "
                     "(empty-truth policy).")
    for family, entries in (report.get("curves") or {}).items():
        seeds = sorted({len(e["seeds"]) for e in entries})
        parts.append(f"### Learning curves — `{family}`\n\n![learning curves, {family}]"
                     f"({figures.get(f'curves/{family}')})\n\nPer epoch, from each run's "
                     f"MLflow history: {', '.join(CURVE_TITLES.values())}. One colour per "
                     f"cell: thick = mean over its seeds (on the epochs all seeds have), thin "
                     f"= each seed; {'/'.join(map(str, seeds))} seed(s) per cell. Validation "
                     "dice is the mean over the validation volumes (the split that chose "
                     "the checkpoint), not the report's evaluation split.")
    if not parts:
        return ""
    return "## Figures — per-volume dice and learning curves\n\n" + "\n\n".join(parts)

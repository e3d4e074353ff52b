"""Output of the study report: PNG heatmaps, ``report.md``, ``report.json``, and
the few lines the CLI prints.

Everything here reads only the JSON-ready dict built by ``study.report.build_report``
(no MLflow), so what the markdown shows is exactly what ``report.json`` holds.
Figures use matplotlib's object API with the Agg canvas: no pyplot global state,
no display needed. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from core.protocol import EVAL_WINDOW
from core.vocabulary import MODALITY_LABELS

FREEZE_LABELS = {"full": "(S, D) = full", "s_din": "(S, Din) = s_din",
                 "s_only": "S only (critic frozen)", "decoder_only": "decoder only",
                 "scratch": "from scratch"}
NONE = "—"
FIGURE_PATTERNS = ("fig2_cross_modality*.png", "transfer_dice_*.png", "transfer_gain_*.png")


# -- numbers --------------------------------------------------------------------
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


def _paper(values: Any, i: int | None = None) -> str:
    if values is None:
        return NONE
    return " / ".join(f"{v:.3f}" for v in values) if i is None else f"{values[i]:.3f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# -- heatmaps -------------------------------------------------------------------
def heatmap(path: Path, matrix: np.ndarray, rows: list[str], cols: list[str], title: str,
            xlabel: str, ylabel: str, diverging: bool = False) -> Path:
    """Annotated heatmap; NaN cells grey with a dash. Dice on [0, 1], gains centred on 0."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.3 * len(cols) + 2.2, 1.0 * len(rows) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["RdBu" if diverging else "viridis"].with_extremes(bad="#dddddd")
    finite = matrix[np.isfinite(matrix)]
    span = max(0.05, float(np.abs(finite).max())) if diverging and finite.size else 1.0
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap,
                      vmin=-span if diverging else 0.0, vmax=span)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(cols)), labels=[modality_label(c) for c in cols])
    ax.set_yticks(range(len(rows)), labels=[modality_label(r) for r in rows])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    for (i, j), v in np.ndenumerate(matrix):
        text = NONE if not np.isfinite(v) else f"{v:+.3f}" if diverging else f"{v:.3f}"
        dark = np.isfinite(v) and (abs(v) > 0.6 * span if diverging else v < 0.5)
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="white" if dark else "black")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
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
        for freeze in tr["freezes"]:
            cells = [c for c in tr["cells"] if c["freeze"] == freeze]
            label = FREEZE_LABELS.get(freeze, freeze)
            for what, value, diverging in (
                    ("dice", lambda c: c["dice"]["mean"] if c["dice"] else None, False),
                    ("gain", lambda c: c["gain"]["gain"] if c["gain"] else None, True)):
                name = f"transfer_{what}_{freeze}{sfx}.png"
                title = ("Transfer dice" if what == "dice" else "Gain over scratch") + f", {label}"
                matrix = _matrix(cells, tr["sources"], tr["targets"], "source", "target", value)
                heatmap(out_dir / name, matrix, tr["sources"], tr["targets"], title + region_title,
                        "target", "source", diverging)
                out[f"{region}/transfer_{what}/{freeze}"] = name
    return out


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


# -- markdown -------------------------------------------------------------------
def _header_md(report: dict[str, Any]) -> str:
    h, runs, s = report["header"], report["header"]["runs"], report["statistics"]

    def listed(key: str) -> str:
        return ", ".join(f"`{v}`" for v in h[key]) or "unknown"

    splits = "/".join(h["eval_splits"]) or "unknown"
    lines = [
        f"# SegAN-CAT study report — `{report['experiment']}`", "",
        f"- Grid(s): {listed('grids')}; budget(s): {listed('budgets')}",
        f"- Data store: {listed('data')} (store id {listed('store_ids')})",
        f"- Hardware: {listed('hardware')}",
        f"- Code version(s): {listed('code_versions')}",
        f"- Runs: {runs['finished']} finished, {runs['failed']} failed, {runs['skipped']} skipped "
        f"(source failed), {runs['killed']} stopped, {runs['unfinished']} unfinished; "
        f"{h['invocations']} study invocation(s)",
        f"- Numbers are computed on the **{splits}** split "
        f"({'/'.join(h.get('eval_cases', [])) or '?'} volumes of "
        f"{'/'.join(h.get('eval_patients', [])) or '?'} patients), per volume, in the "
        f"preprocessed crop, scored in the protocol's evaluation window ({EVAL_WINDOW_TEXT}); "
        "`predict` + `evaluate` give the same masks in the original grid",
    ]
    if "val" in h["eval_splits"]:
        lines[-1] += (" — **validation**: the split that also chose the checkpoint, so they are "
                      "optimistic (prepare with --test-fraction to hold out a test split)")
    else:
        lines[-1] += "; the checkpoint was chosen on the validation split only"
    lines.append("- The paper's 2019 numbers were measured on the split that also selected its "
                 "checkpoints (no held-out test set), so they are optimistic next to a test split.")
    caveat = comparability(h)
    lines.append(f"- **{caveat}**" if caveat else
                 "- Paper columns are the paper's BraTS 2015 / 2019 results at the same budget "
                 "(BraTS release and split may differ).")
    if h["runs_without_per_volume"]:
        lines.append(f"- {len(h['runs_without_per_volume'])} finished run(s) have no "
                     "per_volume.json: multi-seed volume CIs and paired comparisons omit them.")
    lines += [f"- {n}" for n in h["notes"]]
    lines += ["", f"Cells read `mean [CI]`: CI = {s['volume_ci']}. With several seeds the mean is "
              "the mean over seeds, `[CI]` is over volumes of the seed-averaged values and "
              f"`seeds [..]` is the {s['seed_ci']}. *Excluded* = volumes with undefined dice "
              "(empty truth and empty prediction) / volumes evaluated, summed over seeds."]
    return "\n".join(lines)


def _excluded_md(sec: dict[str, Any], name: str) -> str:
    e = sec["excluded"][name]
    return (f"Volumes excluded by the empty-mask rule: {e['n_excluded']} of "
            f"{e['n_excluded'] + e['n_volumes']} volume evaluations.")


def _section(head: str, table: str, sec: dict[str, Any], name: str) -> str:
    return f"{head}\n\n{table}\n\n{_excluded_md(sec, name)}"


def _table1_md(sec: dict[str, Any], title: str) -> str:
    head = f"## Table I — multimodal models{title}"
    if not sec["table1"]:
        return f"{head}\n\nNo finished multimodal training runs."
    rows = []
    for r in sec["table1"]:
        label = r["label"] + ("" if r["modalities"].count(",") == 3
                              else f" ({modality_label(r['modalities'])})")
        paper = r["paper"] or {}
        rows.append([label, *(fmt_cell(r[m]) for m in ("dice", "precision", "sensitivity")),
                     seeds_text(r["dice"]), excluded_text(r["dice"]),
                     _paper(paper.get("2015")), _paper(paper.get("2019"))])
    table = _table(["Model", "Dice", "Precision", "Sensitivity", "Seeds", "Excluded",
                    "Paper 2015 (D / P / S)", "Paper 2019 (D / P / S)"], rows)
    return _section(head, table, sec, "table1")


def _table2_md(sec: dict[str, Any], title: str) -> str:
    head = f"## Table II — unimodal SegAN-CAT{title}"
    if not sec["table2"]:
        return f"{head}\n\nNo finished unimodal SegAN-CAT runs."
    rows = [[modality_label(r["modality"]), fmt_cell(r["dice"]), seeds_text(r["dice"]),
             excluded_text(r["dice"]), _paper(r["paper"], 0), _paper(r["paper"], 1)]
            for r in sec["table2"]]
    table = _table(["Modality", "Dice", "Seeds", "Excluded", "Paper 2015", "Paper 2019"], rows)
    return _section(head, table, sec, "table2")


def _cross_md(sec: dict[str, Any], title: str, figure: str | None) -> str:
    head = f"## Fig. 2 — cross-modality dice (rows: trained on, columns: evaluated on){title}"
    cross = sec["cross_modality"]
    if not cross["cells"]:
        return f"{head}\n\nNo finished cross-modality evaluation runs."
    cells = {(c["trained_on"], c["evaluated_on"]): c for c in cross["cells"]}

    def text(r: str, c: str) -> str:
        cell = cells.get((r, c))
        return NONE if cell is None else fmt_cell(cell["dice"]) + "*" * (cell["from"] == "unimodal")

    rows = [[modality_label(r)] + [text(r, c) for c in cross["cols"]] for r in cross["rows"]]
    table = _table(["trained on \\ evaluated on", *map(modality_label, cross["cols"])], rows)
    notes = [f"{seeds_text(*(c['dice'] for c in cross['cells']))} per cell at most.",
             _excluded_md(sec, "cross_modality")]
    if any(c["from"] == "unimodal" for c in cross["cells"]):
        notes.insert(0, "Cells marked \\* come from the unimodal run's own test key "
                        "(no evaluate run).")
    return f"{head}\n\n![cross-modality dice]({figure})\n\n{table}\n\n" + " ".join(notes)


def _table3_md(sec: dict[str, Any], title: str) -> str:
    head = f"## Table III — FLAIR model fine-tuned on T1, T1c, T2{title}"
    if not sec["table3"]:
        return f"{head}\n\nNo finished transfers from FLAIR."
    rows = [[modality_label(r["target"]), fmt_cell(r["full"]), fmt_cell(r["s_din"]),
             fmt_cell(r.get("s_only")), fmt_cell(r["scratch"]),
             seeds_text(r["full"], r["s_din"], r.get("s_only")),
             _paper(r["paper"]["full"]), _paper(r["paper"]["s_din"])] for r in sec["table3"]]
    table = _table(["Target", "(S, D) = full", "(S, Din) = s_din", "S only = s_only",
                    "From scratch (same epochs)", "Seeds", "Paper (S, D) 2015 / 2019",
                    "Paper (S, Din) 2015 / 2019"], rows)
    note = ("`full` reproduces the paper's (S, D) column (segmentor and whole critic transferred "
            "and fine-tuned), `s_din` its (S, Din) column (the critic's input layer transferred); "
            "`s_only` is the authors' code's \"freeze all critic layers\" mode, which no paper "
            "column reports.")
    return _section(head, f"{table}\n\n{note}", sec, "table3")


def _transfer_row(c: dict[str, Any]) -> list[str]:
    p, g = c["paired"], c["gain"]
    gain = num(g["gain"], True) + interval(g["seed_ci_low"], g["seed_ci_high"], True) if g else NONE
    diff = num(p["mean_diff"], True) + interval(p["ci_low"], p["ci_high"], True) if p else NONE
    return [f"{modality_label(c['source'])} → {modality_label(c['target'])}",
            FREEZE_LABELS.get(c["freeze"], c["freeze"]), fmt_cell(c["dice"]),
            fmt_cell(c["scratch"]), gain, diff,
            f"{p['n_pairs']} ({p['n_excluded']})" if p else NONE,
            seeds_text(c["dice"]), p["verdict"] if p else "no scratch run with the same seed"]


def _transfer_md(sec: dict[str, Any], title: str, figures: dict[str, str], region: str,
                 paired_ci: str) -> str:
    head = f"## Beyond the paper — every source → target transfer{title}"
    tr = sec["transfer"]
    if not tr["cells"]:
        return f"{head}\n\nNo finished transfer runs."
    parts = [head, "Heatmaps: rows = source modality, columns = target. *Gain* = transfer mean "
             "dice − scratch mean dice on the same target, same seed, averaged over seeds."]
    for freeze in tr["freezes"]:
        dice, gain = (figures.get(f"{region}/transfer_{w}/{freeze}") for w in ("dice", "gain"))
        parts.append(f"### {FREEZE_LABELS.get(freeze, freeze)}\n\n![dice]({dice}) "
                     f"![gain over scratch]({gain})")
    table = _table(["Source → target", "Strategy", "Dice", "Scratch dice", "Gain (means)",
                    "Paired diff [95% CI]", "Pairs (excl.)", "Seeds", "Verdict"],
                   [_transfer_row(c) for c in tr["cells"]])
    parts.append("### Paired comparison with training from scratch\n\nMean per-volume dice "
                 f"difference transfer − scratch; CI: {paired_ci}, averaged over the seeds both "
                 f"have. Verdict from whether the CI excludes 0.\n\n{table}")
    parts.append(_excluded_md(sec, "transfer"))
    return "\n\n".join(parts)


def _tail_md(report: dict[str, Any]) -> str:
    parts = []
    if report["hpo"]:
        h = report["hpo"]
        parts.append(f"## Hyperparameter search\n\n{h['n_trials']} finished HPO trial(s); best "
                     f"validation dice {num(h['best_val_dice'])} ({h['best_name']}, run "
                     f"`{h['best_run_id']}`). HPO trials do not enter the tables.")
    problems = report["problems"]
    if problems:
        rows = [[p["name"], p["status"], p["reason"].replace("|", "/")] for p in problems[:100]]
        more = f"\n\n… and {len(problems) - 100} more." if len(problems) > 100 else ""
        parts.append("## Runs that did not finish\n\n"
                     + _table(["Run", "Status", "Reason"], rows) + more)
    return "\n\n".join(parts)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole ``report.md`` from the report dict (figures already drawn)."""
    parts = [_header_md(report)]
    figures = report.get("figures", {})
    for region, sec in report["regions"].items():
        title = "" if region == "wt" else f" — region {region.upper()}"
        parts += [_table1_md(sec, title), _table2_md(sec, title),
                  _cross_md(sec, title, figures.get(f"{region}/cross_modality")),
                  _table3_md(sec, title),
                  _transfer_md(sec, title, figures, region, report["statistics"]["paired_ci"])]
    tail = _tail_md(report)
    return "\n\n".join(parts + ([tail] if tail else [])) + "\n"


# -- files ----------------------------------------------------------------------
def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_outputs(report: dict[str, Any], out_dir: Path) -> Path:
    """Heatmaps, then ``report.json``, then ``report.md`` (its path is returned)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = draw_figures(report, out_dir)
    keep = {out_dir / name for name in report["figures"].values()}
    for pattern in FIGURE_PATTERNS:  # heatmaps of an earlier report that this one lacks
        for stale in set(out_dir.glob(pattern)) - keep:
            stale.unlink()
    _atomic_text(out_dir / "report.json", json.dumps(report, indent=2))
    _atomic_text(out_dir / "report.md", render_markdown(report))
    return out_dir / "report.md"


# -- console summary ------------------------------------------------------------
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

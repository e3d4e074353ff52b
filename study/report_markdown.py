"""``report.md`` and ``report.json`` of the study report, from the report dict only, so
what the markdown shows is exactly what ``report.json`` holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.atomic import write_text
from core.vocabulary import STUDY_METRICS
from study.report_figures import FIGURE_PATTERNS, draw_figures, gain_span
from study.report_format import (
    EVAL_WINDOW_TEXT,
    FREEZE_LABELS,
    NONE,
    comparability,
    excluded_text,
    fmt_cell,
    interval,
    marked,
    modality_label,
    num,
    seeds_text,
)
from study.report_plots import PLOT_PATTERNS, draw_plots, plots_md


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _paper(values: Any, i: int | None = None) -> str:
    if values is None:
        return NONE
    return " / ".join(f"{v:.3f}" for v in values) if i is None else f"{values[i]:.3f}"


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
    lines += ["", f"Cells read `mean [95% CI]`. **Empty-truth policy**: {s['policy']}. "
              f"**CI**: {s['cell_ci']}. **n** = seeds × tumour volumes per seed. "
              "**Tumour-free (FP)** = tumour-free volumes per seed (not in dice-based numbers) "
              "and, in brackets, the volume evaluations where the model predicted tumour on "
              "them (false-positive volumes, summed over seeds). HD95 in mm inside the "
              "evaluation window; `(k inf)` = tumour volumes without a predicted voxel, left out "
              f"of the HD95 mean. **Verdicts** {s['verdicts']}."]
    return "\n".join(lines)


def _excluded_md(sec: dict[str, Any], name: str) -> str:
    e = sec["excluded"][name]
    text = (f"Volume evaluations: {e['n_tumour']} with tumour; {e['n_tumour_free']} tumour-free "
            f"(left out of dice-based numbers), with a false-positive prediction on "
            f"{e['n_false_positive']} of them.")
    if e["n_excluded"]:
        text += f" Undefined dice on {e['n_excluded']} tumour volume evaluation(s) (left out)."
    return text


def _section(head: str, table: str, sec: dict[str, Any], name: str) -> str:
    return f"{head}\n\n{table}\n\n{_excluded_md(sec, name)}"


METRIC_HEAD = {"dice": "Dice", "precision": "Precision", "sensitivity": "Sensitivity",
               "specificity": "Specificity", "hd95": "HD95 (mm)"}


def _metric_cells(row: dict[str, Any]) -> list[str]:
    return [fmt_cell(row[m], 1 if m == "hd95" else 3) for m in STUDY_METRICS]


def _table1_md(sec: dict[str, Any], title: str) -> str:
    head = f"## Table I — multimodal models{title}"
    if not sec["table1"]:
        return f"{head}\n\nNo finished multimodal training runs."
    rows = []
    for r in sec["table1"]:
        label = r["label"] + ("" if r["modalities"].count(",") == 3
                              else f" ({modality_label(r['modalities'])})")
        paper = r["paper"] or {}
        rows.append([label, *_metric_cells(r), seeds_text(r["dice"]), excluded_text(r["dice"]),
                     _paper(paper.get("2015")), _paper(paper.get("2019"))])
    table = _table(["Model", *(METRIC_HEAD[m] for m in STUDY_METRICS), "n",
                    "Tumour-free (FP)", "Paper 2015 (D / P / S)", "Paper 2019 (D / P / S)"], rows)
    return _section(head, table, sec, "table1")


def _table2_md(sec: dict[str, Any], title: str) -> str:
    head = f"## Table II — unimodal SegAN-CAT{title}"
    if not sec["table2"]:
        return f"{head}\n\nNo finished unimodal SegAN-CAT runs."
    rows = [[modality_label(r["modality"]), fmt_cell(r["dice"]), seeds_text(r["dice"]),
             excluded_text(r["dice"]), _paper(r["paper"], 0), _paper(r["paper"], 1)]
            for r in sec["table2"]]
    table = _table(["Modality", "Dice", "n", "Tumour-free (FP)", "Paper 2015", "Paper 2019"],
                   rows)
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
    notes = [f"n = {seeds_text(*(c['dice'] for c in cross['cells']))} per cell.",
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
             fmt_cell(r.get("s_only")), fmt_cell(r["scratch"]), fmt_cell(r.get("unimodal")),
             seeds_text(r["full"], r["s_din"], r.get("s_only")),
             _paper(r["paper"]["full"]), _paper(r["paper"]["s_din"])] for r in sec["table3"]]
    table = _table(["Target", "(S, D) = full", "(S, Din) = s_din", "S only = s_only",
                    "From scratch (same epochs)", "Unimodal (full budget)", "n",
                    "Paper (S, D) 2015 / 2019",
                    "Paper (S, Din) 2015 / 2019"], rows)
    note = ("`full` reproduces the paper's (S, D) column (segmentor and whole critic transferred "
            "and fine-tuned), `s_din` its (S, Din) column (the critic's input layer transferred); "
            "`s_only` is the authors' code's \"freeze all critic layers\" mode, which no paper "
            "column reports. Two controls: a model trained from scratch with the transfers' "
            "epoch budget (the fair one), and the target's unimodal model trained with the full "
            "budget (Table II; what the paper compared its transfers with).")
    return _section(head, f"{table}\n\n{note}", sec, "table3")


def _transfer_row(c: dict[str, Any]) -> list[str]:
    p, g = c["paired"], c["gain"]
    diff = num(p["mean_diff"], True) + interval(p["ci_low"], p["ci_high"], True) if p else NONE
    holm = NONE if not p or p.get("holm") is None else "holds" if p["holm"] else "no"
    return [f"{modality_label(c['source'])} → {modality_label(c['target'])}",
            FREEZE_LABELS.get(c["freeze"], c["freeze"]), fmt_cell(c["dice"]),
            fmt_cell(c["scratch"]), num(g["gain"], True) if g else NONE,
            diff + " \\*" * marked(p), seeds_text(c["dice"], c["scratch"]),
            p["verdict"] if p else "no scratch run with the same seed", holm]


def _heatmap_caption(cells: list[dict[str, Any]], span: float) -> str:
    return (f"n = {seeds_text(*(c['dice'] for c in cells))} per cell; \\* = the paired 95% CI "
            f"excludes 0 (≥ 2 seeds); every gain heatmap of this family shares the colour "
            f"scale ±{span:.3f}.")


def _transfer_md(sec: dict[str, Any], title: str, figures: dict[str, str], region: str,
                 stats: dict[str, str]) -> str:
    head = f"## Beyond the paper — every source → target transfer{title}"
    tr = sec["transfer"]
    if not tr["cells"]:
        return f"{head}\n\nNo finished transfer runs."
    parts = [head, "Heatmaps: rows = source modality, columns = target. *Gain* = transfer mean "
             "dice − scratch mean dice on the same target, same seeds (the tables' cell means; "
             "both on the same tumour volumes, so it equals the paired difference)."]
    span = gain_span(tr["cells"])
    combined = figures.get(f"{region}/transfer_gains")
    if combined:
        parts.append(f"![every gain heatmap]({combined})\n\nEvery strategy's gain heatmap "
                     "side by side (left to right: "
                     + ", ".join(FREEZE_LABELS.get(f, f) for f in tr["freezes"]) + "); "
                     + _heatmap_caption(tr["cells"], span))
    for freeze in tr["freezes"]:
        dice, gain = (figures.get(f"{region}/transfer_{w}/{freeze}") for w in ("dice", "gain"))
        cells = [c for c in tr["cells"] if c["freeze"] == freeze]
        parts.append(f"### {FREEZE_LABELS.get(freeze, freeze)}\n\n![dice]({dice}) "
                     f"![gain over scratch]({gain})\n\n{_heatmap_caption(cells, span)}")
    table = _table(["Source → target", "Strategy", "Dice", "Scratch dice", "Gain (means)",
                    "Paired diff [95% CI]", "n", "Verdict (exploratory)", "Holm"],
                   [_transfer_row(c) for c in tr["cells"]])
    n_judged = sum(bool(c["paired"] and c["paired"].get("p_value") is not None)
                   for c in tr["cells"])
    judged = (f"{n_judged} cell(s) judged here, so about {0.05 * n_judged:.1f} would exclude 0 "
              "by chance if no transfer changed anything" if n_judged
              else "no cell has 2 seeds on both sides here, so there is no verdict")
    parts.append("### Paired comparison with training from scratch\n\nMean per-volume dice "
                 f"difference transfer − scratch; CI: {stats['paired_ci']}. Verdicts "
                 f"{stats['verdicts']}: {judged}.\n\n{table}")
    parts.append(_excluded_md(sec, "transfer"))
    return "\n\n".join(parts)


def _region_md(report: dict[str, Any]) -> str:
    rows = report.get("region_table") or []
    if not rows:
        return ""
    body = [[r["region"].upper(), *_metric_cells(r), seeds_text(r["dice"]),
             excluded_text(r["dice"]), _paper(r["paper"]["2015"], 0) if r["paper"] else NONE,
             _paper(r["paper"]["2019"], 0) if r["paper"] else NONE] for r in rows]
    table = _table(["Region", *(METRIC_HEAD[m] for m in STUDY_METRICS), "n", "Tumour-free (FP)",
                    "Paper dice 2015", "Paper dice 2019"], body)
    return ("## Regions — multimodal SegAN-CAT per BraTS region\n\n" + table + "\n\nThe "
            "paper reports the whole tumour (WT) only: its SegAN-CAT WT dice stands beside WT; "
            "tumour core (TC) and enhancing tumour (ET) have no paper value. ET is absent from "
            "many low-grade volumes: they are tumour-free for ET and count under Tumour-free.")


def _ablations_md(sec: dict[str, Any], title: str) -> str:
    rows = sec.get("ablations") or []
    if not rows:
        return ""
    body = []
    for r in rows:
        p = r["vs_reference"]
        diff = (num(p["mean_diff"], True) + interval(p["ci_low"], p["ci_high"], True)
                + " \\*" * marked(p)) if p and p["mean_diff"] is not None else NONE
        holm = NONE if not p or p.get("holm") is None else "holds" if p["holm"] else "no"
        body.append([r["l1_mode"], r["dice_weight"], r["critic_input"],
                     modality_label(r["modalities"]), *_metric_cells(r), seeds_text(r["dice"]),
                     diff, p["verdict"] if p else "reference", holm])
    table = _table(["L1 mode", "Dice weight", "Critic input", "Modalities",
                    *(METRIC_HEAD[m] for m in STUDY_METRICS), "n",
                    "Δ dice vs global / 1 / concat [95% CI]", "Verdict (exploratory)", "Holm"],
                   body)
    return (f"## Ablations — L1 mode × dice weight × critic input{title}\n\n{table}\n\n"
            "Δ = paired per-volume dice difference against SegAN-CAT as the authors ran it "
            "(global L1, dice weight 1, concat), same seeds and volumes; \\* = its 95% CI "
            f"excludes 0 (≥ 2 seeds).\n\n{_excluded_md(sec, 'ablations')}")


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
    parts = [_header_md(report), _region_md(report)]
    figures = report.get("figures", {})
    for region, sec in report["regions"].items():
        title = "" if region == "wt" else f" — region {region.upper()}"
        parts += [_table1_md(sec, title), _table2_md(sec, title),
                  _cross_md(sec, title, figures.get(f"{region}/cross_modality")),
                  _table3_md(sec, title),
                  _transfer_md(sec, title, figures, region, report["statistics"]),
                  _ablations_md(sec, title)]
    parts += [plots_md(report), _tail_md(report)]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_outputs(report: dict[str, Any], out_dir: Path) -> Path:
    """Heatmaps, then ``report.json``, then ``report.md`` (its path is returned)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = {**draw_figures(report, out_dir), **draw_plots(report, out_dir)}
    keep = {out_dir / name for name in report["figures"].values()}
    for pattern in (*FIGURE_PATTERNS, *PLOT_PATTERNS):  # figures of an earlier report only
        for stale in set(out_dir.glob(pattern)) - keep:
            stale.unlink()
    write_text(out_dir / "report.json", json.dumps(report, indent=2))
    write_text(out_dir / "report.md", render_markdown(report))
    return out_dir / "report.md"



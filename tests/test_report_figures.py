"""The report's paper figures against a real SQLite MLflow store: per-volume dice
distributions and learning curves per family, and every gain heatmap of a transfer family
side by side on the one shared colour scale — each linked from report.md with a caption.

Runs are written through the study's own Tracker (``tests.test_report.Store``); the
per-epoch history is logged at steps = epochs, as the Tune callback logs it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import study.report_figures as report_figures
from study.report import write_report
from tests.test_report import Store, free_row, rows

NAN = math.nan
HISTORY = {"0": [0.2, 0.5, 0.6], "1": [0.3, 0.4, 0.7]}
"""val/dice per epoch 1..3 of the FLAIR cell's two seeds (the losses fall with it)."""


def uni(mod: str, seed: str) -> dict[str, str]:
    return {"kind": "train", "family": "unimodal", "modalities": mod, "seed": seed}


def transfer(source: str, target: str, freeze: str, seed: str) -> dict[str, str]:
    return {"kind": "transfer", "family": "transfer", "stage": "2", "source": source,
            "target": target, "modalities": target, "freeze": freeze, "seed": seed}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = Store(tmp_path_factory.mktemp("mlflow"))
    exp = store.experiment("figures")
    ids = {}
    flair = {"0": rows([0.8, 0.7, 0.0]) + [free_row("c9", 20)], "1": rows([0.75, 0.65, 0.9])}
    for seed, volumes in flair.items():
        ids[f"flair{seed}"] = store.child(exp, f"unimodal/segan-cat/flair/wt/seed{seed}",
                                          uni("flair", seed), {"flair": volumes})
        for epoch, dice in enumerate(HISTORY[seed], start=1):
            for key, value in (("val/dice", dice), ("train/loss_s", 1 - dice),
                               ("train/loss_d", 0.5 + dice)):
                store.client.log_metric(ids[f"flair{seed}"], key, value, step=epoch)
    store.child(exp, "unimodal/segan-cat/t1/wt/seed0", uni("t1", "0"),
                {"t1": rows([0.4, 0.5, NAN])})  # a damaged row: NaN dice is left out
    store.child(exp, "hpo/segan-cat/flair/wt/seed0/ab12",  # a search sample: no cell
                {"kind": "train", "family": "hpo", "modalities": "flair"},
                {"flair": rows([0.99])})
    store.child(exp, "cross_modality/flair/wt/seed0",
                {"kind": "evaluate", "family": "cross_modality", "modalities": "flair",
                 "source": "flair", "stage": "2"},
                {"flair": rows([0.8, 0.7]), "t1": rows([0.3, 0.2])})
    for seed in ("0", "1"):
        for src, tgt, freeze, base in (("flair", "t1", "full", 0.6), ("flair", "t1", "s_din", 0.5),
                                       ("none", "t1", "scratch", 0.45),
                                       ("flair", "t2", "full", 0.3),
                                       ("none", "t2", "scratch", 0.5)):
            name = f"transfer/{src}->{tgt}/{freeze}/wt/seed{seed}"
            store.child(exp, name, transfer(src, tgt, freeze, seed),
                        {tgt: rows([base, base + 0.1, base + 0.05 * int(seed)])})
    out = tmp_path_factory.mktemp("report")
    (out / "volumes_gone.png").write_bytes(b"stale")  # a figure of an earlier report
    drawn: dict[str, Any] = {}
    save = report_figures.save

    def keep(fig: Any, path: Path) -> Path:
        drawn[path.name] = fig
        return save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report_figures, "save", keep)
        mp.setattr("study.report_plots.save", keep)
        path = write_report(store.uri, "figures", out)
    return {"out": out, "md": path.read_text(), "drawn": drawn, "ids": ids,
            "report": json.loads((out / "report.json").read_text())}


def test_per_volume_distributions_per_family(built: dict[str, Any]) -> None:
    dist = built["report"]["distributions"]
    assert list(dist) == ["cross_modality", "transfer", "unimodal"]  # no hpo family
    cells = {e["cell"]: e for e in dist["unimodal"]}
    assert list(cells) == ["segan-cat/flair/wt", "segan-cat/t1/wt"]
    flair = cells["segan-cat/flair/wt"]
    # the empty-truth policy: the tumour-free c9 is out, the missed tumour (dice 0) is in
    assert flair["seeds"] == ["0", "1"] and flair["dice"] == [[0.8, 0.7, 0.0], [0.75, 0.65, 0.9]]
    assert (flair["n_seeds"], flair["n_volumes"], flair["n"]) == (2, 3, 6)
    assert cells["segan-cat/t1/wt"]["dice"] == [[0.4, 0.5]]
    cross = [e["cell"] for e in dist["cross_modality"]]
    assert cross == ["flair/wt", "flair/wt → t1"]  # its own inputs first
    assert len(dist["transfer"]) == 5
    fig = built["drawn"]["volumes_unimodal.png"]
    ax = fig.axes[0]
    ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)}
    assert list(ticks) == ["segan-cat/flair/wt  (n = 2×3)", "segan-cat/t1/wt  (n = 1×2)"]
    assert ticks["segan-cat/flair/wt  (n = 2×3)"] > ticks["segan-cat/t1/wt  (n = 1×2)"]  # on top
    assert sum(len(c.get_offsets()) for c in ax.collections) == 8  # every volume a point
    assert not (built["out"] / "volumes_gone.png").exists()


def test_learning_curves_from_the_mlflow_history(built: dict[str, Any]) -> None:
    curves = built["report"]["curves"]
    assert list(curves) == ["unimodal"]  # evaluate and transfer runs here logged no epochs
    (flair,) = curves["unimodal"]
    assert flair["cell"] == "segan-cat/flair/wt" and sorted(flair["seeds"]) == ["0", "1"]
    for seed, values in HISTORY.items():
        got = flair["seeds"][seed]
        assert got["val/dice"] == {"epoch": [1, 2, 3], "value": values}
        assert got["train/loss_s"]["value"] == pytest.approx([1 - v for v in values])
    fig = built["drawn"]["curves_unimodal.png"]
    val = next(ax for ax in fig.axes if ax.get_title() == "validation dice")
    assert len(fig.axes) == 3
    lines = val.get_lines()
    assert len(lines) == 3  # two thin seed lines, one thick mean
    thick = max(lines, key=lambda line: line.get_linewidth())
    assert list(thick.get_ydata()) == pytest.approx([0.25, 0.45, 0.65])


def test_every_gain_heatmap_of_a_family_on_one_scale(built: dict[str, Any]) -> None:
    tr = built["report"]["regions"]["wt"]["transfer"]
    assert tr["freezes"] == ["full", "s_din"]
    assert built["report"]["figures"]["wt/transfer_gains"] == "transfer_gains.png"
    fig = built["drawn"]["transfer_gains.png"]
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["(S, D) = full", "(S, Din) = s_din"]
    span = max(abs(c["gain"]["gain"]) for c in tr["cells"])
    assert span == pytest.approx(0.2)  # flair -> t2, full: 0.3 vs 0.5 scratch
    assert {ax.images[0].get_clim() for ax in panels} == {(-span, span)}
    # the same scale as each strategy's own gain heatmap
    own = built["drawn"]["transfer_gain_full.png"].axes[0].images[0].get_clim()
    assert own == (-span, span)


def test_report_md_links_each_figure_with_a_caption(built: dict[str, Any]) -> None:
    md, out = built["md"], built["out"]
    for name in ("volumes_unimodal.png", "volumes_transfer.png", "volumes_cross_modality.png",
                 "curves_unimodal.png", "transfer_gains.png"):
        assert f"]({name})" in md, name
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "## Figures — per-volume dice and learning curves" in md
    unimodal = md.split("### Per-volume dice — `unimodal`", 1)[1].split("###", 1)[0]
    assert "n = seeds × tumour volumes per seed: 1–2 seeds × 2–3 vol. per cell" in unimodal
    assert "tumour-free volumes are left out" in unimodal
    curves = md.split("### Learning curves — `unimodal`", 1)[1]
    assert "thick = mean over its seeds" in curves and "2 seed(s) per cell" in curves
    combined = md.split("![every gain heatmap](transfer_gains.png)", 1)[1].split("###", 1)[0]
    assert "left to right: (S, D) = full, (S, Din) = s_din" in combined
    assert "n = 2 seeds × 3 vol. per cell" in combined and "colour scale ±0.200" in combined

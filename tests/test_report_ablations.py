"""The ``ablations`` grid (L1 mode × dice weight × critic input) expands to the right cells,
every grid that matters runs ≥ 3 seeds on the paper budget, and the report's ablation table
reads each run's resolved config from MLflow and compares it with SegAN-CAT, paired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import run_study
from study.grids import ExpandContext, expand, grid_seeds, list_grids, load_grid_data
from study.report import write_report
from tests.test_report import FOUR, Store, free_row, rows

CTX = ExpandContext("smoke", "/abs/store.zarr", "store123", (0,))
CELLS = {("global", 0.0, "multiply"), ("global", 1.0, "multiply"), ("global", 1.0, "concat"),
         ("per_layer", 0.0, "multiply"), ("per_layer", 1.0, "multiply"),
         ("per_layer", 1.0, "concat"), ("global", 0.0, "concat"), ("per_layer", 0.0, "concat")}


def combo(config: dict) -> tuple[str, float, str]:
    return (config["loss"]["l1_mode"], config["loss"]["dice_weight"],
            config["model"]["critic_input"])


def test_the_ablation_grid_expands_to_its_cells() -> None:
    grid = expand("ablations", CTX)
    assert {combo(t.config) for t in grid.trials} == CELLS and len(grid.trials) == 8
    assert all(t.kind == "train" and t.stage == 1 and t.tags["region"] == "wt"
               and t.tags["modalities"] == FOUR for t in grid.trials)
    assert load_grid_data("ablations")["budget"] == "auto"
    paper = expand("ablations", ExpandContext("paper", "/abs/store.zarr", "s", (0, 1, 2)))
    assert len(paper.trials) == 24


@pytest.mark.parametrize("name", [g for g in list_grids() if g not in ("hpo", "smoke")])
def test_the_paper_budget_runs_three_seeds(name: str) -> None:
    data = load_grid_data(name)
    assert data["budget"] == "auto" and len(grid_seeds(data, "paper")) >= 3


def test_the_ablation_dry_run_names_eight_cells(capsys: pytest.CaptureFixture[str],
                                              synthetic_store: Path) -> None:
    assert run_study.main(["--grid", "ablations", "--dry-run", "--data", str(synthetic_store),
                           "--budget", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "grid ablations: 8 trials, budget smoke" in out and "stage 1 (8 trials)" in out
    assert "ablation_l1_per_layer/segan/flair+t1+t1c+t2/wt/seed0" in out


REFERENCE = {"0": [0.80, 0.70, 0.90, 0.60, 0.85], "1": [0.78, 0.72, 0.88, 0.62, 0.86]}
PER_LAYER = {"0": [0.75, 0.66, 0.86, 0.58, 0.80], "1": [0.74, 0.69, 0.83, 0.57, 0.82]}


def test_the_report_has_an_ablation_table(tmp_path: Path) -> None:
    store = Store(tmp_path)
    exp = store.experiment("ablations")
    variants = {"segan": ("multiply", 0.0), "segan-dice": ("multiply", 1.0),
                "segan-cat": ("concat", 1.0)}
    for l1 in ("global", "per_layer"):
        for variant, (critic, weight) in variants.items():
            paired_seeds = variant == "segan-cat"
            table = (REFERENCE if l1 == "global" else PER_LAYER) if paired_seeds else {"0": [0.5] * 5}
            for seed, dice in table.items():
                store.child(exp, f"ablation_l1_{l1}/{variant}/{seed}",
                            {"kind": "train", "family": f"ablation_l1_{l1}", "variant": variant,
                             "modalities": FOUR, "seed": seed},
                            {"flair-t1-t1c-t2": rows(dice) + [free_row("f0", 9)]},
                            config={"loss": {"l1_mode": l1, "dice_weight": weight},
                                    "model": {"critic_input": critic}})
    store.child(exp, "table1/segan-cat", {"kind": "train", "family": "table1",
                                          "variant": "segan-cat", "modalities": FOUR},
                {"flair-t1-t1c-t2": rows([0.9, 0.9])})
    md = write_report(store.uri, "ablations", tmp_path / "out").read_text()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    sec = report["regions"]["wt"]
    # Table I holds the table1 run only: ablation runs have their own table
    (table1,) = sec["table1"]
    assert table1["dice"]["mean"] == pytest.approx(0.9) and table1["dice"]["n_seeds"] == 1
    got = [(r["l1_mode"], r["dice_weight"], r["critic_input"]) for r in sec["ablations"]]
    assert got == [("global", "1.0", "concat"), ("global", "1.0", "multiply"),
                   ("global", "0.0", "multiply"), ("per_layer", "1.0", "concat"),
                   ("per_layer", "1.0", "multiply"), ("per_layer", "0.0", "multiply")]
    reference, per_layer = sec["ablations"][0], sec["ablations"][3]
    assert reference["vs_reference"] is None and reference["dice"]["n_seeds"] == 2
    assert reference["dice"]["mean"] == pytest.approx(np.mean(list(REFERENCE.values())))
    assert reference["dice"]["n_false_positive"] == 2  # f0, both seeds
    paired = per_layer["vs_reference"]
    diff = np.subtract(list(PER_LAYER.values()), list(REFERENCE.values()))
    assert paired["mean_diff"] == pytest.approx(diff.mean()) and paired["n_seeds"] == 2
    assert paired["ci_high"] < 0 and paired["verdict"] == "worse than SegAN-CAT"
    one_seed = sec["ablations"][1]["vs_reference"]
    assert one_seed["verdict"] == "1 seed — no verdict"
    assert "## Ablations — L1 mode × dice weight × critic input" in md
    assert "| per_layer | 1.0 | concat |" in md and "worse than SegAN-CAT" in md

"""One empty-truth policy for every number: a table where the old rules gave the gain and the
paired difference opposite signs, and the policy functions by hand.

The report's statistics read per-volume rows through ``PerVolume``; here its cache is filled
with the rows directly (what MLflow would return), so no tracking store is needed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core import metrics
from study.report_stats import (
    ONE_SEED,
    PerVolume,
    TrialRun,
    cell_stats,
    gain_over_scratch,
    paired_vs_scratch,
)

TUMOUR = [f"t{i}" for i in range(6)]
FREE = ["f0", "f1", "f2"]


def tumour_row(case: str, dice: float) -> dict:
    """A tumour volume (13 truth voxels) with the given dice (counts are not used here)."""
    return {"case_id": case, "tp": 10, "fp": 2, "fn": 3, "tn": 100, "dice": dice,
            "precision": 0.8, "sensitivity": 0.77, "specificity": 0.98, "hd95": 4.0}


def free_row(case: str, fp: int) -> dict:
    """A tumour-free volume: dice 0 when the model predicts ``fp`` voxels, NaN when none."""
    return {"case_id": case, "tp": 0, "fp": fp, "fn": 0, "tn": 115 - fp,
            "dice": 0.0 if fp else math.nan, "precision": 0.0 if fp else math.nan,
            "sensitivity": math.nan, "specificity": (115 - fp) / 115,
            "hd95": math.inf if fp else math.nan}


# transfer: better on every tumour volume, but predicts tumour on the tumour-free ones;
# scratch: worse on tumour volumes, silent on the tumour-free ones
TRANSFER = {"0": [0.80, 0.75, 0.85, 0.70, 0.90, 0.78], "1": [0.82, 0.74, 0.86, 0.72, 0.88, 0.80]}
SCRATCH = {"0": [0.70, 0.66, 0.74, 0.62, 0.80, 0.69], "1": [0.71, 0.65, 0.77, 0.60, 0.79, 0.70]}


def run(name: str, seed: str) -> TrialRun:
    return TrialRun(f"{name}-{seed}", name, "FINISHED", 0, {"seed": seed}, {})


def volumes() -> tuple[PerVolume, list[TrialRun], list[TrialRun]]:
    vols = PerVolume("unused://")
    transfer, scratch = [], []
    for seed in TRANSFER:
        t, s = run("transfer", seed), run("scratch", seed)
        vols.cache[t.run_id] = {"t1": [tumour_row(c, d) for c, d in zip(TUMOUR, TRANSFER[seed],
                                                                          strict=True)]
                                + [free_row(c, 50) for c in FREE]}
        vols.cache[s.run_id] = {"t1": [tumour_row(c, d) for c, d in zip(TUMOUR, SCRATCH[seed],
                                                                          strict=True)]
                                + [free_row(c, 0) for c in FREE]}
        transfer.append(t)
        scratch.append(s)
    return vols, transfer, scratch


def old_rules(vols: PerVolume) -> tuple[float, float]:
    """(gain, paired mean) as computed before the policy: each run's mean over every volume
    with a defined dice (the old logged mean), and the paired difference over the volumes
    where both sides are defined."""
    gains, diffs = [], []
    for seed in TRANSFER:
        t = np.array([r["dice"] for r in vols.cache[f"transfer-{seed}"]["t1"]])
        s = np.array([r["dice"] for r in vols.cache[f"scratch-{seed}"]["t1"]])
        gains.append(metrics.summarize(t).mean - metrics.summarize(s).mean)
        both = np.isfinite(t) & np.isfinite(s)
        diffs.append(t[both] - s[both])
    return float(np.mean(gains)), float(np.mean(np.mean(diffs, axis=0)))


def test_the_old_rules_flip_the_sign_and_the_policy_makes_gain_and_paired_agree() -> None:
    vols, transfer, scratch = volumes()
    old_gain, old_paired = old_rules(vols)
    assert old_gain < 0 < old_paired  # the heatmap said "worse", the table "better"
    expected = np.mean(np.subtract(list(TRANSFER.values()), list(SCRATCH.values())))
    assert expected == pytest.approx(1.17 / 12)  # (0.57 + 0.60) / 12 volume evaluations
    gain = gain_over_scratch(transfer, scratch, "t1", vols)
    paired = paired_vs_scratch(transfer, scratch, "t1", vols)
    assert gain is not None and paired is not None
    assert gain["gain"] == pytest.approx(expected) and paired["mean_diff"] == pytest.approx(expected)
    assert paired["ci_low"] > 0 and paired["verdict"] == "transfer better"
    assert (paired["n_seeds"], paired["n_pairs"], paired["n_excluded"]) == (2, 6, 0)
    # the cell means are on the same tumour volumes; the false positives are counted apart
    t_cell, s_cell = (cell_stats(r, "t1", "dice", vols) for r in (transfer, scratch))
    assert t_cell is not None and s_cell is not None
    assert t_cell["mean"] - s_cell["mean"] == pytest.approx(gain["gain"])
    assert (t_cell["n_volumes"], t_cell["n_tumour_free"], t_cell["n_false_positive"]) == (6, 3, 6)
    assert s_cell["n_false_positive"] == 0
    spec = cell_stats(transfer, "t1", "specificity", vols)  # over every volume
    assert spec is not None and spec["mean"] == pytest.approx((6 * 0.98 + 3 * 65 / 115) / 9)


def test_one_seed_gives_no_verdict() -> None:
    vols, transfer, scratch = volumes()
    paired = paired_vs_scratch(transfer[:1], scratch[:1], "t1", vols)
    assert paired is not None and paired["verdict"] == ONE_SEED and paired["p_value"] is None
    assert paired["mean_diff"] == pytest.approx(np.mean(np.subtract(TRANSFER["0"], SCRATCH["0"])))


def test_policy_values_and_summary_by_hand() -> None:
    rows = [tumour_row("a", 0.6), tumour_row("b", 0.8), free_row("c", 5), free_row("d", 0),
            {**tumour_row("e", 0.0), "tp": 0, "fp": 0, "fn": 13, "precision": math.nan,
             "hd95": math.inf}]  # e: a missed tumour
    dice = metrics.policy_values(rows, "dice")
    np.testing.assert_array_equal(dice, [0.6, 0.8, math.nan, math.nan, 0.0])
    assert np.isfinite(metrics.policy_values(rows, "specificity")).all()
    assert metrics.tumour_free(rows) == (2, 1)
    s = metrics.policy_summary(rows)
    assert s["dice"] == pytest.approx(1.4 / 3) and (s["n_volumes"], s["n_excluded"]) == (3, 0)
    assert s["hd95"] == pytest.approx(4.0) and s["hd95_n_inf"] == 1
    assert s["precision"] == pytest.approx(0.8)  # the missed tumour has no precision
    assert s["specificity"] == pytest.approx((3 * 0.98 + 110 / 115 + 1.0) / 5)
    assert (s["n_tumour_free"], s["n_false_positive"]) == (2, 1)

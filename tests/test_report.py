"""The report against a real SQLite MLflow store written through the study's Tracker.

Every logged test metric is computed from the run's per-volume rows with
``core.metrics.summarize`` (as the trainable does), so the report's numbers can be
checked against both MLflow and hand-computed values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.errors import UserError
from core.metrics import hierarchical_interval
from study.report import report_summary_lines, write_report
from study.report_stats import N_BOOT
from study.tracking import Tracker
from study.trainable import eval_summary

NAN = math.nan
FOUR = "flair,t1,t1c,t2"


def rows(dice: list[float], cases: list[str] | None = None) -> list[dict]:
    """Per-volume tumour rows: precision = dice + 0.05, sensitivity = dice − 0.05, HD95 =
    20·(1 − dice) mm; dice 0 is a missed tumour (no predicted voxel: HD95 inf, precision NaN)."""
    cases = cases or [f"c{i}" for i in range(len(dice))]
    out = []
    for c, d in zip(cases, dice, strict=True):
        missed = d == 0
        out.append({"case_id": c, "tp": 0 if missed else 10, "fp": 0 if missed else 2,
                    "fn": 13 if missed else 3, "tn": 100, "dice": d,
                    "precision": NAN if missed else d + 0.05, "sensitivity": d - 0.05 * (not missed),
                    "specificity": 0.99, "hd95": math.inf if missed else 20 * (1 - d)})
    return out


def free_row(case: str, fp: int) -> dict:
    """A tumour-free volume: dice 0 with ``fp`` false-positive voxels, NaN without."""
    return {"case_id": case, "tp": 0, "fp": fp, "fn": 0, "tn": 115 - fp,
            "dice": 0.0 if fp else NAN, "precision": 0.0 if fp else NAN, "sensitivity": NAN,
            "specificity": (115 - fp) / 115, "hd95": math.inf if fp else NAN}


def logged_metrics(per_volume: dict[str, list[dict]]) -> dict[str, float]:
    """What a trial logs for these rows: the trainable's own summary (``eval_summary``)."""
    out: dict[str, float] = {}
    for key, rs in per_volume.items():
        out.update(eval_summary("test", key, rs))
    return out


class Store:
    """Parent and child runs written through the study's own ``Tracker`` and summaries."""

    def __init__(self, root: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.root = root
        self.uri = f"sqlite:///{(root / 'mlflow.db').resolve().as_posix()}"
        self.client = MlflowClient(self.uri)

    def experiment(self, name: str) -> tuple[str, str]:
        """A new experiment with one finished parent run; returns (experiment id, parent id)."""
        art = (self.root / "art" / name).resolve().as_uri()
        exp = self.client.create_experiment(name, artifact_location=art)
        parent = self.client.create_run(exp, run_name="study", tags={"role": "study"})
        for k, v in {"grid": "test", "budget": "smoke", "data": "/data/synthetic/synthetic.zarr",
                     "hardware": "test CPU, 2 CPUs, no GPU", "n_trials": "20"}.items():
            self.client.log_param(parent.info.run_id, k, v)
        self.client.set_terminated(parent.info.run_id, "FINISHED")
        return exp, parent.info.run_id

    def child(self, exp: tuple[str, str], name: str, tags: dict[str, str],
              per_volume: dict[str, list[dict]] | None = None, status: str = "FINISHED",
              extra: dict[str, float] | None = None, config: dict | None = None) -> str:
        """A child run with the schema's tags, test metrics from ``per_volume``, the artifact."""
        base = {"role": "trial", "mlflow.parentRunId": exp[1], "trial_id": name, "grid": "test",
                "budget": "smoke", "store_id": "s1", "code_version": "abc123",
                "eval_split": "test", "region": "wt", "seed": "0", "variant": "segan-cat",
                "freeze": "scratch", "stage": "1"}
        tracker = Tracker(self.uri, self.client.get_experiment(exp[0]).name)
        tracker.parent_id = exp[1]
        spec = SimpleNamespace(name=name, eval_modalities=(), config={
            "data": {"modalities": tags.get("modalities")}, **(config or {})})
        run_id = tracker.open_trial_run(spec, {**base, **tags, "mlflow.runName": name}, None)
        if per_volume is not None:
            tracker.log_metrics(run_id, {**logged_metrics(per_volume), **(extra or {})}, step=1)
            tracker.log_json(run_id, per_volume, "per_volume.json")
        tracker.finish(run_id, status)
        return run_id


FLAIR_S0, FLAIR_S1 = [0.8, 0.7, 0.9, 0.6], [0.7, 0.75, 0.85, 0.65]
# c2: FULL misses the tumour (dice 0); c3 is tumour-free: FULL predicts tumour there (dice 0),
# scratch predicts nothing (NaN); c9: only scratch was scored on it
FULL = rows([0.62, 0.71, 0.0], ["c0", "c1", "c2"]) + [free_row("c3", 40)] + rows([0.66], ["c4"])
SCRATCH = (rows([0.60, 0.30], ["c4", "c2"]) + [free_row("c3", 0)]
           + rows([0.55, 0.50, 0.9], ["c1", "c0", "c9"]))
T1_FLAIR = {"0": ([0.5, 0.6, 0.7], [0.4, 0.5, 0.62]), "1": ([0.55, 0.62, 0.65], [0.45, 0.53, 0.56])}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = Store(tmp_path_factory.mktemp("mlflow"))
    exp = store.experiment("full")
    ids: dict[str, str] = {}
    train = {"kind": "train"}
    for variant, volumes in (("segan", rows([0.6, 0.7, 0.8, 0.0])),
                             ("segan-dice", rows([0.7, 0.75, 0.8, 0.85]) + [free_row("c9", 30)]),
                             ("segan-cat", rows([0.8, 0.85, 0.9, NAN]))):
        tags = {**train, "family": "table1", "variant": variant, "modalities": FOUR}
        ids[variant] = store.child(exp, f"table1/{variant}", tags, {"flair-t1-t1c-t2": volumes})
    store.child(exp, "hpo/0", {**train, "family": "hpo", "modalities": FOUR},  # not in Table I
                {"flair-t1-t1c-t2": rows([0.99, 0.99])}, extra={"val/best_dice": 0.7})
    uni = {**train, "family": "unimodal"}
    ids["flair0"] = store.child(exp, "uni/flair/0", {**uni, "modalities": "flair"},
                                {"flair": rows(FLAIR_S0)})
    ids["flair1"] = store.child(exp, "uni/flair/1", {**uni, "modalities": "flair", "seed": "1"},
                                {"flair": rows(FLAIR_S1)})
    ids["t1"] = store.child(exp, "uni/t1/0", {**uni, "modalities": "t1"},
                            {"t1": rows([0.4, 0.5, 0.45, 0.55])})
    store.child(exp, "uni/t1c/0", {**uni, "modalities": "t1c", "error": "RuntimeError: boom"},
                status="FAILED")
    ev = {"kind": "evaluate", "family": "cross_modality", "stage": "2"}
    ids["ev_flair"] = store.child(exp, "cross/flair", {**ev, "modalities": "flair",
                                                       "source": "flair"},
                                  {"flair": rows([0.8, 0.7, 0.9, 0.6]),
                                   "t1": rows([0.3, 0.2, 0.25, 0.35])})
    ids["ev_t1"] = store.child(exp, "cross/t1", {**ev, "modalities": "t1", "source": "t1"},
                               {"flair": rows([0.5, 0.45, 0.4, 0.5])})

    def transfer(source: str, target: str, freeze: str, **more: str) -> dict[str, str]:
        return {"kind": "transfer", "family": "transfer", "stage": "2", "source": source,
                "target": target, "modalities": target, "freeze": freeze, **more}

    ids["full"] = store.child(exp, "transfer/flair->t1/full", transfer("flair", "t1", "full"),
                              {"t1": FULL})
    ids["s_din"] = store.child(exp, "transfer/flair->t1/s_din", transfer("flair", "t1", "s_din"),
                               {"t1": rows([0.5, 0.5, 0.6, 0.58])})
    ids["scratch"] = store.child(exp, "transfer/scratch->t1", transfer("none", "t1", "scratch"),
                                 {"t1": SCRATCH})
    ids["t2"] = store.child(exp, "transfer/flair->t2/s_din", transfer("flair", "t2", "s_din"),
                            {"t2": rows([0.7, 0.8])})
    for seed, (a, b) in T1_FLAIR.items():
        ids[f"t1_flair{seed}"] = store.child(exp, f"transfer/t1->flair/full/{seed}",
                                             transfer("t1", "flair", "full", seed=seed),
                                             {"flair": rows(a)})
        ids[f"scratch_flair{seed}"] = store.child(exp, f"transfer/scratch->flair/{seed}",
                                                  transfer("none", "flair", "scratch", seed=seed),
                                                  {"flair": rows(b)})
    store.child(exp, "transfer/t1c->t1/full",
                transfer("t1c", "t1", "full", skipped_reason="source uni/t1c/0 failed"),
                status="KILLED")
    out = tmp_path_factory.mktemp("report")
    path = write_report(store.uri, "full", out, {"hardware": "ignored: MLflow has it"})
    return {"store": store, "ids": ids, "out": out, "path": path,
            "report": json.loads((out / "report.json").read_text()), "md": path.read_text()}


def logged(study: dict, name: str) -> dict[str, float]:
    return study["store"].client.get_run(study["ids"][name]).data.metrics


def test_files_and_header(study: dict) -> None:
    out = study["out"]
    assert study["path"] == out / "report.md"
    for name in ("report.json", "fig2_cross_modality.png", "transfer_dice_full.png",
                 "transfer_gain_full.png", "transfer_dice_s_din.png", "transfer_gain_s_din.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*")), "temporary files left behind"
    h = study["report"]["header"]
    assert h["runs"] == {"total": 19, "finished": 17, "failed": 1, "skipped": 1, "killed": 0,
                         "unfinished": 0}
    assert h["hardware"] == ["test CPU, 2 CPUs, no GPU"] and h["eval_splits"] == ["test"]
    assert h["synthetic"] and h["code_versions"] == ["abc123"]
    md = study["md"]
    assert "not comparable" in md and "**test** split" in md
    assert "RuntimeError: boom" in md and "source uni/t1c/0 failed" in md
    hpo = study["report"]["hpo"]
    assert (hpo["n_trials"], hpo["best_name"], hpo["best_val_dice"]) == (1, "hpo/0", 0.7)


def interval(values: list[list[float]], bounds: tuple[float, float] = (0.0, 1.0)) -> tuple:
    """The report's interval of a (seeds, volumes) table, as the report computes it."""
    iv = hierarchical_interval(np.array(values, dtype=float), N_BOOT, bounds=bounds)
    return iv.low, iv.high


def test_table1_numbers_equal_mlflow(study: dict) -> None:
    rows1 = {r["variant"]: r for r in study["report"]["regions"]["wt"]["table1"]}
    assert list(rows1) == ["segan", "segan-dice", "segan-cat"]
    for variant, row in rows1.items():
        m = logged(study, variant)
        for name in ("dice", "precision", "sensitivity", "specificity", "hd95"):
            assert row[name]["mean"] == m[f"eval/test/flair-t1-t1c-t2/{name}"], (variant, name)
            assert row[name]["n_seeds"] == 1
    # the empty-truth policy: segan-dice's tumour-free c9 (30 false-positive voxels) is out of
    # the dice mean, counted as a false-positive volume, and in the specificity mean
    dice = rows1["segan-dice"]["dice"]
    assert dice["mean"] == pytest.approx(np.mean([0.7, 0.75, 0.8, 0.85]))
    assert (dice["n_volumes"], dice["n_tumour_free"], dice["n_false_positive"]) == (4, 1, 1)
    assert (dice["ci_low"], dice["ci_high"]) == interval([[0.7, 0.75, 0.8, 0.85]])
    spec = rows1["segan-dice"]["specificity"]
    assert spec["mean"] == pytest.approx((4 * 0.99 + 85 / 115) / 5)
    # segan missed a tumour: dice 0 counts, HD95 is inf there (counted, out of the mean)
    segan = rows1["segan"]
    assert segan["dice"]["mean"] == pytest.approx(0.525) and segan["hd95"]["n_inf"] == 1
    assert segan["hd95"]["mean"] == pytest.approx(np.mean([8.0, 6.0, 4.0]))
    assert logged(study, "segan")["eval/test/flair-t1-t1c-t2/hd95_n_inf"] == 1
    assert "6.000 [" not in study["md"] and "| 6.0 [" in study["md"] and "(1 inf)" in study["md"]
    cat = rows1["segan-cat"]["dice"]  # a damaged row (NaN dice on a tumour volume)
    assert (cat["n_excluded"], cat["n_volumes"]) == (1, 3)
    assert rows1["segan-cat"]["paper"]["2015"] == [0.859, 0.882, 0.852]
    excluded = study["report"]["regions"]["wt"]["excluded"]["table1"]
    assert excluded == {"n_cells": 3, "n_tumour": 11, "n_tumour_free": 1, "n_false_positive": 1,
                        "n_excluded": 1}
    assert "| SegAN-CAT | 0.850 [" in study["md"] and "0.859 / 0.882 / 0.852" in study["md"]
    assert "| 1 (1 FP) |" in study["md"] and "HD95 (mm)" in study["md"]


def test_table2_aggregates_seeds(study: dict) -> None:
    table2 = {r["modality"]: r for r in study["report"]["regions"]["wt"]["table2"]}
    assert list(table2) == ["t1", "flair"]  # the paper's order
    flair = table2["flair"]["dice"]
    means = [logged(study, "flair0")["eval/test/flair/dice"], logged(study, "flair1")["eval/test/flair/dice"]]
    assert flair["n_seeds"] == 2 and flair["mean"] == pytest.approx(np.mean(means))
    assert flair["mean"] == pytest.approx(np.mean(FLAIR_S0 + FLAIR_S1))
    assert (flair["ci_low"], flair["ci_high"]) == pytest.approx(interval([FLAIR_S0, FLAIR_S1]))
    assert flair["ci_low"] < flair["mean"] < flair["ci_high"] and flair["interval_seeds"] == 2
    t1 = table2["t1"]
    assert t1["dice"]["mean"] == logged(study, "t1")["eval/test/t1/dice"]
    assert t1["paper"] == [0.538, 0.542]
    assert "2 seeds × 4 vol." in study["md"] and "1 seed × 4 vol." in study["md"]


def test_cross_modality_matrix(study: dict) -> None:
    cross = study["report"]["regions"]["wt"]["cross_modality"]
    cells = {(c["trained_on"], c["evaluated_on"]): c for c in cross["cells"]}
    assert cross["rows"] == ["flair", "t1"]
    assert cells[("flair", "t1")]["dice"]["mean"] == logged(study, "ev_flair")["eval/test/t1/dice"]
    assert cells[("t1", "flair")]["dice"]["mean"] == logged(study, "ev_t1")["eval/test/flair/dice"]
    # no evaluate run of the t1 model on t1: the unimodal run's own key fills the diagonal
    assert cells[("t1", "t1")]["from"] == "unimodal"
    assert cells[("t1", "t1")]["dice"]["mean"] == logged(study, "t1")["eval/test/t1/dice"]


def test_paired_difference_by_case_id(study: dict) -> None:
    tr = study["report"]["regions"]["wt"]["transfer"]
    full = next(c for c in tr["cells"] if c["freeze"] == "full")
    # by case_id over tumour volumes: c0 .62−.50, c1 .71−.55, c2 0−.30, c4 .66−.60;
    # c3 is tumour-free (left out on both sides), c9 unpaired
    paired = full["paired"]
    assert paired["mean_diff"] == pytest.approx((0.12 + 0.16 - 0.30 + 0.06) / 4)
    assert paired["n_pairs"] == 4 and paired["n_excluded"] == 0
    assert (paired["ci_low"], paired["ci_high"]) == pytest.approx(
        interval([[0.12, 0.16, -0.30, 0.06]], (-1.0, 1.0)))
    assert paired["verdict"] == "1 seed — no verdict" and paired["p_value"] is None
    assert full["gain"]["gain"] == pytest.approx(paired["mean_diff"])  # same volumes
    assert full["dice"]["mean"] == pytest.approx((0.62 + 0.71 + 0 + 0.66) / 4)
    assert full["dice"]["n_false_positive"] == 1 and full["scratch"]["n_false_positive"] == 0
    t2 = next(c for c in tr["cells"] if c["target"] == "t2")
    assert t2["paired"] is None and t2["scratch"] is None
    assert "no scratch run with the same seed" in study["md"]
    assert "1 seed — no verdict" in study["md"]


def test_paired_difference_over_seeds(study: dict) -> None:
    tr = study["report"]["regions"]["wt"]["transfer"]
    cell = next(c for c in tr["cells"] if c["source"] == "t1")
    diff = [np.subtract(a, b).tolist() for a, b in T1_FLAIR.values()]  # (seeds, volumes)
    paired = cell["paired"]
    assert paired["seeds"] == ["0", "1"] and (paired["n_seeds"], paired["n_pairs"]) == (2, 3)
    assert paired["mean_diff"] == pytest.approx(np.mean(diff))
    assert (paired["ci_low"], paired["ci_high"]) == pytest.approx(interval(diff, (-1.0, 1.0)))
    assert paired["ci_low"] > 0 and paired["verdict"] == "transfer better"
    assert paired["holm"] is True and 0 < paired["p_value"] < 0.05
    gains = [logged(study, f"t1_flair{s}")["eval/test/flair/dice"]
             - logged(study, f"scratch_flair{s}")["eval/test/flair/dice"] for s in "01"]
    assert cell["gain"]["gain"] == pytest.approx(np.mean(gains)) == paired["mean_diff"]
    assert cell["dice"]["n_seeds"] == 2 and "2 seeds × 3 vol." in study["md"]
    assert "transfer better" in study["md"] and "exploratory" in study["md"]


def test_table3_with_paper_values(study: dict) -> None:
    t3 = {r["target"]: r for r in study["report"]["regions"]["wt"]["table3"]}
    assert set(t3) == {"t1", "t2"}
    assert t3["t1"]["full"]["mean"] == logged(study, "full")["eval/test/t1/dice"]
    assert t3["t1"]["scratch"]["mean"] == logged(study, "scratch")["eval/test/t1/dice"]
    assert t3["t2"]["paper"]["s_din"] == [0.781, 0.741] and t3["t2"]["full"] is None
    assert "0.781 / 0.741" in study["md"]
    # the paper's control too: the target's full-budget unimodal model (Table II's cell)
    assert t3["t1"]["unimodal"]["mean"] == pytest.approx(np.mean([0.4, 0.5, 0.45, 0.55]))
    assert t3["t2"]["unimodal"] is None and "Unimodal (full budget)" in study["md"]


def test_summary_lines(study: dict) -> None:
    lines = report_summary_lines(study["out"])
    assert lines[0].startswith("runs: 17 finished, 1 failed, 1 skipped")
    assert any(line.startswith("Table I dice: SegAN ") for line in lines)
    assert any(line.startswith("transfer vs scratch") for line in lines)
    assert report_summary_lines(study["path"]) == lines


def test_sparse_and_empty_studies(study: dict, tmp_path: Path) -> None:
    store = study["store"]
    exp = store.experiment("table1-only")
    tags = {"kind": "train", "family": "table1", "modalities": FOUR}
    store.child(exp, "table1/segan-cat", tags, {"flair-t1-t1c-t2": rows([0.8, 0.9])})
    store.child(exp, "table1/segan-cat/tc", {**tags, "region": "tc"},
                {"flair-t1-t1c-t2": rows([0.5, 0.6])})
    md = write_report(store.uri, "table1-only", tmp_path / "a").read_text()
    assert "## Table I — multimodal models — region TC" in md
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert list(report["regions"]) == ["wt", "tc"]
    assert report["regions"]["tc"]["table1"][0]["paper"] is None
    regions = {r["region"]: r for r in report["region_table"]}  # TC beside the paper's WT
    assert regions["tc"]["dice"]["mean"] == pytest.approx(0.55) and regions["tc"]["paper"] is None
    assert regions["wt"]["paper"]["2015"][0] == 0.859
    assert "## Regions — multimodal SegAN-CAT per BraTS region" in md
    assert "| TC | 0.550 [" in md and "| WT | 0.850 [" in md
    for line in ("No finished unimodal SegAN-CAT runs.", "No finished transfer runs.",
                 "No finished cross-modality evaluation runs.",
                 "No finished transfers from FLAIR."):
        assert line in md
    assert not [p for p in (tmp_path / "a").glob("*.png") if not p.name.startswith("volumes_")]
    store.experiment("empty")
    md = write_report(store.uri, "empty", tmp_path / "b").read_text()
    assert "No finished multimodal training runs." in md
    assert report_summary_lines(tmp_path / "b")[0].startswith("runs: 0 finished")
    with pytest.raises(UserError, match="not-there"):
        write_report(store.uri, "not-there", tmp_path / "c")

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
from core.metrics import summarize
from study.report import report_summary_lines, write_report
from study.report_stats import seed_interval
from study.tracking import Tracker
from study.trainable import eval_summary

NAN = math.nan
FOUR = "flair,t1,t1c,t2"


def rows(dice: list[float], cases: list[str] | None = None) -> list[dict]:
    """Per-volume rows: precision = dice + 0.05 and sensitivity = dice − 0.05 (NaN stays NaN)."""
    cases = cases or [f"c{i}" for i in range(len(dice))]
    return [{"case_id": c, "tp": 10, "fp": 2, "fn": 3, "tn": 100, "dice": d,
             "precision": d + 0.05, "sensitivity": d - 0.05, "specificity": 0.99}
            for c, d in zip(cases, dice, strict=True)]


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
              extra: dict[str, float] | None = None) -> str:
        """A child run with the schema's tags, test metrics from ``per_volume``, the artifact."""
        base = {"role": "trial", "mlflow.parentRunId": exp[1], "trial_id": name, "grid": "test",
                "budget": "smoke", "store_id": "s1", "code_version": "abc123",
                "eval_split": "test", "region": "wt", "seed": "0", "variant": "segan-cat",
                "freeze": "scratch", "stage": "1"}
        tracker = Tracker(self.uri, self.client.get_experiment(exp[0]).name)
        tracker.parent_id = exp[1]
        spec = SimpleNamespace(name=name, config={"data": {"modalities": tags.get("modalities")}},
                               eval_modalities=())
        run_id = tracker.open_trial_run(spec, {**base, **tags, "mlflow.runName": name}, None)
        if per_volume is not None:
            tracker.log_metrics(run_id, {**logged_metrics(per_volume), **(extra or {})}, step=1)
            tracker.log_json(run_id, per_volume, "per_volume.json")
        tracker.finish(run_id, status)
        return run_id


FLAIR_S0, FLAIR_S1 = [0.8, 0.7, 0.9, 0.6], [0.7, 0.75, 0.85, 0.65]
FULL = rows([0.62, 0.71, NAN, 0.70, 0.66])
SCRATCH = rows([0.60, 0.30, NAN, 0.55, 0.50, 0.9], ["c4", "c2", "c3", "c1", "c0", "c9"])


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = Store(tmp_path_factory.mktemp("mlflow"))
    exp = store.experiment("full")
    ids: dict[str, str] = {}
    train = {"kind": "train"}
    for variant, dice in (("segan", [0.6, 0.7, 0.8, NAN]), ("segan-dice", [0.7, 0.75, 0.8, 0.85]),
                          ("segan-cat", [0.8, 0.85, 0.9, NAN])):
        tags = {**train, "family": "table1", "variant": variant, "modalities": FOUR}
        ids[variant] = store.child(exp, f"table1/{variant}", tags, {"flair-t1-t1c-t2": rows(dice)})
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
    for seed, a, b in (("0", [0.5, 0.6, 0.7], [0.4, 0.45, 0.65]),
                       ("1", [0.55, NAN, 0.65], [0.45, 0.5, NAN])):
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


def test_table1_numbers_equal_mlflow(study: dict) -> None:
    rows1 = {r["variant"]: r for r in study["report"]["regions"]["wt"]["table1"]}
    assert list(rows1) == ["segan", "segan-dice", "segan-cat"]
    for variant, row in rows1.items():
        m = logged(study, variant)
        for name in ("dice", "precision", "sensitivity"):
            cell = row[name]
            assert cell["mean"] == m[f"eval/test/flair-t1-t1c-t2/{name}"]
            key = f"eval/test/flair-t1-t1c-t2/{name}"
            ci = (m[f"{key}_ci_low"], m[f"{key}_ci_high"])
            assert (cell["ci_low"], cell["ci_high"]) == ci
            assert cell["n_seeds"] == 1 and cell["seed_ci_low"] is None
    cat = rows1["segan-cat"]["dice"]
    assert (cat["n_excluded"], cat["n_volumes"]) == (1, 3)
    assert rows1["segan-cat"]["paper"]["2015"] == [0.859, 0.882, 0.852]
    excluded = study["report"]["regions"]["wt"]["excluded"]["table1"]
    assert excluded == {"n_excluded": 2, "n_volumes": 10, "n_cells": 3}
    assert "| SegAN-CAT | 0.850 [" in study["md"] and "0.859 / 0.882 / 0.852" in study["md"]


def test_table2_aggregates_seeds(study: dict) -> None:
    table2 = {r["modality"]: r for r in study["report"]["regions"]["wt"]["table2"]}
    assert list(table2) == ["t1", "flair"]  # the paper's order
    flair = table2["flair"]["dice"]
    means = [logged(study, "flair0")["eval/test/flair/dice"], logged(study, "flair1")["eval/test/flair/dice"]]
    assert flair["n_seeds"] == 2 and flair["mean"] == pytest.approx(np.mean(means))
    assert (flair["seed_ci_low"], flair["seed_ci_high"]) == pytest.approx(seed_interval(means))
    per_volume = summarize((np.array(FLAIR_S0) + np.array(FLAIR_S1)) / 2)
    expected = (per_volume.ci_low, per_volume.ci_high)
    assert (flair["ci_low"], flair["ci_high"]) == pytest.approx(expected)
    t1 = table2["t1"]
    assert t1["dice"]["mean"] == logged(study, "t1")["eval/test/t1/dice"]
    assert t1["paper"] == [0.538, 0.542]
    assert "2 seeds" in study["md"] and "1 seed" in study["md"]


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
    # by case_id: c0 .62−.50, c1 .71−.55, c4 .66−.60; c2, c3 undefined on one side; c9 unpaired
    assert full["paired"]["mean_diff"] == pytest.approx((0.12 + 0.16 + 0.06) / 3)
    assert full["paired"]["n_pairs"] == 3 and full["paired"]["n_excluded"] == 2
    assert full["paired"]["ci_low"] <= full["paired"]["mean_diff"] <= full["paired"]["ci_high"]
    gain = logged(study, "full")["eval/test/t1/dice"] - logged(study, "scratch")["eval/test/t1/dice"]
    assert full["gain"]["gain"] == pytest.approx(gain)
    t2 = next(c for c in tr["cells"] if c["target"] == "t2")
    assert t2["paired"] is None and t2["scratch"] is None
    assert "no scratch run with the same seed" in study["md"]


def test_paired_difference_over_seeds(study: dict) -> None:
    tr = study["report"]["regions"]["wt"]["transfer"]
    cell = next(c for c in tr["cells"] if c["source"] == "t1")
    # per seed, volumes where both are defined (seed 1: only c0); then averaged over seeds
    a = [(0.5 + 0.55) / 2, 0.6, 0.7]
    b = [(0.4 + 0.45) / 2, 0.45, 0.65]
    paired = cell["paired"]
    assert paired["seeds"] == ["0", "1"] and paired["n_pairs"] == 3
    assert paired["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    gains = [logged(study, f"t1_flair{s}")["eval/test/flair/dice"]
             - logged(study, f"scratch_flair{s}")["eval/test/flair/dice"] for s in "01"]
    assert cell["gain"]["gain"] == pytest.approx(np.mean(gains))
    ci = (cell["gain"]["seed_ci_low"], cell["gain"]["seed_ci_high"])
    assert ci == pytest.approx(seed_interval(gains))
    assert cell["dice"]["n_seeds"] == 2 and "2 seeds" in study["md"]


def test_table3_with_paper_values(study: dict) -> None:
    t3 = {r["target"]: r for r in study["report"]["regions"]["wt"]["table3"]}
    assert set(t3) == {"t1", "t2"}
    assert t3["t1"]["full"]["mean"] == logged(study, "full")["eval/test/t1/dice"]
    assert t3["t1"]["scratch"]["mean"] == logged(study, "scratch")["eval/test/t1/dice"]
    assert t3["t2"]["paper"]["s_din"] == [0.781, 0.741] and t3["t2"]["full"] is None
    assert "0.781 / 0.741" in study["md"]


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
    for line in ("No finished unimodal SegAN-CAT runs.", "No finished transfer runs.",
                 "No finished cross-modality evaluation runs.",
                 "No finished transfers from FLAIR."):
        assert line in md
    assert not list((tmp_path / "a").glob("*.png"))
    store.experiment("empty")
    md = write_report(store.uri, "empty", tmp_path / "b").read_text()
    assert "No finished multimodal training runs." in md
    assert report_summary_lines(tmp_path / "b")[0].startswith("runs: 0 finished")
    with pytest.raises(UserError, match="not-there"):
        write_report(store.uri, "not-there", tmp_path / "c")

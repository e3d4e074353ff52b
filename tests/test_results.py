"""What a study leaves to work with, on a tiny real study (tests/tiny_study.py): the
results CSV, the MLflow records of a finished cell (one dice column for every run, strict
per_volume.json, the dataset input), the experiment marked as model training, and no
empty parent run for an invocation that did nothing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import run_study
from tests.tiny_study import TinyStudy, build_tiny_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    return build_tiny_study(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def client(tiny: TinyStudy):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tiny.tracking_uri)


def test_results_csv_has_one_row_per_cell_with_its_run_checkpoint_and_dice(
        tiny: TinyStudy, client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from study.results_csv import COLUMNS, write_results_csv

    path = write_results_csv(tiny.tracking_uri, tiny.experiment, tmp_path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    assert len(rows) == 1
    row, metrics = rows[0], client.get_run(tiny.run_id).data.metrics
    assert (row["name"], row["run_id"], row["trial_id"]) == (tiny.cell, tiny.run_id, tiny.trial_id)
    assert Path(row["checkpoint"]) == tiny.checkpoint
    assert (row["split"], row["eval_set"], row["kind"], row["seed"]) == ("test", "flair", "train", "0")
    assert float(row["dice"]) == metrics["eval/test/flair/dice"]
    assert float(row["dice_ci_low"]) <= float(row["dice"]) <= float(row["dice_ci_high"])
    assert int(row["n_volumes"]) == metrics["eval/test/flair/n_volumes"] >= 1
    assert float(row["val_best_dice"]) == metrics["val/best_dice"]


def test_report_command_writes_the_csv_beside_the_report(tiny: TinyStudy) -> None:
    assert run_study.main(["report", "--study", str(tiny.study_dir)]) == 0
    assert (tiny.study_dir / "report" / "results.csv").read_text().count("\n") == 2


def test_a_finished_cell_has_a_common_dice_column_strict_json_and_its_dataset(
        tiny: TinyStudy, client) -> None:  # type: ignore[no-untyped-def]
    import mlflow.artifacts

    from core.data.store import BratsStore

    run = client.get_run(tiny.run_id)
    assert run.data.metrics["eval/test/dice"] == run.data.metrics["eval/test/flair/dice"]
    path = mlflow.artifacts.download_artifacts(run_id=tiny.run_id, artifact_path="per_volume.json",
                                               tracking_uri=tiny.tracking_uri)
    rows = json.loads(Path(path).read_text(),
                      parse_constant=lambda c: pytest.fail(f"bare {c} in per_volume.json"))
    assert rows["flair"] and all("case_id" in r for r in rows["flair"])
    (dataset_input,) = run.inputs.dataset_inputs
    manifest = BratsStore(tiny.store).manifest
    assert dataset_input.dataset.digest == manifest["store_id"]
    assert json.loads(dataset_input.dataset.source)["uri"] == str(tiny.store)
    profile = json.loads(dataset_input.dataset.profile)
    assert profile["total"] == 6 and profile["cases"]["test"] >= 1
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


def test_experiment_is_marked_as_model_training(tiny: TinyStudy, client) -> None:  # type: ignore[no-untyped-def]
    from study.mlflow_meta import mark_training_experiment, open_runs_view, runs_url

    exp = client.get_experiment_by_name(tiny.experiment)
    mark_training_experiment(client, exp.experiment_id)
    mark_training_experiment(client, exp.experiment_id)  # idempotent
    tags = client.get_experiment(exp.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert open_runs_view(tiny.tracking_uri, tiny.experiment, "http://127.0.0.1:5001") == \
        f"http://127.0.0.1:5001/#/experiments/{exp.experiment_id}/runs"
    assert runs_url(tiny.tracking_uri, exp.experiment_id) == \
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
    assert runs_url("http://mlflow:5000/", "7") == "http://mlflow:5000/#/experiments/7/runs"


def test_an_invocation_that_did_nothing_leaves_no_parent_run(tiny: TinyStudy, client) -> None:  # type: ignore[no-untyped-def]
    from study.mlflow_meta import drop_idle_parent
    from study.tracking import Tracker

    tracker = Tracker(tiny.tracking_uri, tiny.experiment)
    idle = tracker.start_parent("nothing to do", {"grid": "smoke"}, {"grid": "smoke"})
    tracker.end_parent("FINISHED", {"done": 1})
    assert drop_idle_parent(tracker)
    assert client.get_run(idle).info.lifecycle_stage == "deleted"
    busy = client.get_run(tiny.run_id).data.tags["mlflow.parentRunId"]
    tracker.parent_id = busy
    assert not drop_idle_parent(tracker)
    assert client.get_run(busy).info.lifecycle_stage == "active"


def test_strict_json_keeps_undefined_and_infinite_apart() -> None:
    from study.mlflow_meta import strict_json

    rows = {"flair": [{"case_id": "a", "dice": math.nan, "hd95": math.inf, "tp": 3}]}
    out = strict_json(rows)
    json.dumps(out, allow_nan=False)
    assert out == {"flair": [{"case_id": "a", "dice": None, "hd95": "inf", "tp": 3}]}

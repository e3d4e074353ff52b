"""The console around the results: every default in --help, trial counts in --list-grids,
an ETA in the progress lines, one dice column name for every cell."""

from __future__ import annotations

import pytest

import run_study


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        run_study.main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    study = _help(capsys, "study")
    for shown in ("(default: transfer_all)", "(default: 1.0)", "(default: 0)", "(default: 1)",
                  "(default: studies/<grid>)", "(default: start Ray on this machine)"):
        assert shown in study, shown
    assert "(default: None)" not in study and "(default: False)" not in study
    predict = _help(capsys, "predict")
    assert predict.count("(default: auto)") == 1 and "MLFLOW_TRACKING_URI" in predict
    assert "--cell NAME" in predict and "--study DIR" in predict
    evaluate = _help(capsys, "evaluate")
    assert "(default: wt)" in evaluate and "(default: 0.5)" in evaluate
    export = _help(capsys, "export")
    assert "--best" in export and "model card" in export
    ui = _help(capsys, "ui")
    assert "(default: 5000)" in ui and "Start `mlflow ui`" in ui


def test_list_grids_counts_trials(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_study.main(["--list-grids"]) == 0
    out = capsys.readouterr().out
    assert "transfer_all     63 trials: 7 train, 52 transfer, 4 evaluate" in out
    assert "smoke            10 trials: 2 train, 6 transfer, 2 evaluate" in out
    assert "hpo              search: 8 samples" in out


def test_progress_lines_have_an_eta() -> None:
    from study.callbacks import study_eta, trial_eta

    cell = {"config": {"train": {"max_epochs": 10, "max_seconds": 0}}}
    assert trial_eta(cell, {"epoch": 2}, 120.0) == ", epoch cap 10, ≤ 8.0 min left"
    capped = {"config": {"train": {"max_epochs": 10, "max_seconds": 300}}}
    assert trial_eta(capped, {"epoch": 2}, 120.0) == ", epoch cap 10, ≤ 3.0 min left"
    assert trial_eta(cell, {"epoch": 10}, 600.0) == ""
    # resumed after epoch 5: 2 epochs in the 120 s since; the time cap counts the whole trial
    assert trial_eta(cell, {"epoch": 7}, 120.0, epochs_before=5) == ", epoch cap 10, ≤ 3.0 min left"
    assert trial_eta(capped, {"epoch": 7, "time/trial_s": 240.0}, 120.0, 5) == \
        ", epoch cap 10, ≤ 1.0 min left"
    assert trial_eta(cell, {"epoch": 5}, 1.0, epochs_before=5) == ""
    assert study_eta(600.0, 2, 4) == " | 10.0 min, ETA ~20.0 min"
    assert study_eta(600.0, 2, 0) == " | 10.0 min"
    assert study_eta(5.0, 0, 4) == ""


def test_every_cell_gets_the_same_dice_column() -> None:
    from study.mlflow_meta import summary_columns

    own = {"eval_split": "test", "config": {"data": {"modalities": ["flair"]}}}
    metrics = {f"eval/test/{k}/dice": v for k, v in (("flair", 0.8), ("t1", 0.3))}
    metrics["eval/test/flair/dice_ci_low"] = 0.7
    assert summary_columns(own, metrics) == {"eval/test/dice": 0.8, "eval/test/dice_ci_low": 0.7}
    transfer = {"eval_split": "val", "config": {"data": {"modalities": ["t2"]}}}
    assert summary_columns(transfer, {"eval/val/t2/dice": 0.5}) == {"eval/val/dice": 0.5}
    assert summary_columns(transfer, {}) == {}


def test_best_so_far_ranks_by_validation_among_comparable_cells_only() -> None:
    from study.callbacks import StudyCallback

    def cell(name: str, mods: list[str], region: str = "wt", kind: str = "train") -> dict:
        return {"name": name, "kind": kind, "config": {"data": {"modalities": mods, "region": region}}}

    cb = StudyCallback(tracker=None, total=4, done_before=0, label="study")  # type: ignore[arg-type]
    cb.rank(cell("four", ["flair", "t1", "t1c", "t2"]), {"val/best_dice": 0.9,
                                                       "eval/test/flair-t1-t1c-t2/dice": 0.1})
    cb.rank(cell("t1", ["t1"]), {"val/best_dice": 0.5, "eval/test/t1/dice": 0.99})
    cb.rank(cell("t1-worse", ["t1"]), {"val/best_dice": 0.4})
    cb.rank(cell("t1-as-flair", ["t1"], kind="evaluate"), {"val/best_dice": 0.95})
    cb.rank(cell("t1-tc", ["t1"], region="tc"), {"val/best_dice": 0.7})
    assert cb.best == {("flair,t1,t1c,t2", "wt"): (0.9, "four"), ("t1", "wt"): (0.5, "t1"),
                       ("t1", "tc"): (0.7, "t1-tc")}

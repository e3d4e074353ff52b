"""The paper figures of a real (tiny) study: one cell trained by core's ``fit`` and
recorded by the study's tracker and Tune callback (``tests/tiny_study.py``); the report's
learning curves are the checkpoint's own history, read back from MLflow."""

from __future__ import annotations

import json

import pytest

import run_study
from tests.tiny_study import TinyStudy, build_tiny_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    return build_tiny_study(tmp_path_factory.mktemp("tiny"))


def test_report_command_draws_the_figures_of_a_trained_cell(tiny: TinyStudy) -> None:
    from core.checkpoint import LAST, load_checkpoint

    assert run_study.main(["report", "--study", str(tiny.study_dir)]) == 0
    out = tiny.study_dir / "report"
    report = json.loads((out / "report.json").read_text())
    family, label = tiny.cell.split("/")[0], "segan-cat/flair/wt"
    (curve,) = report["curves"][family]
    assert curve["cell"] == label and list(curve["seeds"]) == ["0"]
    history = load_checkpoint(tiny.checkpoint.with_name(LAST))["history"]  # every epoch
    assert history
    for key in ("val/dice", "train/loss_s", "train/loss_d"):
        assert curve["seeds"]["0"][key] == {"epoch": [int(h["epoch"]) for h in history],
                                            "value": pytest.approx([h[key] for h in history])}
    (dist,) = report["distributions"][family]
    assert dist["cell"] == label and dist["n"] == len(dist["dice"][0]) >= 1
    md = (out / "report.md").read_text()
    for name in (f"volumes_{family}.png", f"curves_{family}.png"):
        assert f"]({name})" in md and (out / name).stat().st_size > 1000, name

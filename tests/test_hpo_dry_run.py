"""`--grid hpo --dry-run` prints the checked search space beside the trials (seconds: a
six-case store, no Ray, no MLflow, no training); `prepare --help` shows its defaults the
way the study's subcommands do."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import run_study
from core.errors import ConfigError
from study.grids import ExpandContext, expand
from study.hpo import asha_epochs, describe_space


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.data.prepare import prepare
    from core.data.preprocess import PreprocessParams
    from core.data.synthetic import write_synthetic_brats

    root = tmp_path_factory.mktemp("hpo-dry")
    raw = write_synthetic_brats(root / "raw", n_cases=6, shape=(40, 40, 20))
    prepare(raw, root / "store.zarr", PreprocessParams(crop=(32, 32, 16)), val_fraction=0.25,
            test_fraction=0.2, log=lambda _: None)
    return root / "store.zarr"


def test_the_dry_run_prints_the_space_and_the_sample_count(
        capsys: pytest.CaptureFixture[str], store: Path) -> None:
    assert run_study.main(["--grid", "hpo", "--dry-run", "--data", str(store)]) == 0
    out = capsys.readouterr().out
    plan, space = out.split("search space", 1)
    assert "hpo/segan-cat/flair+t1+t1c+t2/wt/seed0" in plan  # the trials, then the space
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in space.splitlines()[2:]
            if line.startswith("  ")}
    assert rows["optim.lr_s"] == ["loguniform", "[1e-05, 0.003]"]
    assert rows["loss.dice_weight"] == ["uniform", "[0.0, 2.0]"]
    assert rows["loss.l1_mode"] == ["choice", "{per_layer, global}"]
    assert rows["data.batch_size"] == ["choice", "{8, 16, 32}"]
    assert len(rows) == 6
    assert "samples: 8 (Optuna TPE, maximising val/best_dice)" in space

    assert run_study.main(["--grid", "hpo", "--dry-run", "--data", str(store),
                           "--num-samples", "3"]) == 0
    assert "samples: 3 " in capsys.readouterr().out


def test_a_space_the_base_cell_rejects_fails_before_anything_runs(store: Path) -> None:
    grid = expand("hpo", ExpandContext("demo", str(store), "s", (0,)))
    max_t, grace = asha_epochs(grid.trials[0])
    assert max_t == int(grid.trials[0].config["train"]["max_epochs"]) + 1 and grace >= 1
    assert f"from epoch {grace} (max_t {max_t}" in describe_space(grid)[-1]
    bad = dataclasses.replace(grid, search={"space": {
        "loss.l1_mode": {"type": "choice", "values": ["global", "sideways"]}}})
    with pytest.raises(ConfigError, match="search.space.loss.l1_mode"):
        describe_space(bad)
    unknown = dataclasses.replace(grid, search={"space": {"optim.nope": {
        "type": "uniform", "low": 0, "high": 1}}})
    with pytest.raises(ConfigError, match="optim.nope"):
        describe_space(unknown)


def test_prepare_help_shows_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run_study.main(["prepare", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("X,Y,Z crop size (default: 180,180,128)", "(default: 0.2)", "(default: 0.15)",
                  "split seed (default: 0)", "parallel processes (default: min(4, CPUs))"):
        assert text.count(shown) == 1, shown
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(180, 180, 128)" not in text

"""`run_study.py resume --study DIR`: the study continues from its folder alone.

The first invocation records its flags (normalized: absolute paths, the resolved budget,
tracking store and experiment) in ``study.json``; ``resume`` replays them from any folder,
runs exactly the cells the first invocation named (same trial ids) and gives no cell a
second MLflow run. Fault drills (``--inject-failure``) are not recorded.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import run_study
from study.grids import ExpandContext, expand
from study.session import StudyOptions, recorded_invocation

FAILING_SOURCE = "unimodal/segan-cat/t1/"


def _runs(study_dir: Path):
    from mlflow.tracking import MlflowClient

    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    exp = client.get_experiment_by_name(meta["experiment"])
    return client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)


def test_invocation_round_trips_through_the_parser(tmp_path):
    """What study.json records parses back to the same identity-affecting options."""
    from study.cli import register

    overlay = tmp_path / "o.yaml"
    overlay.write_text("{}\n")
    args = run_study.build_parser("study").parse_args(
        ["study", "--grid", "smoke", "--seeds", "3,4", "--set", "train.max_epochs=1",
         "--overlay", str(overlay), "--inject-failure", "flair", "--no-report"])
    options = StudyOptions.from_args(args)
    grid = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (3, 4)))
    argv = options.invocation(grid, tmp_path / "st", "/s.zarr", "sqlite:///x.db", "exp")
    assert "--inject-failure" not in argv
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    replayed = StudyOptions.from_args(parser.parse_args(["study", *argv]))
    assert replayed.seeds == (3, 4) and dict(replayed.overrides) == {"train.max_epochs": "1"}
    assert replayed.overlays == (overlay.resolve(),) and replayed.budget == "smoke"
    assert replayed.study_dir == tmp_path / "st" and replayed.data == "/s.zarr"
    assert (replayed.tracking_uri, replayed.experiment) == ("sqlite:///x.db", "exp")
    assert not replayed.report and replayed.resources.inject_failure == ""


def test_resume_refuses_a_folder_without_a_record(tmp_path, capsys):
    assert run_study.main(["resume", "--study", str(tmp_path)]) == 2
    (tmp_path / "study.json").write_text(json.dumps({"tracking_uri": "x", "experiment": "y"}))
    with pytest.raises(Exception, match="records no invocation"):
        recorded_invocation(tmp_path)
    assert run_study.main(["resume", "--study", str(tmp_path)]) == 2
    assert "re-run the study's original command" in capsys.readouterr().err


GRID = """\
budget: smoke
seeds: [0]
families:
  unimodal:
    kind: train
    axes:
      variant: [segan-cat]
      modalities: [flair, t1]
  transfer:
    kind: transfer
    source_family: unimodal
    axes:
      source: [t1]
      target: [flair]
      freeze: [full]
"""


@pytest.mark.slow
def test_resume_finishes_the_same_cells(tmp_path, synthetic_store, ray_session, capsys,
                                        monkeypatch):
    """A grid file and a study folder named relative to the first invocation's folder, a
    failed source (its transfer skipped); ``resume`` from elsewhere finishes the same cells."""
    from core.data.store import BratsStore

    (tmp_path / "g.yaml").write_text(GRID)
    monkeypatch.chdir(tmp_path)
    study_dir = tmp_path / "study"
    flags = ["--seeds", "1", "--set", "train.max_epochs=1", "--set", "data.slices_per_epoch=16"]
    rc = run_study.main(["--grid", "g.yaml", "--study-dir", "study", "--data",
                         str(synthetic_store), *flags, "--inject-failure", FAILING_SOURCE,
                         "--max-failures", "0", "--no-report"])
    assert rc == 1
    out = capsys.readouterr().out
    assert f"python run_study.py resume --study {study_dir.resolve()}" in out
    first = {r.data.tags["trial_id"]: r for r in _runs(study_dir)}
    finished_before = {t: r.info.run_id for t, r in first.items() if r.info.status == "FINISHED"}
    assert len(first) == 3 and len(finished_before) == 1
    recorded = json.loads((study_dir / "study.json").read_text())["invocation"]
    assert "--inject-failure" not in recorded and "train.max_epochs=1" in recorded

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the record is absolute: any folder will do
    assert run_study.main(["resume", "--study", str(study_dir)]) == 0
    assert "resuming: python run_study.py --grid " in capsys.readouterr().out
    sid = BratsStore(synthetic_store).manifest["store_id"]
    grid = expand(str(tmp_path / "g.yaml"), ExpandContext(
        "smoke", str(synthetic_store), sid, (1,), (),
        {"train.max_epochs": "1", "data.slices_per_epoch": "16"}))
    runs = _runs(study_dir)
    counts = Counter(r.data.tags["trial_id"] for r in runs)
    assert set(counts) == {t.trial_id for t in grid.trials} == set(first)
    assert all(n == 1 for n in counts.values()), counts
    assert all(r.info.status == "FINISHED" for r in runs)
    after = {r.data.tags["trial_id"]: r.info.run_id for r in runs}
    assert all(after[t] == run_id for t, run_id in finished_before.items())
    assert all(r.data.tags["seed"] == "1" for r in runs)
    assert not (tmp_path / "elsewhere" / "studies").exists()

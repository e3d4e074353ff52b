"""A tiny real study folder for the export, predict-by-cell and results tests (seconds).

Six synthetic BraTS cases (40x40x20 NIfTI) are prepared into a store (crop 32x32x16), the
`smoke` grid is expanded on it, and its FLAIR cell is trained by core's ``fit`` (two steps),
evaluated on the test split, and recorded by the study's own MLflow tracker and Tune
callback (``StudyCallback._final``), into a SQLite store inside the study folder — the same
records a `run_study.py --grid smoke` run leaves, without starting Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CELL = "unimodal/segan-cat/flair/wt/seed0"


@dataclass(frozen=True)
class TinyStudy:
    study_dir: Path
    tracking_uri: str
    experiment: str
    store: Path
    cell: str
    trial_id: str
    run_id: str
    checkpoint: Path
    case: Path
    """One raw case folder (NIfTI files in BraTS 2018 naming) to predict."""


def _store(root: Path) -> tuple[Path, Path]:
    from core.data.prepare import prepare
    from core.data.preprocess import PreprocessParams
    from core.data.synthetic import write_synthetic_brats

    raw = write_synthetic_brats(root / "raw", n_cases=6, shape=(40, 40, 20))
    store = root / "store.zarr"
    prepare(raw, store, PreprocessParams(crop=(32, 32, 16)), val_fraction=0.25,
            test_fraction=0.2, log=lambda _: None)
    return raw, store


def build_tiny_study(root: Path) -> TinyStudy:
    from core.atomic import write_text
    from core.checkpoint import load_checkpoint
    from core.config import from_dict
    from core.data.store import BratsStore
    from core.trainer import fit
    from study.callbacks import StudyCallback
    from study.grids import ExpandContext, expand
    from study.runner import run_tag_values
    from study.tracking import Tracker, default_tracking_uri
    from study.trainable import FINAL_KEY, eval_metrics

    raw, store = _store(root)
    store_id = BratsStore(store).manifest["store_id"]
    grid = expand("smoke", ExpandContext("smoke", str(store), store_id, (0,)))
    spec = next(t for t in grid.trials if t.name == CELL)
    study_dir = root / "study"
    study_dir.mkdir()
    uri, experiment = default_tracking_uri(study_dir), "study-smoke"
    write_text(study_dir / "study.json", json.dumps(
        {"tracking_uri": uri, "experiment": experiment, "grid": "smoke", "budget": "smoke",
         "data": str(store), "store_id": store_id}))
    tracker = Tracker(uri, experiment, artifact_root=study_dir / "mlartifacts")
    tracker.start_parent("smoke test", {"grid": "smoke"}, {"grid": "smoke", "data": str(store)})
    context = {"budget": "smoke", "store_id": store_id, "code_version": "test",
               "eval_split": "test"}
    run_id = tracker.open_trial_run(spec, run_tag_values(grid, spec, context), None)
    trial_dir = study_dir / "trials" / spec.trial_id
    trial_dir.mkdir(parents=True)
    write_text(trial_dir / "cell.json", json.dumps(
        {"name": spec.name, "trial_id": spec.trial_id, "kind": spec.kind, "budget": "smoke",
         "sampled": None, "config": spec.config}))
    cfg = from_dict(spec.config).replace({"train.max_epochs": 1, "train.max_steps": 2,
                                          "train.device": "cpu"})
    result = fit(cfg, trial_dir, provenance={"budget": "smoke", "cell": spec.name,
                                             "trial_id": spec.trial_id})
    for epoch in result.history:  # what the callback logs per epoch (on_trial_result)
        tracker.log_metrics(run_id, {k: v for k, v in epoch.items() if "/" in k},
                            step=int(epoch["epoch"]))
    state = load_checkpoint(result.best_path)
    test, rows = eval_metrics(state, str(store), list(spec.eval_modalities), "test", "cpu")
    final = {"val/best_dice": result.best_score, "epoch": result.epochs,
             "best/epoch": result.best_epoch, "train/epochs": result.epochs,
             "train/steps": result.steps, **test, "per_volume": json.dumps(rows),
             "tags": json.dumps({"best_checkpoint": str(result.best_path)}), FINAL_KEY: 1}
    cell = {"trial_id": spec.trial_id, "name": spec.name, "kind": spec.kind,
            "config": spec.config, "eval_split": "test"}
    StudyCallback(tracker, 1, 0, "study")._final(cell, run_id, final)
    tracker.finish(run_id, "FINISHED")
    tracker.end_parent("FINISHED", {"done": 1})
    case = next(p for p in sorted((raw / "HGG").iterdir()) if p.is_dir())
    return TinyStudy(study_dir, uri, experiment, store, spec.name, spec.trial_id, run_id,
                     result.best_path, case)


ONE_CELL_GRID = """\
budget: smoke
seeds: [0]
families:
  one:
    kind: train
    axes:
      modalities: [flair]
"""
"""A grid of one FLAIR cell (fault drills write it into their study folder)."""

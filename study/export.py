"""``export``: a cell's best model as a folder or zip a colleague can use without the
study — ``best.pt`` (the checkpoint, unchanged: ``predict --checkpoint`` takes it) and a
model card (``model_card.md``, ``model_card.json``) — also logged to the cell's MLflow run
(artifacts ``export/`` and an MLflow PyTorch model).

    run_study.py export --study studies/unimodal --cell unimodal/segan-cat/flair/wt/seed0 --out flair.zip
    run_study.py export --study studies/unimodal --best --out best_model/

The command line is in ``study/cli.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import CheckpointError, UserError


@dataclass(frozen=True)
class ExportSource:
    name: str
    trial_id: str
    kind: str
    checkpoint: Path
    run: Any
    """The cell's MLflow run (None when the tracking store has none)."""


def export_command(study: Path, cell: str | None, out: Path, *, tracking_uri: str | None = None,
                   log: bool = True, register: str | None = None, force: bool = False) -> int:
    """``export``: ``cell`` (a name) or, when None, the best cell by validation dice."""
    from study.cells import read_study

    study_dir = study.resolve()
    meta = read_study(study_dir)
    uri = tracking_uri or str(meta["tracking_uri"])
    experiment = str(meta["experiment"])
    out = out.resolve()
    _check_out(out, force)
    source = (cell_source(study_dir, uri, experiment, cell) if cell is not None
              else best_source(uri, experiment))
    result = export_model(source, out, uri, experiment, log=log, register=register)
    print(f"exported {source.name} -> {out}")
    for key, value in result.items():
        print(f"  {key}: {value}")
    print(f"use it:\n  python run_study.py predict --checkpoint "
          f"{'<unzipped>/' if out.suffix == '.zip' else str(out) + '/'}best.pt "
          f"--input CASE_DIR --out mask.nii.gz")
    return 0


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and (out.is_file() or any(out.iterdir())):
        if not force:
            raise UserError(f"--out {out} exists; pass --force to replace it")
        shutil.rmtree(out) if out.is_dir() else out.unlink()


def cell_source(study_dir: Path, uri: str, experiment: str, name: str) -> ExportSource:
    """The cell called ``name`` (its ``cell.json``) and its MLflow run."""
    from study.cells import find_cell
    from study.mlflow_results import cell_run

    cell = find_cell(study_dir, name)
    if cell.kind == "evaluate":
        raise UserError(f"cell {cell.name} evaluates another cell's checkpoint "
                        f"({cell.checkpoint}); export that cell instead")
    return ExportSource(cell.name, cell.trial_id, cell.kind, cell.checkpoint,
                        cell_run(uri, experiment, cell.trial_id))


def best_source(uri: str, experiment: str) -> ExportSource:
    """The finished cell with the highest validation dice."""
    from study.mlflow_results import best_run

    run = best_run(uri, experiment)
    tags = run.data.tags
    print(f"best by validation dice: {run.info.run_name} "
          f"(val/best_dice {run.data.metrics['val/best_dice']:.3f})", file=sys.stderr)
    return ExportSource(run.info.run_name or run.info.run_id, tags.get("trial_id", ""),
                        tags.get("kind", ""), Path(tags["best_checkpoint"]), run)


def export_model(source: ExportSource, out: Path, uri: str, experiment: str, *,
                 log: bool = True, register: str | None = None) -> dict[str, str]:
    """Write the export to ``out`` (a folder, or a zip when it ends in .zip) and log it to
    the cell's run; returns what was written and logged."""
    from core.checkpoint import load_checkpoint
    from study.mlflow_results import log_export, run_metrics

    if not source.checkpoint.is_file():
        raise CheckpointError(f"cell {source.name}: no checkpoint at {source.checkpoint}")
    state = load_checkpoint(source.checkpoint)
    run = source.run
    cell = {"name": source.name, "trial_id": source.trial_id, "kind": source.kind,
            "run_id": run.info.run_id if run else None, "experiment": experiment,
            "tags": dict(run.data.tags) if run else {}}
    metrics = run_metrics(run) if run else None
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        folder = Path(tmp) / "export"
        write_export_folder(folder, source.checkpoint, state, cell, metrics)
        done = {"checkpoint": "best.pt", "card": "model_card.md, model_card.json"}
        if log and run is not None:
            done.update(log_export(uri, run.info.run_id, folder, state,
                                   json.loads((folder / "model_card.json").read_text()), register))
        elif log:
            done["mlflow"] = f"not logged: no MLflow run of {source.name} at {uri}"
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".zip":
            shutil.make_archive(str(out.with_suffix("")), "zip", folder)
        else:
            shutil.copytree(folder, out, dirs_exist_ok=True)
    return done


def write_export_folder(folder: Path, checkpoint: Path, state: dict[str, Any],
                        cell: dict[str, Any], metrics: dict[str, Any] | None) -> dict[str, Any]:
    """``best.pt`` (a byte copy), ``model_card.json`` and ``model_card.md`` in ``folder``."""
    from core.evaluation.mask_files import json_safe
    from study.model_card import build_card, card_markdown

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, folder / "best.pt")
    card = json_safe(build_card(state, folder / "best.pt", cell, metrics))
    (folder / "model_card.json").write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    (folder / "model_card.md").write_text(card_markdown(card))
    return card

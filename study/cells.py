"""A study folder's cells on disk: ``study.json`` and ``trials/<trial_id>/cell.json``.

No MLflow here: ``predict --study DIR --cell NAME`` finds a cell's checkpoint from the
files the trainable wrote (``cell.json`` beside ``best.pt``), even when the tracking
server is out of reach.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError

STUDY_FILE = "study.json"


def read_study(study_dir: Path) -> dict[str, Any]:
    """``study.json`` of a study folder (tracking URI, experiment, grid, store)."""
    path = Path(study_dir) / STUDY_FILE
    if not path.is_file():
        raise UserError(f"{study_dir}: no {STUDY_FILE} (not a study folder; a study run "
                        f"writes it: run_study.py --grid NAME --study-dir {study_dir})")
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


def tracking_uri(explicit: str | None, study_dir: Path | None) -> str | None:
    """The MLflow tracking URI to use: ``--tracking-uri``, else the study's ``study.json``,
    else the ``MLFLOW_TRACKING_URI`` environment variable, else None."""
    if explicit:
        return explicit
    if study_dir is not None:
        return str(read_study(study_dir)["tracking_uri"])
    return os.environ.get("MLFLOW_TRACKING_URI") or None


@dataclass(frozen=True)
class Cell:
    """One grid cell as its trial folder records it."""

    name: str
    trial_id: str
    kind: str
    folder: Path
    config: dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        """The cell's best checkpoint; an ``evaluate`` cell's is its source's."""
        if self.kind == "evaluate":
            return Path(str(self.config.get("transfer", {}).get("source") or ""))
        return self.folder / "best.pt"


def study_cells(study_dir: Path) -> list[Cell]:
    """Every cell with a ``cell.json`` (grid cells, and HPO samples one level deeper)."""
    trials = Path(study_dir) / "trials"
    found = sorted([*trials.glob("*/cell.json"), *trials.glob("*/*/cell.json")])
    cells = []
    for path in found:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a half-written file of a trial that is starting: not a cell yet
        cells.append(Cell(str(data["name"]), str(data["trial_id"]), str(data.get("kind", "")),
                          path.parent, dict(data.get("config") or {})))
    return cells


def find_cell(study_dir: Path, name: str) -> Cell:
    """The cell called ``name`` (exact, else the only one whose name contains it)."""
    cells = study_cells(study_dir)
    if not cells:
        raise UserError(f"{study_dir}: no trials/*/cell.json yet (has the study run?)")
    matches = [c for c in cells if c.name == name] or [c for c in cells if name in c.name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        close = difflib.get_close_matches(name, sorted({c.name for c in cells}), n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"{study_dir}: no cell named {name!r}{hint}; the names are in "
                        f"report/report.json (cells) and trials/*/cell.json")
    listed = ", ".join(sorted(f"{c.name} [{c.folder.relative_to(study_dir)}]" for c in matches)[:6])
    raise UserError(f"{study_dir}: {len(matches)} cells match {name!r}: {listed}; give the full "
                    f"name (HPO samples share a name: pass --checkpoint)")

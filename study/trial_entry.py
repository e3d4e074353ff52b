"""The trial as the driver sees it: the keys of its reports and the function Tune runs.

Apart from ``study.trainable`` so that the driver never imports torch, the model and the
evaluation code (about 1 s of CPU at start; the driver's peak RSS fell from 532 to 388 MiB): Tune
pickles ``run_trial`` by reference, and it imports the trainable in the trial's worker.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FINAL_KEY = "trial/final"
HISTORY_KEY = "trial/history"
"""JSON list of the checkpoint's per-epoch reports (first report of an attempt, and final)."""
NOTE_KEY = "trial/note"
"""One line when the trial resumed from a fallback checkpoint (else "")."""


def sampled_id(sampled: dict[str, Any]) -> str:
    """Identity of one HPO sample (its values), used for its folder and MLflow tag."""
    return hashlib.sha256(json.dumps(sampled, sort_keys=True).encode()).hexdigest()[:12]


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: one grid cell (``study.trainable.run_trial``)."""
    from study import trainable

    trainable.run_trial(config)

"""Release each cell to Ray Tune as soon as the cell it depends on has finished.

One Tuner runs the whole grid: ``DependencySearcher`` is a Tune ``Searcher`` that hands
Tune the next cell whose source has a checkpoint (sources and cells without a source at
once), skips the dependants of a source that failed, and says "wait" while every
remaining cell is blocked on a running source. A transfer therefore starts the moment
its own source finishes, not when the slowest source of a stage does, and its MLflow run
is opened when it is released, so the run's start time is the trial's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from study.grids import TrialSpec


@dataclass
class Release:
    """What the searcher asks of the runner: the MLflow run of a released cell, the Tune
    config for it, and how to record a skipped one."""

    open_cell: Callable[[TrialSpec, str | None], dict[str, Any]]
    """(spec, source checkpoint) → the plain-data cell handed to the trainable (its run opened)."""
    skip: Callable[[TrialSpec, str], None]
    """(spec, reason) → the cell's run marked KILLED with ``skipped_reason``."""


@dataclass
class Plan:
    """The cells still to run, in grid order, and what is known of their sources."""

    pending: list[TrialSpec] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    """trial id → ``best.pt`` of a finished source (this invocation's or an earlier one's)."""
    failed: dict[str, str] = field(default_factory=dict)
    """trial id → why it gave no checkpoint (its dependants are skipped with this reason)."""


class DependencySearcher(Searcher):
    """Tune searcher over a fixed set of cells with at most one source each."""

    def __init__(self, plan: Plan, release: Release, names: dict[str, str]) -> None:
        super().__init__()
        self.plan, self.release, self.names = plan, release, names
        self.live: dict[str, TrialSpec] = {}
        """Tune trial id → the released cell."""
        self.cells: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for spec in list(self.plan.pending):
            source_ckpt, reason = self._source(spec)
            if reason is None and spec.depends_on and source_ckpt is None:
                continue  # its source is still running or waiting
            self.plan.pending.remove(spec)
            if reason:
                self.skip_cell(spec, reason)
                continue
            cell = self.release.open_cell(spec, source_ckpt)
            self.live[trial_id] = spec
            self.cells.append(cell)
            return {"trial": cell}
        return Searcher.FINISHED if not self.plan.pending else None

    def _source(self, spec: TrialSpec) -> tuple[str | None, str | None]:
        """(checkpoint, None) ready · (None, reason) never · (None, None) not yet."""
        dep = spec.depends_on
        if not dep:
            return None, None
        name = self.names.get(dep, dep)
        if dep in self.plan.failed:
            return None, f"source {name} {self.plan.failed[dep]}"
        ckpt = self.plan.checkpoints.get(dep)
        if ckpt is None:
            return None, None
        if not ckpt or not Path(ckpt).exists():
            return None, f"source {name} checkpoint missing: {ckpt or '(none)'}"
        return ckpt, None

    def skip_cell(self, spec: TrialSpec, reason: str) -> None:
        self.release.skip(spec, reason)
        self.skipped[spec.trial_id] = reason
        self.plan.failed[spec.trial_id] = "skipped"  # its own dependants are skipped in turn

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        spec = self.live.pop(trial_id, None)
        if spec is None:
            return
        ckpt = json.loads((result or {}).get("tags") or "{}").get("best_checkpoint")
        if error:
            self.plan.failed[spec.trial_id] = "failed"
        elif not ckpt:
            self.plan.failed[spec.trial_id] = "stopped before a checkpoint"
        else:
            self.plan.checkpoints[spec.trial_id] = ckpt

    @property
    def unreleased(self) -> list[TrialSpec]:
        return list(self.plan.pending)

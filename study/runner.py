"""Run a grid on Ray Tune, tracked in MLflow, resumable.

One Tuner runs every cell; Tune has no inter-trial dependencies, so a searcher
(``study.scheduling``) releases a cell once its source has finished, and a cell
whose source did not finish is skipped with the reason. Resume = run the same
command again: finished cells (by identity, looked up in MLflow) are skipped,
unfinished ones restart from their ``last.pt``, and no cell gets a second run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from study.grids import Grid, TrialSpec
from study.ray_cluster import cluster_gpus, trials_without_runtime_env
from study.tracking import Tracker


@dataclass
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    """None: one GPU per trial when the cluster has GPUs, else none."""
    max_concurrent: int = 0
    max_failures: int = 1
    inject_failure: str = ""
    """Comma-separated name substrings: matching trials fail at start (fault drills, tests)."""


@dataclass
class StageOutcome:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


def decide_gpus(requested: float | None, cluster_gpus: float) -> float:
    """GPUs per trial: never more than the cluster has, default one when there are any."""
    if requested is None:
        return 1.0 if cluster_gpus >= 1 else 0.0
    if requested < 0:
        raise UserError(f"--gpus-per-trial must be >= 0, got {requested}")
    if requested > 0 and cluster_gpus <= 0:
        raise UserError(f"--gpus-per-trial {requested} requested but the Ray cluster has no GPU "
                        "(trials would stay PENDING forever); use --gpus-per-trial 0")
    if requested > cluster_gpus:
        raise UserError(f"--gpus-per-trial {requested} exceeds the cluster's {cluster_gpus:g} GPUs")
    return requested


def run_tag_values(grid: Grid, spec: TrialSpec, context: dict[str, str]) -> dict[str, str]:
    return {**spec.tags, **context, "trial_id": spec.trial_id, "grid": grid.name,
            "stage": str(spec.stage), "mlflow.runName": spec.name}


class StudyRunner:
    def __init__(self, grid: Grid, tracker: Tracker, study_dir: Path, store: str,
                 eval_split: str, resources: Resources,
                 context_tags: dict[str, str]) -> None:
        self.grid, self.tracker, self.study_dir = grid, tracker, study_dir
        self.store, self.eval_split = store, eval_split
        self.resources, self.context_tags = resources, context_tags
        self._gpus: float | None = None

    def trial_gpus(self) -> float:
        """GPUs per trial for this cluster, decided once (see ``decide_gpus``)."""
        if self._gpus is None:
            self._gpus = decide_gpus(self.resources.gpus_per_trial, cluster_gpus())
        return self._gpus

    def run(self) -> StageOutcome:
        """Every cell of the grid through one Tuner; a cell starts as soon as its own source
        has finished (``study.scheduling``). Finished cells are skipped, and a cell whose
        source failed is marked skipped with the reason."""
        from study.callbacks import StudyCallback
        from study.scheduling import DependencySearcher

        outcome, plan, runs, early_skips = self._plan()
        callback = StudyCallback(self.tracker, len(self.grid.trials), len(outcome.done), "study")
        searcher = DependencySearcher(plan, self._release(runs, callback),
                                      {t.trial_id: t.name for t in self.grid.trials})
        for spec, reason in early_skips:
            searcher.skip_cell(spec, reason)
        kinds = ", ".join(f"{sum(1 for s in self.grid.trials if s.kind == k)} {k}"
                          for k in sorted({s.kind for s in self.grid.trials}))
        print(f"\n== {len(self.grid.trials)} trials ({kinds}); {len(outcome.done)} already "
              f"finished, {len(early_skips)} skipped, {len(plan.pending)} to run; each starts "
              f"as soon as its source has finished ==", flush=True)
        if plan.pending:
            self.launch("study", {}, callback, search_alg=searcher, num_samples=-1)
            outcome.done += sorted(callback.completed)
            outcome.failed.update(callback.failed)
            for cell in searcher.cells:
                if cell["trial_id"] not in callback.completed | set(callback.failed):
                    outcome.interrupted = True
                    self.tracker.finish(cell["run_id"], "KILLED")
        outcome.skipped.update(searcher.skipped)
        outcome.interrupted = outcome.interrupted or bool(searcher.unreleased)
        return outcome

    def _plan(self) -> tuple[StageOutcome, Any, dict[str, Any], list[tuple[TrialSpec, str]]]:
        """Cells already finished (done, their checkpoints known), cells to run in grid
        order, and cells whose source outside this grid gives them nothing to start from."""
        from study.scheduling import Plan

        outcome, plan, runs = StageOutcome(), Plan(), self.tracker.trial_runs()
        in_grid = {t.trial_id for t in self.grid.trials}
        early_skips: list[tuple[TrialSpec, str]] = []
        for spec in self.grid.trials:
            run = runs.get(spec.trial_id)
            if run is not None and run.info.status == "FINISHED":
                outcome.done.append(spec.trial_id)
                plan.checkpoints[spec.trial_id] = run.data.tags.get("best_checkpoint", "")
                continue
            if spec.depends_on and spec.depends_on not in in_grid:  # a source outside this grid
                reason, ckpt = self._source_checkpoint(spec, runs)
                if reason:
                    early_skips.append((spec, reason))
                    continue
                plan.checkpoints[spec.depends_on] = ckpt or ""
            plan.pending.append(spec)
        return outcome, plan, runs, early_skips

    def _release(self, runs: dict[str, Any], callback: Any) -> Any:
        """How the searcher opens a released cell's MLflow run and records a skipped one."""
        from study.scheduling import Release

        def open_cell(spec: TrialSpec, source_ckpt: str | None) -> dict[str, Any]:
            tags = run_tag_values(self.grid, spec, self.context_tags)
            return self.cell(spec, self.tracker.open_trial_run(spec, tags, runs.get(spec.trial_id)),
                             source_ckpt)

        def skip(spec: TrialSpec, reason: str) -> None:
            self.tracker.mark_skipped(spec, run_tag_values(self.grid, spec, self.context_tags),
                                      runs.get(spec.trial_id), reason)
            callback.done += 1  # the progress count covers every cell
            print(f"[study] skipped {spec.name}: {reason}", flush=True)

        return Release(open_cell, skip)

    def _source_checkpoint(self, spec: TrialSpec, runs: dict[str, Any]) -> tuple[str, str | None]:
        """(why not, None) or ("", best.pt) for a source outside this grid, from its run."""
        src = runs.get(spec.depends_on or "")
        if src is None:
            return f"source {spec.depends_on} did not run", None
        src_name = src.data.tags.get("mlflow.runName", spec.depends_on)
        if src.info.status != "FINISHED":
            err = f" ({src.data.tags['error']})" if "error" in src.data.tags else ""
            return f"source {src_name} {src.info.status.lower()}{err}", None
        ckpt = src.data.tags.get("best_checkpoint", "")
        if not ckpt or not Path(ckpt).exists():
            return f"source {src_name} checkpoint missing: {ckpt or '(none)'}", None
        return "", ckpt

    def cell(self, spec: TrialSpec, run_id: str, source_ckpt: str | None) -> dict[str, Any]:
        """The plain-data trial config handed to the Ray trainable (absolute paths only)."""
        return {
            "trial_id": spec.trial_id, "name": spec.name, "kind": spec.kind, "config": spec.config,
            "eval_modalities": list(spec.eval_modalities), "eval_split": self.eval_split,
            "run_id": run_id, "source_checkpoint": source_ckpt,
            "trial_dir": str((self.study_dir / "trials" / spec.trial_id).resolve()),
            "threads": max(1, int(self.resources.cpus_per_trial)),
            "device": "cuda" if self.trial_gpus() > 0 else "cpu",
            "inject_failure": self.resources.inject_failure,
            "budget": self.grid.budget,
        }

    def launch(self, name: str, param_space: dict[str, Any], callback: Any, *,
               search_alg: Any = None, scheduler: Any = None, num_samples: int = 1) -> None:
        """The one Tuner of the project (grid stages and HPO): resources, retries from the
        trial's checkpoint, one checkpoint kept per trial, MLflow through ``callback``."""
        from ray import tune

        from study.trial_entry import run_trial

        res = self.resources
        trainable = tune.with_resources(run_trial, {"cpu": res.cpus_per_trial, "gpu": self.trial_gpus()})
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                max_concurrent_trials=res.max_concurrent or None,
                trial_name_creator=lambda t: t.config["trial"]["name"].replace("/", "_"),
                trial_dirname_creator=lambda t: f"{t.config['trial']['trial_id']}-{t.trial_id}",
                reuse_actors=True,  # skip a process start (torch import) per trial
            ),
            run_config=tune.RunConfig(
                name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str((self.study_dir / "ray_results").resolve()),
                callbacks=[callback],
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
        quiet_trial_failures()
        trials_without_runtime_env()
        tuner.fit()


class _TrialFailureFilter(logging.Filter):
    """Drops Tune's own report of a failed trial (a traceback of Ray's internals, ~40 lines):
    the study says it in one line and tags the run with the error and its traceback file."""

    MESSAGES = ("Trial task failed for trial", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGES)


def quiet_trial_failures() -> None:
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _TrialFailureFilter) for f in log.filters):
            log.addFilter(_TrialFailureFilter())

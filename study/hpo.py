"""`--grid hpo`: Optuna (TPE) via Ray Tune's OptunaSearch, with ASHA early stopping.

The space is YAML (``search.space`` in the grid file). Every sample is an MLflow
child run tagged with its values; re-running the command feeds finished
samples back to Optuna (``points_to_evaluate`` + ``evaluated_rewards``) and only
runs the remaining ones. The winner is written as ``hpo_best.yaml``, an overlay
any grid accepts with ``--overlay``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from core.config import unflatten
from core.errors import ConfigError
from study.grids import Grid

SCORE = "val/best_dice"


def build_space(space: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec.get("type")
        if kind == "loguniform":
            out[key] = tune.loguniform(float(spec["low"]), float(spec["high"]))
        elif kind == "uniform":
            out[key] = tune.uniform(float(spec["low"]), float(spec["high"]))
        elif kind == "choice":
            out[key] = tune.choice(list(spec["values"]))
        else:
            raise ConfigError(f"search.space.{key}.type: unknown {kind!r}; valid: loguniform, uniform, choice")
    return out


def finished_samples(tracker: Any, family: str) -> list[tuple[float, dict[str, Any]]]:
    """(score, sampled values) of every sample of ``family`` that reported a score."""
    out = []
    for run in tracker.trial_runs().values():
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get("family") == family and "hpo.sampled" in tags and SCORE in metrics:
            out.append((float(metrics[SCORE]), json.loads(tags["hpo.sampled"])))
    return out


def previous_samples(tracker: Any, family: str, keys: list[str]) -> tuple[list[dict], list[float]]:
    """Earlier samples over the same keys, for Optuna to start from."""
    same = [(score, s) for score, s in finished_samples(tracker, family) if sorted(s) == sorted(keys)]
    return [s for _, s in same], [score for score, _ in same]


def write_best_overlay(tracker: Any, family: str, study_dir: Path) -> Path | None:
    samples = finished_samples(tracker, family)
    if not samples:
        return None
    score, best = max(samples, key=lambda item: item[0])
    path = study_dir / "hpo_best.yaml"
    header = f"# HPO winner: {SCORE} = {score:.4f}. Use with --overlay {path}\n"
    path.write_text(header + yaml.safe_dump(unflatten(best), sort_keys=True))
    return path


def run_hpo(args: argparse.Namespace, grid: Grid, store: str, manifest: dict[str, Any]) -> int:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from study.callbacks import StudyCallback
    from study.main import make_runner, start_study
    from study.runner import run_tag_values
    from study.trainable import run_trial, sampled_id

    if len(grid.trials) != 1:
        raise ConfigError(f"grid {grid.name}: a search grid needs exactly one base cell, got {len(grid.trials)}")
    tracker, study_dir, context = start_study(args, grid, store, manifest)
    spec = grid.trials[0]
    space = build_space(grid.search.get("space", {}))
    wanted = int(args.num_samples or grid.search.get("num_samples", 8))
    points, rewards = previous_samples(tracker, spec.family, list(space))
    remaining = max(0, wanted - len(points))
    print(f"hpo: {len(points)} samples already done, {remaining} to run", flush=True)
    runner = make_runner(args, grid, store, manifest, tracker, study_dir, context)
    resources, tags_context = runner.resources, runner.context_tags
    if remaining:
        gpus = runner.trial_gpus()
        cell = runner.cell(spec, "", None)

        def open_run(trial: Any) -> str:
            sampled = trial.config["sampled"]
            sid = sampled_id(sampled)
            tags = {**run_tag_values(grid, spec, tags_context),
                    "trial_id": f"{spec.trial_id}-{sid}", "hpo.sampled": json.dumps(sampled, sort_keys=True),
                    "mlflow.runName": f"{spec.name}/{sid}"}
            return tracker.open_trial_run(spec, tags, None)

        callback = StudyCallback(tracker, remaining, 0, 1, open_run=open_run)
        mode = "max"  # the score is SCORE (validation dice): defined for every sample at every epoch
        searcher = OptunaSearch(metric=SCORE, mode=mode,
                                points_to_evaluate=[{f"sampled/{k}": v for k, v in p.items()} for p in points] or None,
                                evaluated_rewards=rewards or None, seed=int(spec.tags["seed"]))
        max_t = int(spec.config["train"]["max_epochs"])
        # max_t past the last epoch: a sample that survives every rung ends on its own and
        # logs its test metrics, instead of being cut by the scheduler at the last report
        scheduler = ASHAScheduler(time_attr="epoch", metric=SCORE, mode=mode, max_t=max_t + 1,
                                  grace_period=max(1, max_t // 4), reduction_factor=2)
        tuner = tune.Tuner(
            tune.with_resources(run_trial, {"cpu": resources.cpus_per_trial, "gpu": gpus}),
            param_space={"trial": cell, "sampled": space},
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=resources.max_concurrent or None),
            run_config=tune.RunConfig(name=f"hpo-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str((study_dir / "ray_results").resolve()),
                                      callbacks=[callback], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=resources.max_failures)),
        )
        tuner.fit()
    path = write_best_overlay(tracker, spec.family, study_dir)
    tracker.end_parent("FINISHED", {"samples": wanted})
    print(f"\nbest config overlay: {path}" if path else "\nno finished HPO sample")
    return 0

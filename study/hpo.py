"""`--grid hpo`: Optuna (TPE) via Ray Tune's OptunaSearch, with ASHA early stopping.

The space is YAML (``search.space`` in the grid file). Every sample is an MLflow
child run tagged with its values; re-running the command feeds finished
samples back to Optuna (``points_to_evaluate`` + ``evaluated_rewards``) and only
runs the remaining ones. The winner is written as ``hpo_best.yaml``, an overlay
any grid accepts with ``--overlay``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from core.atomic import write_text
from core.errors import ConfigError
from core.nested import unflatten
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


def write_best_overlay(tracker: Any, family: str, study_dir: Path, manifest: dict[str, Any],
                       budget: str) -> Path | None:
    """``hpo_best.yaml``: the winner as an overlay, with a header saying what produced it."""
    from core.version import code_version

    samples = finished_samples(tracker, family)
    if not samples:
        return None
    score, best = max(samples, key=lambda item: item[0])
    path = study_dir / "hpo_best.yaml"
    header = (f"# HPO winner: {SCORE} = {score:.4f} (validation split; {len(samples)} samples)\n"
              f"# store {manifest.get('store_id')} ({manifest.get('source_root', 'synthetic')}), "
              f"budget {budget}, code {code_version()}\n"
              f"# use with: --overlay {path}\n")
    write_text(path, header + yaml.safe_dump(unflatten(best), sort_keys=True))
    return path


def check_space(grid: Grid) -> dict[str, Any]:
    """The search space as Tune distributions; every key must be a config key, every value
    valid for it (checked on each bound and choice before anything starts)."""
    from core.config import from_dict
    from core.nested import merge

    if len(grid.trials) != 1:
        raise ConfigError(f"grid {grid.name}: a search grid needs exactly one base cell, "
                          f"got {len(grid.trials)}")
    raw = grid.search.get("space", {}) or {}
    if not raw:
        raise ConfigError(f"grid {grid.name}: search.space is empty")
    base = grid.trials[0].config
    for key, spec in raw.items():
        values = spec.get("values") if spec.get("type") == "choice" else [spec.get("low"), spec.get("high")]
        for value in values or []:
            try:
                from_dict(merge(base, unflatten({key: value})))
            except ConfigError as exc:
                raise ConfigError(f"search.space.{key}: {exc}") from None
    return build_space(raw)


def sample_count(grid: Grid, requested: int | None = None) -> int:
    """Optuna samples of a search: ``--num-samples``, else the grid's ``search.num_samples``."""
    return int(requested or grid.search.get("num_samples", 8))


def asha_epochs(spec: Any) -> tuple[int, int]:
    """(max_t, grace period) of ASHA for the base cell, in epochs. max_t is one past the last
    epoch: a sample that survives every rung ends on its own and logs its evaluation
    metrics, instead of being cut by the scheduler at its last report."""
    max_epochs = int(spec.config["train"]["max_epochs"])
    return max_epochs + 1, max(1, max_epochs // 4)


def _range_text(spec: dict[str, Any]) -> str:
    if spec.get("type") == "choice":
        return "{" + ", ".join(map(str, spec["values"])) + "}"
    return f"[{spec['low']}, {spec['high']}]"


def describe_space(grid: Grid, requested: int | None = None) -> list[str]:
    """The search space after ``check_space`` (a bad one raises ConfigError) as lines:
    parameter, distribution, range; then the sample count and the ASHA rungs."""
    check_space(grid)
    raw = grid.search["space"]
    width = max(len("parameter"), *map(len, raw))
    lines = [f"search space ({len(raw)} parameters, each bound and choice checked against "
             f"the base cell {grid.trials[0].name}):",
             f"  {'parameter':<{width}}  {'distribution':<12}  range"]
    lines += [f"  {key:<{width}}  {spec['type']:<12}  {_range_text(spec)}"
              for key, spec in raw.items()]
    max_t, grace = asha_epochs(grid.trials[0])
    lines.append(f"samples: {sample_count(grid, requested)} (Optuna TPE, maximising {SCORE}); "
                 f"ASHA stops weak samples from epoch {grace} (max_t {max_t}, reduction factor 2)")
    return lines


def run_hpo(session: Any) -> int:
    """Run the remaining Optuna samples of ``session.grid`` (a ``study.session.StudySession``)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from study.callbacks import StudyCallback
    from study.runner import run_tag_values
    from study.session import parent_run
    from study.trial_entry import sampled_id

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid, tracker, runner = session.grid, session.tracker, session.runner
    spec = grid.trials[0]
    space = check_space(grid)
    wanted = sample_count(grid, session.options.num_samples)
    with parent_run(session) as parent:
        points, rewards = previous_samples(tracker, spec.family, list(space))
        remaining = max(0, wanted - len(points))
        print(f"hpo: {len(points)} samples already done, {remaining} to run", flush=True)
        if remaining:
            def open_run(trial: Any) -> str:
                sampled = trial.config["sampled"]
                sid = sampled_id(sampled)
                tags = {**run_tag_values(grid, spec, runner.context_tags),
                        "trial_id": f"{spec.trial_id}-{sid}",
                        "hpo.sampled": json.dumps(sampled, sort_keys=True),
                        "mlflow.runName": f"{spec.name}/{sid}"}
                return tracker.open_trial_run(spec, tags, None)

            # the score (validation dice) is defined for every sample at every epoch
            searcher = OptunaSearch(
                metric=SCORE, mode="max", seed=int(spec.tags["seed"]),
                points_to_evaluate=[{f"sampled/{k}": v for k, v in p.items()} for p in points] or None,
                evaluated_rewards=rewards or None)
            max_t, grace = asha_epochs(spec)
            scheduler = ASHAScheduler(time_attr="epoch", metric=SCORE, mode="max", max_t=max_t,
                                      grace_period=grace, reduction_factor=2)
            runner.launch("hpo", {"trial": runner.cell(spec, "", None), "sampled": space},
                          StudyCallback(tracker, remaining, 0, "hpo", open_run=open_run),
                          search_alg=searcher, scheduler=scheduler, num_samples=remaining)
        parent["status"] = "FINISHED"
        parent["summary"].update(samples=wanted)
    path = write_best_overlay(tracker, spec.family, session.study_dir, session.manifest,
                              grid.budget)
    print(f"\nbest config overlay: {path}" if path else "\nno finished HPO sample")
    return 0

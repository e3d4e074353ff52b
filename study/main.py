"""Orchestration of `run_study.py study` and `report`: resolve data, expand the
grid, start Ray, track in MLflow, run the cells, write the report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from core.config import load_config, resolve_budget
from core.errors import UserError
from study.grids import ExpandContext, Grid, expand, grid_seeds, list_grids, load_grid_data
from study.session import (
    StudyOptions,
    StudySession,
    hardware,
    open_session,
    parent_run,
    resume_command,
)

SYNTHETIC_DIR = Path("data") / "synthetic"


def resolve_store(data: str | None) -> tuple[str, dict[str, Any]]:
    """(store location, manifest); with no data, the embedded synthetic store (built once)."""
    from core.data.store import BratsStore, store_id

    if data is None:
        from core.data.synthetic import ensure_synthetic_store

        print("data: embedded synthetic BraTS-like dataset (built once, cached in data/synthetic)",
              flush=True)
        location = str(ensure_synthetic_store(SYNTHETIC_DIR.resolve(), log=print))
    else:
        location = data if "://" in data else str(Path(data).resolve())
    store = BratsStore(location)
    manifest = dict(store.manifest)
    manifest.setdefault("store_id", store_id(manifest))
    return location, manifest


def study_tracking(study_dir: Path, uri: str | None, experiment: str | None) -> tuple[str, str]:
    """Tracking URI and experiment of a study, remembered in ``study.json``."""
    from study.tracking import default_tracking_uri

    meta_path = study_dir / "study.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    uri = uri or meta.get("tracking_uri") or default_tracking_uri(study_dir)
    experiment = experiment or meta.get("experiment")
    if not experiment:
        raise UserError(f"{study_dir}: no study.json; pass --experiment (and --tracking-uri)")
    return uri, experiment


def print_plan(grid: Grid, states: dict[str, str] | None = None) -> None:
    """The cells by dependency depth, each with its source and, where the study folder
    already has a run of it, that run's state."""
    states = states or {}
    print(f"grid {grid.name}: {len(grid.trials)} trials, budget {grid.budget}")
    if grid.description:
        print(f"  {grid.description}")
    if states:
        finished = sum(states.get(t.trial_id) == "finished" for t in grid.trials)
        print(f"  {finished} of {len(grid.trials)} already finished in this study folder "
              "(a run skips them)")
    names = {t.trial_id: t.name for t in grid.trials}
    for number, stage in enumerate(grid.stages(), start=1):
        print(f"\nstage {number} ({len(stage)} trials)")
        for t in stage:
            dep = f"  <- {names.get(t.depends_on, t.depends_on)}" if t.depends_on else ""
            state = f"  [{states[t.trial_id]}]" if t.trial_id in states else ""
            print(f"  {t.trial_id}  {t.name}{dep}{state}")


def recorded_states(options: StudyOptions, grid: Grid) -> dict[str, str]:
    """The state of each cell's run in the study folder a run would use (nothing when the
    folder has no study yet; nothing is created)."""
    study_dir = options.study_dir or Path("studies") / grid.name
    if not (study_dir / "study.json").exists():
        return {}
    from study.mlflow_results import cell_states

    try:
        uri, experiment = study_tracking(study_dir, options.tracking_uri, options.experiment)
        return cell_states(uri, experiment)
    except UserError as exc:
        print(f"note: runs of {study_dir} not read: {exc}", flush=True)
        return {}


def _expand(options: StudyOptions, store: str, manifest: dict[str, Any]) -> Grid:
    data = load_grid_data(options.grid)
    budget, why = resolve_budget(options.budget or data.get("budget"), bool(manifest.get("synthetic")))
    print(f"budget: {budget} ({why}; configs/train/{budget}.yaml)", flush=True)
    seeds = options.seeds or grid_seeds(data, budget)
    ctx = ExpandContext(budget, store, manifest["store_id"], seeds, options.overlays,
                        dict(options.overrides))
    return expand(options.grid, ctx)


def preflight(grid: Grid, store: str) -> None:
    """Fail before Ray or MLflow start when a cell cannot run on this store."""
    from core.data.store import BratsStore

    opened = BratsStore(store)
    h, w = opened.slice_shape()
    for t in grid.trials:
        data = t.config["data"]
        if data["train_crop"] > min(h, w):
            raise UserError(f"data.train_crop {data['train_crop']} does not fit the store's "
                            f"{h}x{w} slices ({store}); use --set data.train_crop=<= "
                            f"{min(h, w) // 16 * 16}")
        missing = [m for m in data["modalities"] if m not in opened.modalities]
        if missing:
            raise UserError(f"{t.name}: store {store} has no modality {', '.join(missing)}")
    if not opened.case_ids("train") or not opened.case_ids("val"):
        raise UserError(f"store {store} needs train and val cases; re-run prepare with --val-fraction")


def grid_counts(name: str) -> str:
    """"N trials (a train, b transfer, …), S seed(s)" of a grid on the default data (the
    synthetic store's budget and seeds), or the search's sample count."""
    from collections import Counter

    data = load_grid_data(name)
    budget, _ = resolve_budget(data.get("budget"), True)
    seeds = grid_seeds(data, budget)
    grid = expand(name, ExpandContext(budget, "", "list-grids", seeds))
    if grid.search:
        return (f"search: {grid.search.get('num_samples', '?')} samples of "
                f"{len(grid.trials)} cell(s)")
    kinds = Counter(t.kind for t in grid.trials)
    detail = ", ".join(f"{kinds[k]} {k}" for k in ("train", "transfer", "evaluate") if kinds[k])
    return (f"{len(grid.trials)} trials: {detail}; {len(seeds)} seed(s) "
            f"({len(grid.trials) // len(seeds)} cells per seed); {len(grid.stages())} stage(s)")


def list_grids_command() -> int:
    for name in list_grids():
        desc = str(load_grid_data(name).get("description", "")).strip().split(". ")[0]
        try:
            counts = grid_counts(name)
        except Exception as exc:  # noqa: BLE001 - one broken grid file must not hide the others
            counts = f"cannot expand: {str(exc).splitlines()[0][:120]}"
        print(f"{name:16s} {counts}\n{'':16s} {desc}")
    print("\n(counts with the default data and seeds; --seeds multiplies the trials)")
    return 0


def run_study_command(args: argparse.Namespace) -> int:
    if args.list_grids:
        return list_grids_command()
    options = StudyOptions.from_args(args)
    load_grid_data(options.grid)  # a wrong grid name or --set key fails before data is built
    load_config(None, options.overlays, dict(options.overrides))
    store, manifest = resolve_store(options.data)  # a dry run names the same cells as the run
    grid = _expand(options, store, manifest)  # fails on bad grids before anything starts
    if args.dry_run:
        print_plan(grid, recorded_states(options, grid))
        if grid.search:
            from study.hpo import describe_space

            print("\n" + "\n".join(describe_space(grid, options.num_samples)))
        return 0
    preflight(grid, store)
    if grid.search:
        from study.hpo import check_space

        check_space(grid)  # before Ray and MLflow start
    session = open_session(options, grid, store, manifest)
    try:
        from study.mlflow_meta import mark_training_experiment

        mark_training_experiment(session.tracker.client, session.tracker.experiment_id)
        if grid.search:
            from study.hpo import run_hpo

            return run_hpo(session)
        return _run(session)
    finally:
        session.close()


def _run(session: StudySession) -> int:
    grid, tracker, study_dir = session.grid, session.tracker, session.study_dir
    started = time.monotonic()
    with parent_run(session) as parent:
        outcome = session.runner.run()
        parent["status"] = "KILLED" if outcome.interrupted else "FINISHED"
        parent["summary"].update(done=len(outcome.done), failed=len(outcome.failed),
                                 skipped=len(outcome.skipped))
    _print_summary(grid, outcome, time.monotonic() - started)
    from study.mlflow_meta import drop_idle_parent, runs_url

    all_done = len(outcome.done) == len(grid.trials)
    if all_done and not outcome.interrupted and drop_idle_parent(tracker):
        print("nothing to do: every trial had finished already; no new MLflow parent run "
              "kept", flush=True)
    if outcome.interrupted:
        print(f"\nInterrupted. To resume (flags from {study_dir / 'study.json'}):\n  "
              f"{resume_command(study_dir)}", flush=True)
        return 130
    if outcome.failed:
        print(f"\nTo retry the failed trials and their dependants:\n  {resume_command(study_dir)}",
              flush=True)
    if session.options.report:
        _write_report(tracker.tracking_uri, tracker.experiment, study_dir, grid)
    from study.tracking import ui_command

    print(f"\nMLflow UI: {ui_command(tracker.tracking_uri)}\n  (or: python run_study.py ui --study {study_dir})")
    print(f"  runs: {runs_url(tracker.tracking_uri, tracker.experiment_id)}")
    return 1 if outcome.failed else 0


def _print_summary(grid: Grid, outcome: Any, seconds: float) -> None:
    print(f"\n{grid.name}: {len(outcome.done)} finished, {len(outcome.failed)} failed, "
          f"{len(outcome.skipped)} skipped of {len(grid.trials)} trials in {seconds / 60:.1f} min", flush=True)
    names = grid.by_id()
    for tid, reason in outcome.failed.items():
        print(f"  FAILED  {names[tid].name}: {reason}")
    if outcome.failed:
        print("  (each failed run's tag error_file names its full traceback)")
    for tid, reason in outcome.skipped.items():
        print(f"  skipped {names[tid].name}: {reason}")


def _write_report(uri: str, experiment: str, study_dir: Path, grid: Grid | None = None) -> Path:
    from study.report import report_summary_lines, write_report
    from study.results_csv import write_results_csv

    path = write_report(uri, experiment, study_dir / "report", {"hardware": hardware()})
    print(f"\nreport: {path}")
    print(f"results: {write_results_csv(uri, experiment, path.parent)}")
    for line in report_summary_lines(path.parent):
        print(f"  {line}")
    return path


def report_command(args: argparse.Namespace) -> int:
    study_dir = args.study.resolve()
    uri, experiment = study_tracking(study_dir, args.tracking_uri, args.experiment)
    from study.session import replay_journal

    replay_journal(study_dir, uri, experiment)  # writes an interrupted invocation left behind
    _write_report(uri, experiment, study_dir)
    return 0

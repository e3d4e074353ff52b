"""Orchestration of `run_study.py study` and `report`: resolve data, expand the
grid, start Ray, track in MLflow, run stages, write the report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from core.config import resolve_budget
from core.errors import UserError
from core.vocabulary import MODALITIES
from study.grids import ExpandContext, Grid, expand, grid_seeds, list_grids, load_grid_data

SYNTHETIC_DIR = Path("data") / "synthetic"


def hardware() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}"


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


def eval_split_of(location: str) -> str:
    from core.data.store import BratsStore

    return "test" if BratsStore(location).case_ids("test") else "val"


def split_population(manifest: dict[str, Any], split: str) -> dict[str, str]:
    """Cases and patients of ``split`` (tags every run carries, for the report header)."""
    rows = [r for r in manifest.get("cases", []) if r.get("split") == split]
    patients = {r.get("patient") or r["case_id"] for r in rows}
    return {"eval_cases": str(len(rows)), "eval_patients": str(len(patients))}


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


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


def print_plan(grid: Grid) -> None:
    print(f"grid {grid.name}: {len(grid.trials)} trials, budget {grid.budget}")
    if grid.description:
        print(f"  {grid.description}")
    names = {t.trial_id: t.name for t in grid.trials}
    for number, stage in enumerate(grid.stages(), start=1):
        print(f"\nstage {number} ({len(stage)} trials)")
        for t in stage:
            dep = f"  <- {names.get(t.depends_on, t.depends_on)}" if t.depends_on else ""
            print(f"  {t.trial_id}  {t.name}{dep}")


def _expand(args: argparse.Namespace, store: str, manifest: dict[str, Any]) -> Grid:
    data = load_grid_data(args.grid)
    budget, why = resolve_budget(args.budget or data.get("budget"), bool(manifest.get("synthetic")))
    print(f"budget: {budget} ({why}; configs/train/{budget}.yaml)", flush=True)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else grid_seeds(data, budget)
    except ValueError:
        raise UserError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    overrides = parse_sets(args.set)
    ctx = ExpandContext(budget, store, manifest["store_id"], seeds,
                        tuple(p.resolve() for p in args.overlay), overrides)
    return expand(args.grid, ctx)


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


def run_study_command(args: argparse.Namespace) -> int:
    if args.list_grids:
        for name in list_grids():
            desc = str(load_grid_data(name).get("description", "")).strip().split(". ")[0]
            print(f"{name:16s} {desc}")
        return 0
    if args.dry_run and args.data is None:
        store, manifest = "<synthetic>", {"store_id": "synthetic", "modalities": list(MODALITIES),
                                          "synthetic": True}
    else:
        store, manifest = resolve_store(args.data)
    grid = _expand(args, store, manifest)  # fails on bad grids before anything starts
    if args.dry_run:
        print_plan(grid)
        return 0
    preflight(grid, store)
    if grid.search:
        from study.hpo import run_hpo

        return run_hpo(args, grid, store, manifest)
    return _run(args, grid, store, manifest)


def _study_dir(args: argparse.Namespace, grid: Grid) -> Path:
    path = Path(args.study_dir or Path("studies") / grid.name).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_study(args: argparse.Namespace, grid: Grid, store: str,
                manifest: dict[str, Any]) -> tuple[Any, Path, dict[str, str]]:
    """Study folder, Ray, MLflow tracker with its parent run; returns (tracker, dir, tags)."""
    from core.checkpoint import code_version
    from study.runner import cluster_gpus, decide_gpus, init_ray, print_dashboard
    from study.tracking import Tracker, default_tracking_uri

    print_dashboard(init_ray(args.address))
    decide_gpus(args.gpus_per_trial, cluster_gpus())  # refuse impossible requests before logging
    study_dir = _study_dir(args, grid)
    uri = args.tracking_uri or default_tracking_uri(study_dir)
    experiment = args.experiment or f"study-{grid.name}"
    (study_dir / "study.json").write_text(json.dumps(
        {"tracking_uri": uri, "experiment": experiment, "grid": grid.name, "budget": grid.budget,
         "data": store}, indent=2))
    tracker = Tracker(uri, experiment, artifact_root=study_dir / "mlartifacts" if uri.startswith("sqlite") else None)
    stale = tracker.close_running("KILLED", "an earlier invocation stopped without ending it")
    if stale:
        print(f"closed {stale} run(s) left RUNNING by an earlier invocation (now KILLED)", flush=True)
    context = {"budget": grid.budget, "store_id": manifest["store_id"], "code_version": code_version()}
    tracker.start_parent(f"{grid.name} {time.strftime('%Y-%m-%d %H:%M')}", {**context, "grid": grid.name},
                         {"grid": grid.name, "budget": grid.budget, "data": store, "hardware": hardware(),
                          "n_trials": len(grid.trials)})
    return tracker, study_dir, context


def make_runner(args: argparse.Namespace, grid: Grid, store: str, manifest: dict[str, Any],
                tracker: Any, study_dir: Path, context: dict[str, str]) -> Any:
    """The StudyRunner for this invocation (resources from the flags, split from the store)."""
    from study.runner import Resources, StudyRunner

    split = eval_split_of(store)
    resources = Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent,
                          args.max_failures, args.inject_failure)
    return StudyRunner(grid, tracker, study_dir, store, split, resources,
                       {**context, "eval_split": split, **split_population(manifest, split)})


def _run(args: argparse.Namespace, grid: Grid, store: str, manifest: dict[str, Any]) -> int:
    tracker, study_dir, context = start_study(args, grid, store, manifest)
    runner = make_runner(args, grid, store, manifest, tracker, study_dir, context)
    started = time.monotonic()
    status = "FAILED"
    try:
        outcome = runner.run()
        status = "KILLED" if outcome.interrupted else "FINISHED"
    finally:
        summary = {"trials": len(grid.trials)}
        if status == "FAILED":  # the driver itself failed: leave no run RUNNING
            tracker.close_running("FAILED", "the study driver failed")
        else:
            summary.update(done=len(outcome.done), failed=len(outcome.failed), skipped=len(outcome.skipped))
        tracker.end_parent(status, summary)
    _print_summary(grid, outcome, time.monotonic() - started)
    if outcome.interrupted:
        print(f"\nInterrupted. Re-run the same command to resume:\n  python run_study.py --grid {args.grid} "
              f"--study-dir {study_dir}" + (f" --data {args.data}" if args.data else ""), flush=True)
        return 130
    if not args.no_report:
        _write_report(tracker.tracking_uri, tracker.experiment, study_dir, grid)
    from study.tracking import ui_command

    print(f"\nMLflow UI: {ui_command(tracker.tracking_uri)}\n  (or: python run_study.py ui --study {study_dir})")
    return 1 if outcome.failed else 0


def _print_summary(grid: Grid, outcome: Any, seconds: float) -> None:
    print(f"\n{grid.name}: {len(outcome.done)} finished, {len(outcome.failed)} failed, "
          f"{len(outcome.skipped)} skipped of {len(grid.trials)} trials in {seconds / 60:.1f} min", flush=True)
    names = grid.by_id()
    for tid, reason in outcome.failed.items():
        print(f"  FAILED  {names[tid].name}: {reason}")
    for tid, reason in outcome.skipped.items():
        print(f"  skipped {names[tid].name}: {reason}")


def _write_report(uri: str, experiment: str, study_dir: Path, grid: Grid | None = None) -> Path:
    from study.report import report_summary_lines, write_report

    path = write_report(uri, experiment, study_dir / "report", {"hardware": hardware()})
    print(f"\nreport: {path}")
    for line in report_summary_lines(path.parent):
        print(f"  {line}")
    return path


def report_command(args: argparse.Namespace) -> int:
    study_dir = args.study.resolve()
    uri, experiment = study_tracking(study_dir, args.tracking_uri, args.experiment)
    _write_report(uri, experiment, study_dir)
    return 0

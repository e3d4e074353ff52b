"""CLI for the study: `study` (default), `resume`, `report`, `ui`, `export`. Imports stay light until
used."""

from __future__ import annotations

import argparse
from pathlib import Path

from study.cli_help import subcommand


def register(sub: argparse._SubParsersAction) -> None:
    p = subcommand(sub, "study", "run a study grid on Ray Tune (the default command)",
                   "Expand a grid into cells, run each as a Ray Tune trial (sources before their "
                   "dependants) tracked as an MLflow run, then write the report. Running the same "
                   "command again resumes.")
    p.add_argument("--grid", default="transfer_all", help="grid name in configs/grids or a YAML path")
    p.add_argument("--data", default=None,
                   help="zarr store (path or URL) from `prepare`; default: the embedded synthetic dataset")
    p.add_argument("--budget", default=None,
                   help="smoke | demo | cpu | paper | auto (default: the grid's, normally auto = demo on "
                   "the synthetic store, cpu on real data)")
    p.add_argument("--study-dir", default=None, help="output folder (default: studies/<grid>)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: SQLite in the study folder)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (default: study-<grid>)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster: auto | "
                   "ray://host:port (default: start Ray on this machine)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs (and torch threads) per trial")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial, fractional allowed (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--max-concurrent", type=int, default=0, help="cap on concurrent trials (0 = by resources)")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a failed trial from its checkpoint")
    p.add_argument("--inject-failure", default="", metavar="SUBSTRINGS",
                   help="fault drill: trials whose name contains one of these (comma-separated) fail "
                   "at start; NAME@N: fail once after epoch N, losing the local last.pt (Tune retries "
                   "from its own copy)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the grid's)")
    p.add_argument("--overlay", action="append", default=[], type=Path,
                   help="extra config YAML overlay(s), e.g. the HPO winner (default: none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every cell, e.g. --set train.max_epochs=5 "
                   "(default: none)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="HPO: number of Optuna samples (default: the grid's search.num_samples)")
    p.add_argument("--dry-run", action="store_true", help="print the trials by stage and exit")
    p.add_argument("--list-grids", action="store_true",
                   help="list the grids with their trial counts and exit")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--wait", action="store_true",
                   help="if another invocation holds the study folder, wait for it instead of failing")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="with --address: fail with one line if the cluster does not answer in time")
    p.add_argument("--tracking-wait", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for an unavailable MLflow store where the study needs it "
                   "(start of a stage, the end); tracking writes are journaled meanwhile")
    p.set_defaults(func=_study)
    _register_resume(sub)

    r = subcommand(sub, "report", "write report.md and heatmaps from a study's MLflow runs",
                   "Read every run of the study's MLflow experiment and write report/report.md, "
                   "report.json (every number; each cell's run id and checkpoint), results.csv "
                   "(one row per cell) and the figures.")
    r.add_argument("--study", required=True, type=Path, help="study folder (holds study.json)")
    r.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: the study's, from study.json)")
    r.add_argument("--experiment", default=None,
                   help="MLflow experiment (default: the study's, from study.json)")
    r.set_defaults(func=_report)

    u = subcommand(sub, "ui", "start the MLflow UI for a study",
                   "Start `mlflow ui` (with this Python's MLflow) on the study's tracking store, "
                   "bound to 127.0.0.1.")
    u.add_argument("--study", required=True, type=Path, help="study folder (holds study.json)")
    u.add_argument("--port", type=int, default=5000, help="port of the UI")
    u.set_defaults(func=_ui)
    _register_export(sub)


def _register_resume(sub: argparse._SubParsersAction) -> None:
    s = subcommand(sub, "resume", "continue a study from its folder alone",
                   "Replay the flags the study's first invocation recorded in DIR/study.json "
                   "(grid, data, budget, seeds, --set, overlays, tracking store, experiment, "
                   "resources): finished cells are skipped, failed and unfinished ones run again, "
                   "no cell gets a second MLflow run.")
    s.add_argument("--study", required=True, type=Path, metavar="DIR",
                   help="study folder (holds study.json)")
    s.add_argument("--wait", action="store_true",
                   help="if another invocation holds the study folder, wait for it instead of failing")
    s.set_defaults(func=_resume)


def _resume(args: argparse.Namespace) -> int:
    import shlex

    from study.session import recorded_invocation

    argv = ["study", *recorded_invocation(args.study.resolve()), *(["--wait"] if args.wait else [])]
    print(f"resuming: python run_study.py {shlex.join(argv[1:])}", flush=True)
    parser = argparse.ArgumentParser(prog="run_study.py")
    register(parser.add_subparsers(dest="command"))
    study_args = parser.parse_args(argv)
    study_args.argv = argv
    return _study(study_args)


def _register_export(sub: argparse._SubParsersAction) -> None:
    x = subcommand(
        sub, "export", "export a cell's best model with a model card (folder or .zip)",
        "Copy a cell's best checkpoint into a folder or zip with a model card "
        "(inputs and their order, preprocessing, training data, split sizes, metrics with "
        "intervals, code version, licence, how to run predict), and log it to the cell's "
        "MLflow run as artifacts and as an MLflow PyTorch model.")
    x.add_argument("--study", type=Path, required=True, metavar="DIR", help="study folder")
    which = x.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell", metavar="NAME",
                       help="cell name as in report.json / cell.json, e.g. unimodal/segan-cat/flair/wt/seed0")
    which.add_argument("--best", action="store_true",
                       help="the finished cell with the highest validation dice (val/best_dice; "
                       "never chosen on test)")
    x.add_argument("--out", type=Path, required=True,
                   help="output folder, or a .zip file")
    x.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: the study's, from study.json)")
    x.add_argument("--no-mlflow-log", action="store_true",
                   help="do not log the export to the cell's MLflow run")
    x.add_argument("--register", metavar="NAME", default=None,
                   help="also register the MLflow model under this name in the model registry "
                   "(default: not registered)")
    x.add_argument("--force", action="store_true", help="replace an existing --out")
    x.set_defaults(func=_export)


def _study(args: argparse.Namespace) -> int:
    from study.main import run_study_command

    return run_study_command(args)


def _report(args: argparse.Namespace) -> int:
    from study.main import report_command

    return report_command(args)


def _export(args: argparse.Namespace) -> int:
    from study.export import export_command

    return export_command(args.study, None if args.best else args.cell, args.out,
                          tracking_uri=args.tracking_uri, log=not args.no_mlflow_log,
                          register=args.register, force=args.force)


def _ui(args: argparse.Namespace) -> int:
    import os
    import subprocess
    import sys

    from study.main import study_tracking
    from study.mlflow_meta import open_runs_view

    uri, experiment = study_tracking(args.study.resolve(), None, None)
    # the running interpreter's mlflow: works without an activated virtualenv
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(args.port)]
    url = open_runs_view(uri, experiment, f"http://127.0.0.1:{args.port}")
    print(f"$ {' '.join(cmd)}\nopen {url}", flush=True)
    # no background job runner: it costs ~1 GB and is not needed to browse runs
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.call(cmd, env=env)

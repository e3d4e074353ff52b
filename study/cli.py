"""CLI for the study: `study` (default), `report`, `ui`. Imports stay light until used."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a study grid on Ray Tune (the default command)")
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
    p.add_argument("--address", default=None, help="join an existing Ray cluster: auto | ray://host:port")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
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
                   help="extra config YAML overlay(s), e.g. the HPO winner")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every cell, e.g. --set train.max_epochs=5")
    p.add_argument("--num-samples", type=int, default=None, help="HPO: number of Optuna samples")
    p.add_argument("--dry-run", action="store_true", help="print the trials by stage and exit")
    p.add_argument("--list-grids", action="store_true", help="list the grids and exit")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--wait", action="store_true",
                   help="if another invocation holds the study folder, wait for it instead of failing")
    p.set_defaults(func=_study)

    r = sub.add_parser("report", help="write report.md and heatmaps from a study's MLflow runs")
    r.add_argument("--study", required=True, type=Path, help="study folder (holds mlflow.db)")
    r.add_argument("--tracking-uri", default=None)
    r.add_argument("--experiment", default=None)
    r.set_defaults(func=_report)

    u = sub.add_parser("ui", help="start the MLflow UI for a study")
    u.add_argument("--study", required=True, type=Path)
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=_ui)


def _study(args: argparse.Namespace) -> int:
    from study.main import run_study_command

    return run_study_command(args)


def _report(args: argparse.Namespace) -> int:
    from study.main import report_command

    return report_command(args)


def _ui(args: argparse.Namespace) -> int:
    import os
    import subprocess
    import sys

    from study.main import study_tracking

    uri, _ = study_tracking(args.study.resolve(), None, None)
    # the running interpreter's mlflow: works without an activated virtualenv
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"$ {' '.join(cmd)}\nopen http://127.0.0.1:{args.port}", flush=True)
    # no background job runner: it costs ~1 GB and is not needed to browse runs
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.call(cmd, env=env)

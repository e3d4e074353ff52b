"""One study invocation, built once: typed options, Ray, the study folder, the MLflow
tracker with its parent run, and the runner. Grids and HPO both start here.

Nothing below the CLI sees argparse's namespace: ``StudyOptions.from_args`` is the
one place flags become typed values.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import write_text
from core.errors import UserError
from study.grids import Grid
from study.journal import JOURNAL_NAME
from study.ray_cluster import CONNECT_TIMEOUT_S
from study.runner import Resources, StudyRunner
from study.tracking import WAIT_S, Tracker
from study.tracking_store import adopt_empty_store, preload


@dataclass(frozen=True)
class StudyOptions:
    """Every flag of the study command, typed."""

    grid: str = "transfer_all"
    data: str | None = None
    budget: str | None = None
    study_dir: Path | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    address: str | None = None
    seeds: tuple[int, ...] | None = None
    overlays: tuple[Path, ...] = ()
    overrides: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    num_samples: int | None = None
    report: bool = True
    wait: bool = False
    """Wait for another invocation holding the study folder instead of failing."""
    argv: tuple[str, ...] = ()
    """The command line as typed."""
    connect_timeout: float = CONNECT_TIMEOUT_S
    """Seconds to join the cluster named by ``address`` before failing with one line."""
    tracking_wait: float = WAIT_S
    """Seconds to wait for an unanswering MLflow store where the study needs it (the start
    of a stage, the end); writes meanwhile go to the study's tracking journal."""

    @classmethod
    def from_args(cls, args: Any) -> StudyOptions:
        for token in filter(None, args.inject_failure.split(",")):
            epoch = token.partition("@")[2]
            if epoch and not epoch.isdigit():
                raise UserError(f"--inject-failure {token!r}: the part after @ must be an epoch "
                                f"number, e.g. {token.partition('@')[0]}@2")
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
        except ValueError:
            raise UserError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
        return cls(
            grid=args.grid, data=args.data, budget=args.budget,
            study_dir=Path(args.study_dir) if args.study_dir else None,
            tracking_uri=args.tracking_uri, experiment=args.experiment, address=args.address,
            seeds=seeds, overlays=tuple(Path(p).resolve() for p in args.overlay),
            overrides=parse_sets(args.set),
            resources=Resources(args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent,
                                args.max_failures, args.inject_failure),
            num_samples=args.num_samples, report=not args.no_report, wait=args.wait,
            argv=tuple(getattr(args, "argv", ()) or ()),
            connect_timeout=float(getattr(args, "connect_timeout", None) or CONNECT_TIMEOUT_S),
            tracking_wait=float(getattr(args, "tracking_wait", None)
                                or os.environ.get("SEGAN_TRACKING_WAIT") or WAIT_S))

    def invocation(self, grid: Grid, study_dir: Path, store: str, uri: str,
                   experiment: str) -> list[str]:
        """The study's flags, normalized so they name the same cells from any folder: absolute
        paths, the resolved budget, the tracking store and experiment actually used. Recorded
        in ``study.json``; ``resume --study DIR`` replays them (fault drills are not kept)."""
        name = self.grid
        if Path(name).suffix in (".yaml", ".yml") and Path(name).exists():
            name = str(Path(name).resolve())
        out = ["--grid", name, "--study-dir", str(study_dir), "--data", store,
               "--budget", grid.budget, "--tracking-uri", uri, "--experiment", experiment]
        if self.seeds:
            out += ["--seeds", ",".join(str(s) for s in self.seeds)]
        for overlay in self.overlays:
            out += ["--overlay", str(overlay)]
        for key, value in self.overrides.items():
            out += ["--set", f"{key}={value}"]
        res = self.resources
        out += ["--cpus-per-trial", f"{res.cpus_per_trial:g}", "--max-concurrent",
                str(res.max_concurrent), "--max-failures", str(res.max_failures)]
        if res.gpus_per_trial is not None:
            out += ["--gpus-per-trial", f"{res.gpus_per_trial:g}"]
        if self.address:
            out += ["--address", self.address, "--connect-timeout", f"{self.connect_timeout:g}"]
        if self.num_samples is not None:
            out += ["--num-samples", str(self.num_samples)]
        return out + ([] if self.report else ["--no-report"])


def resume_command(study_dir: Path) -> str:
    """The command that continues a study from its folder (``study.json`` holds the flags)."""
    import shlex

    return f"python run_study.py resume --study {shlex.quote(str(study_dir))}"


def recorded_invocation(study_dir: Path) -> list[str]:
    """The flags ``study.json`` recorded for the study in ``study_dir`` (``resume``)."""
    meta_path = study_dir / "study.json"
    if not meta_path.exists():
        raise UserError(f"{study_dir}: no study.json (not a study folder, or the study never started)")
    try:
        argv = json.loads(meta_path.read_text()).get("invocation")
    except (OSError, ValueError) as exc:
        raise UserError(f"{meta_path}: unreadable ({exc})") from None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise UserError(f"{meta_path} records no invocation (written by an older version): "
                        "re-run the study's original command instead")
    return list(argv)


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def hardware() -> str:
    """This machine's CPU model, CPU count and NVIDIA GPUs, read from ``/proc`` (the driver
    does not import torch; only trials do)."""
    import glob

    cpu = proc_value("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()
    gpus = [proc_value(path, "Model") for path in sorted(glob.glob(NVIDIA_GPUS))]
    return f"{cpu}, {os.cpu_count()} CPUs, {', '.join(filter(None, gpus)) or 'no NVIDIA GPU'}"


NVIDIA_GPUS = "/proc/driver/nvidia/gpus/*/information"
"""One file per GPU that NVIDIA's driver sees, with a ``Model:`` line."""


def proc_value(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a ``/proc`` file ("" if none)."""
    try:
        with open(path) as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""


def eval_split_of(manifest: Mapping[str, Any]) -> str:
    """``test`` when the store holds a test split, else ``val`` (and every name says so)."""
    return "test" if any(r.get("split") == "test" for r in manifest.get("cases", [])) else "val"


def split_population(manifest: Mapping[str, Any], split: str) -> dict[str, str]:
    """Cases and patients of ``split`` (tags every run carries, for the report header)."""
    rows = [r for r in manifest.get("cases", []) if r.get("split") == split]
    patients = {r.get("patient") or r["case_id"] for r in rows}
    return {"eval_cases": str(len(rows)), "eval_patients": str(len(patients))}


@dataclass
class StudySession:
    options: StudyOptions
    grid: Grid
    store: str
    manifest: dict[str, Any]
    study_dir: Path
    tracker: Tracker
    runner: StudyRunner
    lock: Any = None
    """The open lock file: held until ``close`` (the OS releases it if the process dies)."""

    def close(self) -> None:
        """Deliver the tracking journal (briefly), drop this node's shared copy of the
        training data, then release the study folder."""
        from core.data import shared_cache

        self.tracker.close(wait_s=0.0 if self.tracker.outage.down else 30.0)
        shared_cache.remove(str(self.manifest["store_id"]))
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def _warm_up(staging: Path, study_dir: Path, new_store: bool) -> None:
    """Work that needs neither Ray nor the study folder, done while Ray starts: MLflow's
    and Tune's imports (~2 s each) and, for a ``new_store`` (a new study whose store is the
    default one in its folder), an empty tracking store (``preload``)."""
    import contextlib

    preload(staging / "mlflow.db" if new_store else None, study_dir / "mlartifacts")
    with contextlib.suppress(Exception):  # an import error surfaces again where it is used
        import study.callbacks  # noqa: F401 - Ray Tune and the study's callback
        import study.scheduling  # noqa: F401


def open_session(options: StudyOptions, grid: Grid, store: str,
                 manifest: dict[str, Any]) -> StudySession:
    """Ray, the study folder and ``study.json``, the tracker and its parent run, the runner."""
    from core.version import code_version
    from study.ray_cluster import cluster_gpus, init_ray, print_dashboard
    from study.runner import decide_gpus
    from study.tracking import default_tracking_uri

    study_dir = (options.study_dir or Path("studies") / grid.name).resolve()
    staging = Path(tempfile.mkdtemp(prefix="segan-store-"))
    try:
        new_store = options.tracking_uri is None and not (study_dir / "mlflow.db").exists()
        warming = threading.Thread(target=_warm_up, args=(staging, study_dir, new_store),
                                   daemon=True, name="warm-up")
        warming.start()  # overlaps Ray's start, which mostly waits for its processes
        print_dashboard(init_ray(options.address, connect_timeout=options.connect_timeout))
        warming.join()
        decide_gpus(options.resources.gpus_per_trial, cluster_gpus())  # refuse before any file
        study_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_study(study_dir, options.wait)
        uri = options.tracking_uri or default_tracking_uri(study_dir)
        adopt_empty_store(staging / "mlflow.db", uri)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    experiment = options.experiment or f"study-{grid.name}"
    tracker = Tracker(uri, experiment,
                      artifact_root=study_dir / "mlartifacts" if uri.startswith("sqlite") else None,
                      journal=study_dir / JOURNAL_NAME, wait_s=options.tracking_wait)
    if uri != default_tracking_uri(study_dir):  # a shared store: one folder per experiment
        tracker.claim_study_dir(study_dir)
    write_text(study_dir / "study.json", json.dumps(
        {"tracking_uri": uri, "experiment": experiment, "grid": grid.name, "budget": grid.budget,
         "data": store, "store_id": manifest["store_id"],
         "invocation": options.invocation(grid, study_dir, store, uri, experiment)}, indent=2))
    stale = tracker.close_running("KILLED", "an earlier invocation stopped without ending it")
    if stale:
        print(f"closed {stale} run(s) left RUNNING by an earlier invocation (now KILLED)", flush=True)
    split = eval_split_of(manifest)
    context = {"budget": grid.budget, "store_id": manifest["store_id"],
               "code_version": code_version()}
    tracker.start_parent(f"{grid.name} {time.strftime('%Y-%m-%d %H:%M')}", {**context, "grid": grid.name},
                         {"grid": grid.name, "budget": grid.budget, "data": store,
                          "hardware": hardware(), "n_trials": len(grid.trials)})
    runner = StudyRunner(grid, tracker, study_dir, store, split, options.resources,
                         {**context, "eval_split": split, **split_population(manifest, split)})
    return StudySession(options, grid, store, manifest, study_dir, tracker, runner, lock)


LOCK_NAME = ".study.lock"


def lock_study(study_dir: Path, wait: bool) -> Any:
    """Hold an exclusive lock on the study folder for this process's lifetime.

    ``flock`` is released by the OS when the holder exits or dies, so a killed driver
    never leaves a stale lock. A second invocation fails naming the holder (or waits).
    """
    import fcntl
    import socket

    handle = open(study_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"study folder {study_dir} is in use by {holder}; wait for it to end "
                        f"(or pass --wait), or use another --study-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    return handle


def replay_journal(study_dir: Path, uri: str, experiment: str) -> None:
    """Deliver what an earlier invocation journaled but could not send (``report`` calls
    this before reading MLflow). Skipped while an invocation holds the folder: it owns the
    journal and delivers it itself."""
    if not (study_dir / JOURNAL_NAME).exists():
        return
    try:
        lock = lock_study(study_dir, wait=False)
    except UserError:
        return
    try:
        Tracker(uri, experiment, journal=study_dir / JOURNAL_NAME, wait_s=30.0).close(wait_s=0.0)
    finally:
        lock.close()


@contextmanager
def parent_run(session: StudySession) -> Iterator[dict[str, Any]]:
    """Ends the invocation's parent run whatever happens; the body fills ``status`` and the
    summary. If the body raises, the parent and every run still RUNNING end FAILED."""
    outcome: dict[str, Any] = {"status": "FAILED", "summary": {"trials": len(session.grid.trials)}}
    tracker = session.tracker
    try:
        yield outcome
    finally:  # journaled writes only: they cannot fail, even with the store down
        if outcome["status"] == "FAILED":  # the driver itself failed: leave no run RUNNING
            tracker.close_open("FAILED", "the study driver failed")
        tracker.end_parent(outcome["status"], outcome["summary"])
    # the report reads MLflow: everything journaled must be there first (bounded wait)
    tracker.sync(tracker.wait_s, "delivering the study's last entries")

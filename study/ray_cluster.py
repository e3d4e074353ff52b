"""Ray for a study: a fresh local Ray bound to loopback, or a cluster joined within a
timeout (``--address``), and the settings that let trials start on Ray's idle workers."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError
from study.reaper import tell_watcher, watch_local_ray

# Quiet Tune's console tables (the study prints its own progress) and skip its
# per-trial CSV/JSON/TensorBoard loggers: MLflow is the record. Set before Ray or Tune
# is imported or started (Ray's processes inherit them).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TUNE_TRIAL_ENV = {"PL_DISABLE_FORK": "1"}
"""What Tune gives every trial actor as its runtime_env (a PyTorch Lightning workaround);
the study hands it to trials through the job's environment instead."""


def trials_without_runtime_env() -> None:
    """Stop Tune from giving trial actors a runtime_env of their own.

    An actor with a runtime_env cannot run on the idle workers Ray starts ahead, which have
    none: the first trial then waited ~1.5 s for a new process and Ray's import. The same
    variables reach trials through ``init_ray`` (``TUNE_TRIAL_ENV``). Tune keeps them in a
    module-level dict (``ray.tune.execution.class_cache``); if a Ray release moves it,
    nothing breaks, the first trial is just slower."""
    from ray.tune.execution import class_cache

    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if isinstance(defaults, dict):
        for key in TUNE_TRIAL_ENV:
            defaults.pop(key, None)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


CONNECT_TIMEOUT_S = 30.0
"""Default bound on joining a cluster named by ``--address`` (``StudyOptions.connect_timeout``)."""


def init_ray(address: str | None, num_cpus: int | None = None,
             connect_timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Start a loopback-only local Ray (no ``address``) or join ``address`` within
    ``connect_timeout`` seconds; returns the dashboard URL (or '' without a dashboard)."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("MLFLOW_", "SEGAN_")) or k in ("PYTHONPATH",)}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(TUNE_TRIAL_ENV)
    kwargs: dict[str, Any] = {"log_to_driver": False}
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return _existing_dashboard_url()  # e.g. a test session or a notebook that started Ray
    if address and address != "local":
        ctx = _join(address, connect_timeout, {**kwargs, "runtime_env": {"env_vars": env}})
    else:
        # The local Ray's processes inherit the driver's environment. A job-level
        # runtime_env would do the same, but it keeps trials off the workers Ray starts
        # ahead of time (those run without one), so the first trial waits for a new process.
        os.environ.update(env)
        ctx = _start_local(num_cpus, kwargs)
    url = getattr(ctx, "dashboard_url", "") or ""
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url


def _start_local(num_cpus: int | None, kwargs: dict[str, Any]) -> Any:
    """A fresh Ray on this machine, every server bound to 127.0.0.1, never a cluster named by
    ``RAY_ADDRESS`` or an earlier ``ray start``.

    Ray binds its gRPC servers (GCS, raylet, workers, agents) and its metrics export to
    loopback only when the node address is 127.0.0.1, and resolves 127.0.0.1 to the
    machine's address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is off (read when
    ``ray`` is imported, and by every process Ray starts)."""
    if os.environ.pop("RAY_ADDRESS", None):
        print("note: RAY_ADDRESS is ignored: without --address the study starts its own "
              "local Ray (pass --address to join a cluster)", flush=True)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    for key, value in LOCAL_DASHBOARD_ENV.items():
        os.environ.setdefault(key, value)
    watch_local_ray()  # its agents would outlive a killed driver by a minute
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before this point
    with _without_idle_monitors(), _dashboard_modules(DASHBOARD_MODULES):
        ctx = ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK,
                       include_dashboard=True, dashboard_host=LOOPBACK,
                       _system_config=LOCAL_SYSTEM_CONFIG,
                       configure_logging=True, logging_level=logging.ERROR, **kwargs)
    tell_watcher(str(getattr(ctx, "address_info", {}).get("session_dir") or ""))
    return ctx


LOOPBACK = "127.0.0.1"

LOCAL_SYSTEM_CONFIG = {
    "enable_metrics_collection": False,  # no Prometheus scrapes a local study
    "worker_niceness": 0,
    **{key: 1000 for key in (  # the raylet's housekeeping timers, 100-250 ms by default
        "local_fs_monitor_interval_ms",  # is the disk full? (spilling)
        "memory_monitor_refresh_ms",  # is the node near OOM? (kills a worker before it)
        "kill_idle_workers_interval_ms",
        "object_manager_timer_freq_ms",  # object transfers between nodes: one node here
        "raylet_check_gc_period_milliseconds",
    )},
}
"""Ray settings of a local study's Ray. ``worker_niceness``: Ray starts its workers at
niceness 15 so that its own daemons win the CPU. Here the workers are the study's trials:
at 15, every wake-up of the driver, a Ray daemon or a kernel thread preempts the trial's
threads. Measured inside one trial on every core of a 2-core machine, flipping its
niceness between 0 and 15 every 5 s: 2-3 % more epochs per second at 0 (demo and smoke
budgets). A cluster joined with ``--address`` keeps its own settings.

The timers: the raylet woke every 100-250 ms for each (~28 wake-ups a second on its main
thread). A wake-up on a core where a trial's OpenMP thread runs stalls the trial's other
thread at the next barrier: measured here, a background process using 2.5 % of one core in
100 short wake-ups a second slowed a 2-thread training step by 9 %. At 1 s the raylet
used 0.2 % of a core instead of 0.5 % while a trial trained; the OOM check still runs every
second."""

LOCAL_DASHBOARD_ENV = {"METRICS_RECORD_INTERVAL_S": "3600"}
"""Read by a local study's dashboard, which inherits the driver's environment. Every 5 s the
dashboard measured its own and its nine module processes' CPU and memory (reading each
one's ``smaps_rollup``) for a Prometheus export that a local study turns off
(``enable_metrics_collection``): about a third of the dashboard's CPU while trials train."""

SKIPPED_MONITORS = {"include_log_monitor": False, "no_monitor": True}
"""Two of Ray's head processes a local study does not use: the log monitor forwards
workers' output to the driver (``log_to_driver`` is off; the files stay in Ray's session
folder) and the autoscaler's monitor resizes a cluster (a local node has a fixed size).
Both cost ~0.7 s of CPU each while Ray starts (measured: the study reached its trials
~0.8 s sooner without them on 2 cores), and the log monitor polls the log folder throughout
(~1 % of a core). Without the monitor, ``ray status`` says "No cluster status"; the
dashboard still shows the node and its resources."""


DASHBOARD_MODULES = ("NodeHead", "ReportHead", "StateHead", "JobHead", "EventHead")
"""Dashboard modules a local study loads: nodes, workers and their stacks, actors, tasks,
logs, jobs and events. Left out are the pages of libraries a study does not use (Ray Data,
Serve, Train), the metrics page (no Prometheus here), usage stats (off) and the modules
behind feature flags that are off by default (some Ray releases refuse to start a
dashboard asked for a module its flag disables). Each module is a process of its own that
woke ~20-40 times a second while trials trained."""


@contextlib.contextmanager
def _dashboard_modules(names: tuple[str, ...]) -> Iterator[None]:
    """While ``ray.init`` starts a local head, start its dashboard with only ``names``.

    ``ray.init`` has no argument for it; the dashboard's command line has
    (``--modules-to-load``). The dashboard refuses to start if a name is not a module, so
    every name must be a class of this Ray's dashboard modules; if one is missing (a Ray
    release renamed it) or Ray builds the command differently, all modules load as before."""
    from ray._private import ray_constants, services

    original = getattr(services, "start_ray_process", None)
    if original is None or not _dashboard_defines(names):
        yield
        return

    def start_ray_process(command: list[str], process_type: str, *args: Any, **kwargs: Any) -> Any:
        if process_type == ray_constants.PROCESS_TYPE_DASHBOARD and not any(
                str(part).startswith("--modules-to-load") for part in command):
            command = [*command, f"--modules-to-load={','.join(names)}"]
        return original(command, process_type, *args, **kwargs)

    with _replaced(services, "start_ray_process", start_ray_process):
        yield


def _dashboard_defines(names: tuple[str, ...]) -> bool:
    """Whether Ray's dashboard sources define a class for each of ``names`` (read as text:
    importing the modules costs ~1 s)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("ray.dashboard")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(next(iter(spec.submodule_search_locations))) / "modules"
    defined: set[str] = set()
    for source in root.glob("*/*.py"):
        defined.update(re.findall(r"^class (\w+)\(", source.read_text(errors="replace"), re.M))
    return set(names) <= defined


@contextlib.contextmanager
def _without_idle_monitors() -> Iterator[None]:
    """While ``ray.init`` starts a local head, build its parameters with ``SKIPPED_MONITORS``.

    ``ray.init`` has no argument for them; it builds ``ray._private.parameter.RayParams``,
    which has. If a Ray release renames either, the monitors simply start as before."""
    from ray._private import parameter

    original = parameter.RayParams
    names = inspect.signature(original.__init__).parameters
    if not all(k in names for k in SKIPPED_MONITORS):
        yield
        return

    class LocalStudyParams(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, **SKIPPED_MONITORS})

    with _replaced(parameter, "RayParams", LocalStudyParams):
        yield


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block, and what it was again after it."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _join(address: str, timeout: float, kwargs: dict[str, Any]) -> Any:
    """``ray.init(address)`` bounded: a refused or silent address fails with one line.

    Ray itself retries a dead GCS for minutes, so the address is first probed with a
    plain TCP connection; a port that accepts but never answers as Ray is cut off by a
    watchdog that ends the process (nothing has been started or written yet)."""
    import threading

    import ray

    started = time.monotonic()
    target = _bootstrap_target(address)
    _probe(address, target, timeout)
    where = address if target == address else f"{address} ({target})"
    message = f"error: no Ray cluster answered at {where} within {timeout:g} s (--connect-timeout)"
    left = max(1.0, timeout - (time.monotonic() - started))
    watchdog = threading.Timer(left, _give_up, args=(message,))
    watchdog.daemon = True
    watchdog.start()
    try:
        return ray.init(address=address, configure_logging=True, logging_level=logging.ERROR, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot join the Ray cluster at {address}: {first[:300]}") from None
    finally:
        watchdog.cancel()


def _give_up(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(2)


def _bootstrap_target(address: str) -> str:
    """``host:port`` that ``address`` (``auto``, ``host:port``, ``ray://host:port``) names."""
    if address.startswith("ray://"):
        return address[len("ray://"):].split("/")[0]
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as exc:
            raise UserError(f"--address auto: {str(exc).splitlines()[0]}") from None
        if not found:
            raise UserError("--address auto: no running Ray cluster found on this machine")
        return str(found)
    return address


def _probe(address: str, target: str, timeout: float) -> None:
    import socket

    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        where = address if target == address else f"{address} ({target})"
        raise UserError(f"no Ray cluster at {where}: {exc.strerror or exc} "
                        f"(--connect-timeout {timeout:g} s)") from None


def _existing_dashboard_url() -> str:
    try:
        from ray._private import worker

        url = worker.get_dashboard_url()
    except Exception:  # noqa: BLE001 - private API; the URL is only informative
        return ""
    return f"http://{url}" if url and not url.startswith("http") else (url or "")


def print_dashboard(url: str) -> None:
    if not url:
        print("Ray dashboard: not available (install ray[default])", flush=True)
        return
    print(f"Ray dashboard: {url}", flush=True)
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
        print("  (if it asks for a token: `ray get-auth-token`; set RAY_AUTH_MODE=disabled "
              "before starting Ray to turn authentication off)", flush=True)
    sys.stdout.flush()

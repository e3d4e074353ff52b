"""Ray as the study starts it: the local default listens on loopback only and ignores
RAY_ADDRESS; ``--address`` to a dead or silent cluster fails within the connect timeout
with one line. Real processes; sockets read from /proc (no psutil needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.ray_cluster import DASHBOARD_MODULES, _dashboard_defines
from tests.processes import marked_processes, process_tree, ray_left_behind

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")

LOCAL = """
import sys
sys.path.insert(0, {repo!r})
from study.ray_cluster import init_ray
init_ray(None, num_cpus=1)
import ray
ray.get(ray.remote(lambda: 1).remote())   # a worker process exists too
print("node", ray.util.get_node_ip_address(), flush=True)
sys.stdin.readline()                      # hold Ray up while the test reads the sockets
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
    except OSError:
        pass
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _address(hexaddr: str, v6: bool) -> tuple[str, int]:
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if v6:  # four little-endian 32-bit words
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


def listening_sockets(root: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket listening in ``root``'s process tree."""
    owner = {ino: pid for pid in process_tree(root) for ino in _socket_inodes(pid)}
    rows = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:  # 0A = LISTEN
                ip, port = _address(fields[1], v6)
                name = Path(f"/proc/{owner[fields[9]]}/comm").read_text().strip()
                rows.append((ip, port, name))
    return sorted(rows)


def test_local_ray_listens_on_loopback_only_and_ignores_ray_address():
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}  # must not be joined
    proc = subprocess.Popen([sys.executable, "-c", LOCAL.format(repo=str(REPO))], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("node "):
                break
        assert lines and lines[-1].split() == ["node", "127.0.0.1"], "".join(lines)
        assert any(line.startswith("note: RAY_ADDRESS is ignored") for line in lines), "".join(lines)
        time.sleep(1.0)  # agents bind shortly after the node is up
        sockets = listening_sockets(proc.pid)
        names = {name for _, _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # we did see Ray's servers
        exposed = [s for s in sockets if s[0] not in LOOPBACK]
        assert not exposed, f"listening beyond loopback: {exposed}"
        commands = [_command(pid) for pid in process_tree(proc.pid)]
        assert any("dashboard.py" in c for c in commands), commands  # we did see Ray's own
        modules = {c.split("ray-dashboard-", 1)[1].split()[0].rsplit("-", 1)[0]
                   for c in commands if "ray-dashboard-" in c}
        assert "NodeHead" in modules and modules <= set(DASHBOARD_MODULES), modules
        monitors = [c for c in commands if "log_monitor.py" in c or "_private/monitor.py" in c]
        assert not monitors, f"Ray's monitors run in a local study: {monitors}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_dashboard_modules_are_restricted_only_to_names_this_ray_defines():
    assert _dashboard_defines(DASHBOARD_MODULES)
    assert not _dashboard_defines((*DASHBOARD_MODULES, "NoSuchHead"))  # then all modules load


def test_a_killed_driver_leaves_no_ray_process_behind():
    """Ray's agents would outlive a SIGKILLed driver by ~60 s; the reaper ends them."""
    from study.reaper import OWNER_VAR

    proc = subprocess.Popen([sys.executable, "-c", LOCAL.format(repo=str(REPO))], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("node "):
            break
    time.sleep(1.0)  # the agents are up
    prefix = f"{OWNER_VAR}={proc.pid}-".encode()
    ray = marked_processes(prefix)
    assert {"gcs_server", "raylet"} <= set(ray.values()) and len(ray) >= 4, (ray, "".join(lines))
    tree = process_tree(proc.pid)  # the agents too: renamed, they lose the mark (see reaper)
    assert sum(1 for _, name in tree.values() if name.startswith("ray::")) >= 3, tree
    proc.kill()
    proc.wait()
    left = ray_left_behind(proc.pid, tree=tree)
    assert not left, f"still running 15 s after the driver was killed: {left}"


def test_address_with_nothing_listening_fails_fast_with_one_line(tmp_path, synthetic_store):
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "run_study.py"), "--grid", "smoke", "--data",
                           str(synthetic_store), "--study-dir", str(tmp_path / "s"), "--address",
                           address, "--no-report"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.monotonic() - started < 60
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: no Ray cluster at {address}"), proc.stderr
    assert not (tmp_path / "s" / "study.json").exists()


SILENT = """
import socket, sys
sys.path.insert(0, {repo!r})
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)
from study.ray_cluster import init_ray
init_ray("127.0.0.1:%d" % server.getsockname()[1], connect_timeout=4)
print("joined?!")
"""


def test_address_that_accepts_but_never_answers_is_cut_at_the_timeout():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SILENT.format(repo=str(REPO))], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "joined?!" not in proc.stdout
    assert "error: no Ray cluster answered at 127.0.0.1:" in proc.stderr and "within 4 s" in proc.stderr
    assert took < 40, took


FIRST_TRIAL = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
os.environ["SEGAN_PROBE"] = "from the driver"
from study.ray_cluster import init_ray, trials_without_runtime_env
# Two CPUs: Ray prestarts one worker per CPU, and after a second idle it reaps workers
# beyond num_cpus counting the driver, so one CPU would leave none on a loaded machine.
init_ray(None, num_cpus=2)
from ray import tune

def idle_workers():
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{{entry}}/cmdline").read_bytes().startswith(b"ray::IDLE"):
                found.add(int(entry))
        except OSError:
            pass
    return found

idle = set()  # every prestarted worker seen, even one reaped before the trial starts
deadline = time.monotonic() + 60
while len(idle) < 2 and time.monotonic() < deadline:  # Ray starts them after the driver joins
    idle |= idle_workers()
    time.sleep(0.05)

def probe(config):
    tune.report({{"pid": os.getpid(), "nice": os.nice(0), "pl": os.environ.get("PL_DISABLE_FORK", ""),
                 "probe": os.environ.get("SEGAN_PROBE", ""),
                 "path": os.environ.get("PYTHONPATH", "")}})

trials_without_runtime_env()
result = tune.Tuner(probe, run_config=tune.RunConfig(storage_path={storage!r}, verbose=0)).fit()
print(json.dumps({{"idle": sorted(idle), "driver_nice": os.nice(0),
                  **{{k: result[0].metrics[k] for k in ("pid", "nice", "pl", "probe", "path")}}}}))
"""


def test_the_first_trial_runs_on_a_worker_ray_started_ahead_with_the_study_environment(tmp_path):
    """No runtime_env on the job or the trial actor (it would need a new process): the
    variables reach the trial by inheritance from the driver. The trial runs at the
    driver's niceness, not Ray's default +15 for workers (every daemon would preempt it)."""
    script = FIRST_TRIAL.format(repo=str(REPO), storage=str(tmp_path / "ray_results"))
    proc = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["idle"], "Ray started no worker ahead of time"
    assert seen["pid"] in seen["idle"], seen
    assert seen["nice"] == seen["driver_nice"], seen
    assert seen["pl"] == "1" and seen["probe"] == "from the driver", seen
    assert str(REPO) in seen["path"].split(os.pathsep), seen

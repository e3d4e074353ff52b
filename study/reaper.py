"""Ends what is left of the study's local Ray when the driver that started it dies.

Ray ties its GCS and raylet to the driver (the kernel kills them with it), but its agents
outlive a SIGKILLed driver by about a minute: their last act, reporting the raylet's death
to the GCS that died with it, waits out a 60-s RPC timeout while they hold ports and
memory. So every process of the local Ray inherits a mark (``OWNER_VAR``) from the
driver, and a tiny watcher process holds the read end of a pipe whose write end only the
driver has: the kernel closes it however the driver ends (exit, Ctrl-C, SIGKILL, OOM), the
watcher wakes and ends whatever still carries the mark. The agents lose the mark: they
rename themselves (``setproctitle``), which overwrites what ``/proc/<pid>/environ`` shows.
So the watcher also ends Ray's processes that hold a file of the session's folder open
(every Ray process logs there); the driver writes that folder into the pipe once Ray is up
(``tell_watcher``), and the watcher also reads it off the marked processes' command lines.
The driver's normal exit also leaves this to the watcher (``exit_to_watcher``): Ray's own
shutdown at exit ends the same processes gracefully but takes 3–4 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys

OWNER_VAR = "SEGAN_RAY_OWNER"
"""Environment variable every process of the study's local Ray inherits: ``<pid>-<random>``."""

GRACE_S = 2.0
"""Seconds between SIGTERM and SIGKILL for a marked process that is still there."""

_WATCHER = r"""
import os, re, signal, sys, time
mark, grace = sys.argv[1].encode(), float(sys.argv[2])
said = b""
try:
    while chunk := os.read(0, 4096):
        said += chunk             # the session folders the driver names (tell_watcher)
except OSError:
    pass                          # EOF: the driver's end of the pipe is closed, it has ended
sessions = {line.rstrip(b"/") + b"/" for line in said.splitlines() if line.strip()}

def read(pid, what):
    with open(f"/proc/{pid}/{what}", "rb") as fh:
        return fh.read()

def holds_session_file(pid):
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}").encode()
        except OSError:
            continue
        if any(target.startswith(s) for s in sessions):
            return True
    return False

def marked():
    pids, others = [], []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if mark not in read(entry, "environ").split(b"\0"):
                    others.append(entry)
                    continue
                found = re.findall(rb"--session[_-]dir=([^\0]+)", read(entry, "cmdline"))
                sessions.update(m.rstrip(b"/") + b"/" for m in found)
                pids.append(int(entry))
            except OSError:       # gone, a zombie, or not ours to read
                pass
    for entry in others if sessions else ():
        try:  # an agent: renamed, its environ no longer shows the mark
            if b"ray" in read(entry, "cmdline") and holds_session_file(entry):
                pids.append(int(entry))
        except OSError:
            pass
    return pids

for sig in (signal.SIGTERM, signal.SIGKILL):
    pids = list(marked())
    if not pids:
        break
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(grace)
"""

_DRIVER_END: list[int] = []
"""The pipe's write end, open for this process's lifetime (only ``tell_watcher`` writes)."""


def watch_local_ray() -> str:
    """Mark this process's environment (inherited by the Ray it is about to start) and
    start the watcher. Linux only (``/proc``); elsewhere a no-op. Returns the mark's value."""
    if not sys.platform.startswith("linux"):
        return ""
    if os.environ.get(OWNER_VAR, "").startswith(f"{os.getpid()}-"):
        return os.environ[OWNER_VAR]  # already watched (Ray started twice in one process)
    token = f"{os.getpid()}-{secrets.token_hex(6)}"
    read_end, write_end = os.pipe()  # not inheritable: Ray's processes never hold it open
    env = {k: v for k, v in os.environ.items() if k != OWNER_VAR}  # the watcher is unmarked
    subprocess.Popen([sys.executable, "-c", _WATCHER, f"{OWNER_VAR}={token}", str(GRACE_S)],
                     stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env=env, start_new_session=True)  # outside the driver's Ctrl-C group
    os.close(read_end)
    _DRIVER_END.append(write_end)
    os.environ[OWNER_VAR] = token
    return token


def tell_watcher(session_dir: str) -> None:
    """Name the local Ray's session folder to the watcher (see the module's docstring)."""
    if _DRIVER_END and session_dir:
        with contextlib.suppress(OSError):
            os.write(_DRIVER_END[0], session_dir.encode() + b"\n")


def exit_to_watcher(code: int) -> None:
    """End this process now with ``code`` if it started a watched local Ray: the watcher
    ends Ray's processes at once, where Ray's atexit shutdown would spend 3–4 s on the same
    (a 0.5-s pause for log lines, the driver's disconnect, a wait per process). Everything
    of the study's own is closed by then: tracking journal, lock, files. Returns if there is
    no watcher (no Ray, or a joined cluster), for the normal exit."""
    if not _DRIVER_END:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`) or stream
            stream.flush()
    os._exit(code)

"""Ends what is left of the study's local Ray when the driver that started it dies.

Ray ties its GCS and raylet to the driver (the kernel kills them with it), but its agents
outlive a SIGKILLed driver by about a minute: their last act, reporting the raylet's death
to the GCS that died with it, waits out a 60-s RPC timeout while they hold ports and
memory. So every process of the local Ray inherits a mark (``OWNER_VAR``) from the
driver, and a tiny watcher process holds the read end of a pipe whose write end only the
driver has: the kernel closes it however the driver ends (exit, Ctrl-C, SIGKILL, OOM), the
watcher wakes and ends whatever still carries the mark. The driver's normal exit also
leaves this to the watcher (``exit_to_watcher``): Ray's own shutdown at exit ends the same
processes gracefully but takes 3–4 s.
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
import os, signal, sys, time
mark, grace = sys.argv[1].encode(), float(sys.argv[2])
try:
    while os.read(0, 4096):
        pass                      # EOF: the driver's end of the pipe is closed, it has ended
except OSError:
    pass

def marked():
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if mark in fh.read().split(b"\0"):
                        yield int(entry)
            except OSError:       # gone, a zombie, or not ours to read
                pass

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
"""The pipe's write end: never written, open for this process's lifetime."""


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

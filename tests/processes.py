"""Processes of a study's local Ray, found by the mark they inherit (``study.reaper``)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def marked_processes(prefix: bytes) -> dict[int, str]:
    """pid -> name of every process whose environment has an entry starting with ``prefix``."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if any(e.startswith(prefix) for e in env):
                found[int(entry)] = name
    return found


def ray_left_behind(driver_pid: int, within_s: float = 15.0) -> dict[int, str]:
    """The marked processes of the driver ``driver_pid`` still there after ``within_s`` s."""
    from study.reaper import OWNER_VAR

    prefix = f"{OWNER_VAR}={driver_pid}-".encode()
    deadline = time.monotonic() + within_s
    while (left := marked_processes(prefix)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left

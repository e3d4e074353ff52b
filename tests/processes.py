"""Processes of a study's local Ray: found by the mark they inherit (``study.reaper``) or
as the driver's process tree. The tree catches what the mark cannot: Ray's agents rename
themselves (``setproctitle``), which blanks their ``/proc/<pid>/environ``."""

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


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of a live process, else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[19])


def process_tree(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (start time, name) of ``root`` and every descendant, now."""
    kids: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        if (st := _stat(int(entry))) is not None:
            kids.setdefault(st[0], []).append(int(entry))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is None:
            continue
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        tree[pid] = (st[2], name)
        todo += kids.get(pid, [])
    return tree


def still_running(tree: dict[int, tuple[int, str]]) -> dict[int, str]:
    """The processes of ``tree`` that are still running (the same process: its start time
    matches; zombies do not count)."""
    left = {}
    for pid, (started, name) in tree.items():
        st = _stat(pid)
        if st is not None and st[2] == started and st[1] != "Z":
            left[pid] = name
    return left


def ray_left_behind(driver_pid: int, within_s: float = 15.0,
                    tree: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:
    """The processes of the driver ``driver_pid``'s Ray still there after ``within_s`` s:
    those carrying its mark, and those of ``tree`` (its process tree, taken while it ran)."""
    from study.reaper import OWNER_VAR

    prefix = f"{OWNER_VAR}={driver_pid}-".encode()
    deadline = time.monotonic() + within_s

    def left() -> dict[int, str]:
        return {**marked_processes(prefix), **still_running(tree or {})}

    while (found := left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found

"""The code version recorded in checkpoints, stores and MLflow runs."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """Git commit (with ``-dirty``) of this checkout, else the installed package version.

    Once per process: the code a process runs does not change, and training names it in a
    checkpoint every epoch (a ``git`` process each time, before)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"segan-study {version('segan-study')}"
        except PackageNotFoundError:
            return "unknown"

"""The code version recorded in checkpoints, stores and MLflow runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """Git commit (with ``-dirty``) of this checkout, else the installed package version."""
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

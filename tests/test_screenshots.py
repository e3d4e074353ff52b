"""scripts/screenshots.py: PNGs of the MLflow runs view and a run page (headless Chromium);
one ``skipped:`` line where no browser is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshots.py"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_no_browser_is_one_skip_line(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("playwright") is not None:
        pytest.skip("Playwright is installed: the script would use it")
    env = {**os.environ, "PATH": str(tmp_path)}  # no browser on this PATH
    done = _run(["--study", str(tmp_path)], env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("skipped: no headless browser") and done.stdout.count("\n") == 1


def test_screenshots_of_runs_view_and_run_page(tmp_path: Path) -> None:
    if not any(shutil.which(b) for b in BROWSERS):
        pytest.skip("no chromium / chromium-browser / google-chrome installed")
    from study.grids import ExpandContext, expand
    from study.tracking import Tracker, default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "shots", artifact_root=tmp_path / "art")
    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("study", {}, {"grid": "smoke"})
    run_id = tracker.open_trial_run(spec, {"trial_id": spec.trial_id, "role": "trial"}, None)
    tracker.trial_started(run_id)
    for epoch in (1, 2, 3):
        tracker.log_metrics(run_id, {"val/dice": 0.2 * epoch}, step=epoch)
    tracker.finish(run_id, "FINISHED")
    tracker.end_parent("FINISHED", {"done": 1})
    (tmp_path / "study.json").write_text(json.dumps({"tracking_uri": uri, "experiment": "shots"}))
    done = _run(["--study", str(tmp_path)])
    assert done.returncode == 0, done.stderr + done.stdout
    for name in ("runs.png", "run.png", "metrics.png"):
        png = tmp_path / "screenshots" / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a rendered page, not a blank one
    assert f"runs/{run_id}" in done.stdout

"""The disk under the tracking store fills up: writes do not raise, the user gets one
line, entries wait in the journal (on another disk) and reach the store once space is
back, exactly once. A real SQLite store on a real 8 MB tmpfs (skipped where it cannot
be mounted)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from study.grids import ExpandContext, expand
from study.journal import JOURNAL_NAME
from study.tracking import Tracker


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError:
            pass
    return filler


def test_full_disk_under_the_store_is_an_outage_not_a_crash(small_disk, tmp_path, capsys):
    uri = f"sqlite:///{(small_disk / 'mlflow.db').as_posix()}"
    study = tmp_path / "study"
    study.mkdir()
    tracker = Tracker(uri, "full", journal=study / JOURNAL_NAME, wait_s=5)
    tracker.outage.retry_every = 0.5
    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("p", {}, {})
    run_id = tracker.open_trial_run(spec, {"trial_id": spec.trial_id}, None)
    tracker.log_metrics(run_id, {"train/loss_s": 1.0}, step=1)

    filler = _fill(small_disk)
    for step in range(2, 40):  # enough to overflow SQLite's free pages
        tracker.log_metrics(run_id, {"train/loss_s": float(step), "note/" + "x" * 200: 1.0}, step=step)
    tracker.set_tags(run_id, {"stopped": "max_epochs"})
    tracker.finish(run_id, "FINISHED")
    out = capsys.readouterr().out
    assert "Traceback" not in out
    assert sum("is unavailable" in line for line in out.splitlines()) == 1, out
    assert tracker.journal.pending and (study / JOURNAL_NAME).exists()

    filler.unlink()  # space is back
    tracker.sync(30, "test")
    assert "is back after" in capsys.readouterr().out
    assert not (study / JOURNAL_NAME).exists()
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stopped"] == "max_epochs"
    steps = sorted(m.step for m in tracker.client.get_metric_history(run_id, "train/loss_s"))
    assert steps == list(range(1, 40))

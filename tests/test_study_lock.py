"""One invocation per study folder: a second one is refused naming the holder, and the
lock dies with its holder (a real second process, killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import run_study

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from pathlib import Path; "
        "from study.session import lock_study; h = lock_study(Path({d!r}), False); "
        "print('locked', flush=True); time.sleep(120)")


def test_second_invocation_is_refused_until_the_holder_dies(tmp_path, synthetic_store, capsys):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), d=str(study_dir))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        args = ["--grid", "smoke", "--data", str(synthetic_store), "--study-dir", str(study_dir),
                "--no-report"]
        assert run_study.main(args) == 2
        err = capsys.readouterr().err
        assert f"study folder {study_dir} is in use by pid {holder.pid}" in err
        assert not (study_dir / "study.json").exists()  # nothing was started or logged
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    from study.session import lock_study

    deadline = time.monotonic() + 10
    while True:  # the OS released the dead holder's lock
        try:
            lock_study(study_dir, wait=False).close()
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.1)

"""bench/step_tf.py and bench/step.py's TF column skip cleanly where TensorFlow is absent."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load_step():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_step", BENCH / "step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def no_tf() -> None:
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed in this interpreter")


def test_step_tf_without_tensorflow_prints_one_skipped_line(no_tf: None) -> None:
    out = subprocess.run([sys.executable, str(BENCH / "step_tf.py"), "--width", "0.125",
                          "--crop", "32", "--steps", "1"], capture_output=True, text=True,
                         timeout=120, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["engine"] == "tensorflow"
    assert "pip install tensorflow" in row["skipped"]


def test_tf_worker_reports_skip_instead_of_failing(no_tf: None) -> None:
    step = _load_step()
    worker = step.TFWorker(sys.executable, 0.125, 32, 8, "off", 1)
    assert "skipped" in worker.info
    assert worker.proc.poll() is not None  # the child is gone


def test_interleaved_rotates_the_order() -> None:
    step = _load_step()
    calls: list[str] = []

    def runner(name: str):  # type: ignore[no-untyped-def]
        def run() -> float:
            calls.append(name)
            return 1.0
        return run

    times = step.interleaved({n: runner(n) for n in "abc"}, 3)
    assert calls == list("abcbcacab")
    assert times == {n: [1.0, 1.0, 1.0] for n in "abc"}

"""End-to-end `smoke` study on the real stack: Ray Tune, MLflow (SQLite), zarr.

One study folder goes through three invocations (one test, in order):
1. with a deliberately failing source: the failure is recorded, its dependants skipped
   (and a dry run marks each cell as its run left it);
2. a fresh process interrupted with SIGINT: stops cleanly, leaves no RUNNING run;
3. the same command again: resumes, and every grid cell ends with exactly one
   FINISHED run; transfers start from their source's best weights; the report
   agrees with MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import run_study
from study.callbacks import SUMMARY_KEYS
from study.grids import ExpandContext, expand
from tests.processes import ray_left_behind

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FAILING_SOURCE = "unimodal/segan-cat/t1/"


def _client(study_dir: Path):
    from mlflow.tracking import MlflowClient

    meta = json.loads((study_dir / "study.json").read_text())
    return MlflowClient(meta["tracking_uri"]), meta["experiment"]


def _runs(study_dir: Path):
    client, experiment = _client(study_dir)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)


def _grid(store: Path):
    from core.data.store import BratsStore

    sid = BratsStore(store).manifest["store_id"]
    return expand("smoke", ExpandContext("smoke", str(store), sid, (0,)))


def _args(study_dir: Path, store: Path, *extra: str) -> list[str]:
    return ["--grid", "smoke", "--study-dir", str(study_dir), "--data", str(store), *extra]


def _failing_source_skips_its_dependants(study):
    import logging

    study_dir, store = study
    tune_records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = tune_records.append  # what Tune's loggers would print
    logging.getLogger("ray.tune").addHandler(handler)
    try:
        rc = run_study.main(_args(study_dir, store, "--inject-failure", FAILING_SOURCE,
                                  "--max-failures", "0", "--no-report"))
    finally:
        logging.getLogger("ray.tune").removeHandler(handler)
    assert rc == 1
    assert not [r for r in tune_records if r.exc_info or r.levelno >= logging.ERROR], \
        "a failed trial is one line of ours, not Tune's traceback"
    by_name = {r.data.tags["mlflow.runName"]: r for r in _runs(study_dir)}
    failed = by_name[f"{FAILING_SOURCE}wt/seed0"]
    assert failed.info.status == "FAILED"
    assert "deliberate failure" in failed.data.tags["error"]
    error_file = Path(failed.data.tags["error_file"])
    assert error_file.parent == study_dir / "trials" / failed.data.tags["trial_id"]
    assert 'trainable.py", line' in error_file.read_text()  # the whole traceback
    dependants = [r for r in by_name.values() if r.data.tags.get("source_trial") == failed.data.tags["trial_id"]]
    assert len(dependants) == 3  # its cross-evaluation and two transfers t1->flair
    for r in dependants:
        assert r.info.status == "KILLED"
        assert "failed" in r.data.tags["skipped_reason"] and FAILING_SOURCE in r.data.tags["skipped_reason"]
    others = [r for r in by_name.values() if r not in dependants and r is not failed]
    assert others and all(r.info.status == "FINISHED" for r in others)


def _dry_run_marks_recorded_cells(study, capsys):
    study_dir, store = study
    capsys.readouterr()
    assert run_study.main(_args(study_dir, store, "--dry-run")) == 0
    out = capsys.readouterr().out
    grid = _grid(store)
    failed = next(t for t in grid.trials if t.name.startswith(FAILING_SOURCE))
    lines = {t.trial_id: next(ln for ln in out.splitlines() if ln.strip().startswith(t.trial_id))
             for t in grid.trials}
    assert lines[failed.trial_id].endswith("[failed]")
    for t in grid.trials:
        if t.depends_on == failed.trial_id:
            assert lines[t.trial_id].endswith("[skipped]"), lines[t.trial_id]
    finished = [t for t in grid.trials if lines[t.trial_id].endswith("[finished]")]
    assert finished and f"{len(finished)} of {len(grid.trials)} already finished" in out


def _interrupt_stops_cleanly(study):
    study_dir, store = study
    cmd = [sys.executable, str(REPO / "run_study.py"), *_args(study_dir, store, "--no-report")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    source = next(t for t in _grid(store).trials if t.name.startswith(FAILING_SOURCE))
    first_epoch = study_dir / "trials" / source.trial_id / "last.pt"
    assert not first_epoch.exists()  # it failed at start in test 1
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # wait until the Tuner has launched the failed source again
        lines.append(line)
        if line.startswith("== ") and "to run" in line:
            break
        assert time.monotonic() < deadline, "".join(lines)
    while not first_epoch.exists():  # ... and it has finished an epoch: interrupt mid-training
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=240)
    text = "".join(lines) + out
    assert proc.returncode == 130, text
    assert "Interrupted. To resume" in text
    hint = text.split("Interrupted. To resume")[1].splitlines()[1].strip()
    assert hint == f"python run_study.py resume --study {study_dir.resolve()}"
    assert all(r.info.status != "RUNNING" for r in _runs(study_dir))
    # the driver left its local Ray to the watcher (study.reaper.exit_to_watcher)
    assert not ray_left_behind(proc.pid), "Ray processes outlived the driver"


def _rerun_resumes_without_duplicates(study):
    study_dir, store = study
    assert run_study.main(_args(study_dir, store)) == 0
    runs = _runs(study_dir)
    grid = _grid(store)
    counts = Counter(r.data.tags["trial_id"] for r in runs)
    assert set(counts) == {t.trial_id for t in grid.trials}
    assert all(n == 1 for n in counts.values()), counts
    assert all(r.info.status == "FINISHED" for r in runs)
    by_id = {r.data.tags["trial_id"]: r for r in runs}
    for t in grid.trials:
        tags = by_id[t.trial_id].data.tags
        assert tags["kind"] == t.kind and tags["grid"] == "smoke" and tags["seed"] == "0"
        assert tags["store_id"] and tags["code_version"] and tags["eval_split"] == "test"
        if t.kind == "transfer" and t.depends_on:
            source = by_id[t.depends_on].data.tags
            assert tags["init_digest"] == source["best_digest"], t.name
            assert tags["source"] == source["modalities"] and tags["freeze"] in ("full", "s_din")
    # one-off values at step 0 (MLflow draws a bar per run, not a lone dot), epochs at 1..N
    client, _ = _client(study_dir)
    run = by_id[grid.trials[0].trial_id]
    assert "eval/test/dice" in run.data.metrics and "val/dice" in run.data.metrics
    for key in run.data.metrics:
        steps = {m.step for m in client.get_metric_history(run.info.run_id, key)}
        assert steps == {0} if key.startswith(SUMMARY_KEYS) else 0 not in steps, (key, steps)
    # the report exists and its numbers are MLflow's
    report = study_dir / "report"
    assert (report / "report.md").exists()
    wt = json.loads((report / "report.json").read_text())["regions"]["wt"]
    unimodal = {r.data.tags["modalities"]: r for r in runs if r.data.tags["family"] == "unimodal"}
    table2 = {row["modality"]: row for row in wt["table2"]}
    assert set(table2) == {"flair", "t1"}
    for mod, row in table2.items():
        assert row["dice"]["mean"] == unimodal[mod].data.metrics[f"eval/test/{mod}/dice"]
    md = (report / "report.md").read_text()
    assert f"{unimodal['flair'].data.metrics['eval/test/flair/dice']:.3f}" in md
    evaluated = {r.data.tags["source"]: r for r in runs if r.data.tags["kind"] == "evaluate"}
    cells = {(c["trained_on"], c["evaluated_on"]): c for c in wt["cross_modality"]["cells"]}
    assert cells[("flair", "t1")]["dice"]["mean"] == evaluated["flair"].data.metrics["eval/test/t1/dice"]
    assert (report / "fig2_cross_modality.png").stat().st_size > 1000


def test_fail_interrupt_resume(tmp_path, synthetic_store, ray_session, capsys):
    """The three invocations on one study folder, in order, within one test (so the suite's
    tests stay independent of their order)."""
    study = (tmp_path / "study", synthetic_store)
    _failing_source_skips_its_dependants(study)
    _dry_run_marks_recorded_cells(study, capsys)
    _interrupt_stops_cleanly(study)
    _rerun_resumes_without_duplicates(study)

"""MLflow adapter on a real SQLite store: one run per cell, nothing left RUNNING."""

from __future__ import annotations

from study.grids import ExpandContext, expand
from study.tracking import Tracker, default_tracking_uri


def test_cells_reuse_their_run_and_stale_runs_get_closed(tmp_path):
    tracker = Tracker(default_tracking_uri(tmp_path), "t", artifact_root=tmp_path / "art")
    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("first", {}, {"grid": "smoke"})
    run_id = tracker.open_trial_run(spec, {"trial_id": spec.trial_id}, None)
    params = tracker.client.get_run(run_id).data.params
    assert params["train.seed"] == "0" and params["data.modalities"] == "flair"
    # the driver "dies": its runs stay RUNNING until the next invocation closes them
    tracker2 = Tracker(default_tracking_uri(tmp_path), "t")
    assert tracker2.close_running("KILLED", "test") == 2  # the child and the first parent
    assert tracker2.client.get_run(run_id).info.status == "KILLED"
    tracker2.start_parent("second", {}, {"grid": "smoke"})
    existing = tracker2.trial_runs()[spec.trial_id]
    assert tracker2.open_trial_run(spec, {"trial_id": spec.trial_id}, existing) == run_id
    assert len(tracker2.trial_runs()) == 1
    tracker2.finish(run_id, "FINISHED")
    tracker2.end_parent("FINISHED", {"done": 1})
    assert tracker2.close_running("KILLED", "test") == 0


def test_a_journal_left_by_a_dead_driver_is_replayed_once(tmp_path, capsys):
    import json

    from study.journal import JOURNAL_NAME

    uri, journal = default_tracking_uri(tmp_path), tmp_path / JOURNAL_NAME
    tracker = Tracker(uri, "t", artifact_root=tmp_path / "art", journal=journal)
    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("first", {}, {"grid": "smoke"})
    run_id = tracker.open_trial_run(spec, {"trial_id": spec.trial_id}, None)
    tracker.log_metrics(run_id, {"train/loss_s": 1.0}, step=1)
    assert not journal.exists()  # delivered: nothing kept
    # the driver died with entries journaled but not delivered (epoch 1 again, epoch 2, the end)
    entries = [{"op": "metrics", "run": run_id, "step": s, "metrics": {"train/loss_s": float(s)},
                "time": 0} for s in (1, 2)]
    entries.append({"op": "metrics", "run": run_id, "time": 0,  # several epochs in one entry
                    "rows": [[2, {"train/loss_s": 2.0}], [3, {"train/loss_s": 3.0}]]})
    entries += [{"op": "tags", "run": run_id, "tags": {"stopped": "max_epochs"}},
                {"op": "status", "run": run_id, "status": "FINISHED"}]
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"op": "metr')  # cut line
    for _ in range(2):  # a second replay (a crash right after the first) changes nothing
        if not journal.exists():
            journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
        again = Tracker(uri, "t", journal=journal)
        assert not journal.exists()
    assert "replaying 5 tracking entries" in capsys.readouterr().out
    run = again.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stopped"] == "max_epochs"
    steps = [(m.step, m.value) for m in again.client.get_metric_history(run_id, "train/loss_s")]
    assert sorted(steps) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_several_steps_go_out_as_one_entry_and_never_twice(tmp_path):
    tracker = Tracker(default_tracking_uri(tmp_path), "t", artifact_root=tmp_path / "art")
    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("p", {}, {})
    run_id = tracker.open_trial_run(spec, {}, None)
    entries, add = [], tracker.journal.add

    def counted(entry):  # what reaches the journal, then the store
        entries.append(entry)
        add(entry)

    tracker.journal.add = counted
    rows = [(step, {"train/loss_s": 1.0 / step, "val/dice": 0.1 * step, "epoch": step})
            for step in (1, 2, 3)]
    tracker.log_steps(run_id, rows)
    tracker.log_steps(run_id, rows[1:] + [(4, {"train/loss_s": 0.25})])  # 2, 3 again, 4 new
    assert [len(e["rows"]) for e in entries] == [3, 1]
    history = tracker.client.get_metric_history(run_id, "train/loss_s")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    assert len(tracker.client.get_metric_history(run_id, "val/dice")) == 3


def test_reopened_runs_lose_their_ending_tags_and_folders_do_not_share_an_experiment(tmp_path):
    import pytest

    from core.errors import UserError

    uri = f"sqlite:///{(tmp_path / 'shared.db').as_posix()}"  # a store outside both folders
    tracker = Tracker(uri, "shared")
    tracker.claim_study_dir(tmp_path / "a")
    tracker.claim_study_dir(tmp_path / "a")  # the same folder again: fine
    with pytest.raises(UserError, match=f"belongs to study folder {tmp_path / 'a'}"):
        Tracker(uri, "shared").claim_study_dir(tmp_path / "b")
    Tracker(uri, "other").claim_study_dir(tmp_path / "b")  # another experiment: fine

    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("p", {}, {})
    run_id = tracker.open_trial_run(spec, {"trial_id": spec.trial_id}, None)
    tracker.set_tags(run_id, {"error": "boom"})
    assert tracker.close_running("KILLED", "gone") == 1
    existing = tracker.trial_runs()[spec.trial_id]
    assert {"closed_because", "error"} <= set(existing.data.tags)
    tracker.open_trial_run(spec, {}, existing)
    tracker.finish(run_id, "FINISHED")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert not {"closed_because", "error"} & set(run.data.tags)


def test_report_side_replay_skips_a_folder_in_use(tmp_path):
    import json
    import subprocess
    import sys

    from study.journal import JOURNAL_NAME
    from study.session import replay_journal

    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "t")
    tracker.start_parent("p", {}, {})
    entry = {"op": "tags", "run": tracker.parent_id, "tags": {"late": "yes"}}
    (tmp_path / JOURNAL_NAME).write_text(json.dumps(entry) + "\n")
    hold = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; h = open(sys.argv[1], 'a'); "
                             "fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                             str(tmp_path / ".study.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "held"
        replay_journal(tmp_path, uri, "t")  # an invocation owns the journal: left alone
        assert (tmp_path / JOURNAL_NAME).exists()
    finally:
        hold.kill()
        hold.wait()
    replay_journal(tmp_path, uri, "t")
    assert not (tmp_path / JOURNAL_NAME).exists()
    assert tracker.client.get_run(tracker.parent_id).data.tags["late"] == "yes"


def test_a_new_study_adopts_the_prebuilt_empty_store_and_an_old_one_keeps_its_own(tmp_path):
    """``preload`` builds an empty store off the study folder while Ray starts; a new study
    copies it (no schema migrations on the critical path), an existing store is kept."""
    from study.tracking_store import adopt_empty_store, preload

    staging, study = tmp_path / "staging", tmp_path / "study"
    staging.mkdir()
    study.mkdir()
    preload(staging / "mlflow.db", study / "mlartifacts")
    assert not list(study.iterdir())  # nothing of the study is touched before adoption
    uri = default_tracking_uri(study)
    adopt_empty_store(staging / "mlflow.db", uri)
    tracker = Tracker(uri, "exp", artifact_root=study / "mlartifacts")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.client.log_metric(run_id, "val/dice", 0.5, step=1)
    default = tracker.client.get_experiment("0").artifact_location
    assert default == (study / "mlartifacts").resolve().as_uri() + "/0"
    before = (study / "mlflow.db").read_bytes()
    adopt_empty_store(staging / "mlflow.db", uri)  # the study has a store now: kept as it is
    assert (study / "mlflow.db").read_bytes() == before
    assert Tracker(uri, "exp").client.get_metric_history(run_id, "val/dice")[0].value == 0.5


def test_the_empty_store_is_migrated_once_then_copied_and_a_broken_template_is_rebuilt(
        tmp_path, monkeypatch):
    """The first new study caches its migrated empty store; the next copies it, with the
    default experiment pointed at its own folder; a corrupt template is built again."""
    import sqlite3

    import mlflow

    from study.tracking_store import preload, template_path

    monkeypatch.setenv("SEGAN_CACHE_DIR", str(tmp_path / "cache"))
    template = template_path(mlflow.__version__)
    assert template is not None and not template.exists()
    first, second, third = (tmp_path / name for name in ("one", "two", "three"))
    for study in (first, second):
        study.mkdir()
        preload(study / "mlflow.db", study / "mlartifacts")
        assert template.is_file()
    with sqlite3.connect(template) as db:  # the copy's edit never reaches the template
        assert db.execute("SELECT artifact_location FROM experiments").fetchall() == [
            ((first / "mlartifacts").resolve().as_uri() + "/0",)]
    tracker = Tracker(default_tracking_uri(second), "exp", artifact_root=second / "mlartifacts")
    assert tracker.client.get_experiment("0").artifact_location == \
        (second / "mlartifacts").resolve().as_uri() + "/0"
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.client.log_metric(run_id, "val/dice", 0.5, step=1)
    assert tracker.client.get_metric_history(run_id, "val/dice")[0].value == 0.5

    template.write_bytes(b"not a database")
    third.mkdir()
    preload(third / "mlflow.db", third / "mlartifacts")
    assert Tracker(default_tracking_uri(third), "exp").client.get_experiment("0").name == "Default"
    with sqlite3.connect(template) as db:  # rebuilt, with this study's location
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    monkeypatch.setenv("SEGAN_CACHE_DIR", "off")
    assert template_path(mlflow.__version__) is None


def test_background_metrics_arrive_in_order_without_a_sync_and_before_the_end(tmp_path):
    """Epoch metrics from Tune's callback go to the courier (the trial does not wait for the
    store); they still arrive on their own, and a later direct write delivers them first."""
    import time

    from study.journal import JOURNAL_NAME

    uri, journal = default_tracking_uri(tmp_path), tmp_path / JOURNAL_NAME
    tracker = Tracker(uri, "t", artifact_root=tmp_path / "art", journal=journal)
    spec = expand("smoke", ExpandContext("smoke", "/s.zarr", "sid", (0,))).trials[0]
    tracker.start_parent("p", {}, {"grid": "smoke"})
    run_id = tracker.open_trial_run(spec, {"trial_id": spec.trial_id}, None)

    def steps() -> list[int]:
        return sorted(m.step for m in tracker.client.get_metric_history(run_id, "train/loss_s"))

    tracker.log_steps(run_id, [(1, {"train/loss_s": 1.0}), (2, {"train/loss_s": 2.0})],
                      background=True)
    deadline = time.monotonic() + 20
    while steps() != [1, 2]:
        assert time.monotonic() < deadline, steps()
        time.sleep(0.05)
    assert not journal.exists()  # delivered by the courier: nothing kept
    with tracker.courier.lock:  # the courier is busy: the next entry waits in the journal
        tracker.log_steps(run_id, [(3, {"train/loss_s": 3.0})], background=True)
        time.sleep(0.2)
        assert journal.exists() and len(tracker.journal.pending) == 1
    tracker.finish(run_id, "FINISHED")  # a direct write: delivers what waits, in order
    assert steps() == [1, 2, 3]
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    tracker.close(wait_s=5)
    assert not journal.exists()

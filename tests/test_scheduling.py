"""One dependency-aware Tuner: a cell starts when its own source has finished, never at a
stage barrier; dependants of a failed or checkpoint-less source are skipped with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from study.grids import Grid, TrialSpec
from study.scheduling import DependencySearcher, Plan, Release


def _spec(tid: str, source: str | None = None, seconds: float = 0.0) -> TrialSpec:
    kind = "transfer" if source else "train"
    return TrialSpec(tid, f"{kind}/{tid}", kind, kind, 2 if source else 1,
                     {"seconds": seconds, "data": {"store": ""}}, {"kind": kind}, (), source)


class _Recorder:
    def __init__(self) -> None:
        self.opened: list[tuple[str, str | None]] = []
        self.skipped: dict[str, str] = {}

    def release(self) -> Release:
        def open_cell(spec: TrialSpec, ckpt: str | None) -> dict[str, Any]:
            self.opened.append((spec.trial_id, ckpt))
            return {"trial_id": spec.trial_id}

        return Release(open_cell, lambda spec, reason: self.skipped.__setitem__(spec.trial_id, reason))


def _done(ckpt: Path) -> dict[str, Any]:
    return {"tags": f'{{"best_checkpoint": "{ckpt}"}}'}


def test_cells_are_released_when_their_own_source_finishes(tmp_path):
    a, b = _spec("a"), _spec("b")
    a1, b1, b2 = _spec("a1", "a"), _spec("b1", "b"), _spec("b2", "b1")
    rec = _Recorder()
    plan = Plan(pending=[a, b, a1, b1, b2])
    searcher = DependencySearcher(plan, rec.release(), {s.trial_id: s.name for s in (a, b, b1)})

    assert searcher.suggest("t1") == {"trial": {"trial_id": "a"}}
    assert searcher.suggest("t2") == {"trial": {"trial_id": "b"}}
    assert searcher.suggest("t3") is None  # a1 and b1 wait for their sources; no barrier to wait for
    (tmp_path / "a.pt").write_bytes(b"")
    searcher.on_trial_complete("t1", _done(tmp_path / "a.pt"))
    assert searcher.suggest("t3") == {"trial": {"trial_id": "a1"}}  # b is still running
    assert rec.opened[-1] == ("a1", str(tmp_path / "a.pt"))
    searcher.on_trial_complete("t2", None, error=True)
    assert searcher.suggest("t4") == Searcher.FINISHED
    assert rec.skipped == {"b1": "source train/b failed", "b2": "source transfer/b1 skipped"}
    assert [tid for tid, _ in rec.opened] == ["a", "b", "a1"]  # a skipped cell is never opened


def test_a_source_without_its_checkpoint_file_skips_its_dependants(tmp_path):
    rec = _Recorder()
    plan = Plan(pending=[_spec("x", "gone")], checkpoints={"gone": str(tmp_path / "missing.pt")})
    searcher = DependencySearcher(plan, rec.release(), {"gone": "train/gone"})
    assert searcher.suggest("t1") == Searcher.FINISHED
    assert rec.skipped["x"].startswith("source train/gone checkpoint missing:")


def test_one_tuner_starts_a_transfer_before_an_unrelated_slow_source_ends(tmp_path, ray_session,
                                                                           monkeypatch):
    """Real Ray and MLflow, trials that only sleep: with a stage barrier the fast source's
    transfer would wait for the slow source; here its MLflow run starts long before."""
    from ray import cloudpickle

    import bench.packing as packing
    import study.trial_entry
    from study.runner import Resources, StudyRunner
    from study.tracking import Tracker, default_tracking_uri

    cloudpickle.register_pickle_by_value(packing)  # Ray's workers need not import bench/
    monkeypatch.setattr(study.trial_entry, "run_trial", packing.sleep_trial)
    slow, fast = _spec("slow", seconds=10.0), _spec("fast", seconds=0.2)
    grid = Grid("dag", "", "none", [slow, fast, _spec("after-fast", "fast", 0.2),
                                    _spec("after-slow", "slow", 0.2)])
    tracker = Tracker(default_tracking_uri(tmp_path), "dag", artifact_root=tmp_path / "art")
    tracker.start_parent("dag", {}, {"grid": "dag"})
    runner = StudyRunner(grid, tracker, tmp_path, "", "val", Resources(1.0, 0.0), {})
    outcome = runner.run()
    tracker.end_parent("FINISHED", {})
    assert sorted(outcome.done) == sorted(t.trial_id for t in grid.trials)
    assert not outcome.failed and not outcome.skipped and not outcome.interrupted
    info = {tid: run.info for tid, run in tracker.trial_runs().items()}
    assert all(i.status == "FINISHED" for i in info.values())
    assert info["after-fast"].end_time < info["slow"].end_time - 4000  # ms: no barrier
    assert info["after-slow"].start_time >= info["slow"].end_time - 1000
    tracker.close(wait_s=10.0)


def test_a_source_outside_the_grid_is_found_in_the_study_runs(tmp_path, ray_session, monkeypatch):
    """A grid run in parts (e.g. its sources first): a later part's transfer starts from the
    checkpoint its source's run recorded; one whose source never ran is skipped, saying so."""
    from ray import cloudpickle

    import bench.packing as packing
    import study.trial_entry
    from study.runner import Resources, StudyRunner
    from study.tracking import Tracker, default_tracking_uri

    cloudpickle.register_pickle_by_value(packing)
    monkeypatch.setattr(study.trial_entry, "run_trial", packing.sleep_trial)
    tracker = Tracker(default_tracking_uri(tmp_path), "parts", artifact_root=tmp_path / "art")
    tracker.start_parent("parts", {}, {"grid": "parts"})
    source = _spec("src", seconds=0.1)
    parts = [[source], [_spec("after-src", "src", 0.1), _spec("after-none", "never", 0.1)]]
    outcomes = [StudyRunner(Grid("parts", "", "none", part), tracker, tmp_path, "", "val",
                            Resources(1.0, 0.0), {}).run() for part in parts]
    tracker.end_parent("FINISHED", {})
    assert outcomes[0].done == ["src"] and outcomes[1].done == ["after-src"]
    assert outcomes[1].skipped == {"after-none": "source never did not run"}
    runs = tracker.trial_runs()
    assert runs["after-src"].info.status == "FINISHED"
    assert runs["after-none"].data.tags["skipped_reason"] == "source never did not run"
    tracker.close(wait_s=10.0)

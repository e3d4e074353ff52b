"""Packing of variable-length trials: the dependency-aware runner vs ideal list scheduling.

A transfer-like grid of sleep trials (no training: the scheduling alone is measured) runs
through the study's own ``StudyRunner`` (one Tuner, MLflow in a SQLite store,
real Ray on ``--slots`` CPUs): sources first, then each source's dependants (a short
cross-evaluation and a few transfers). Durations are drawn once (``--seed``) with a
realistic spread (sources 6–18 s, transfers 3–12 s, evaluations 1–2 s at ``--scale 1``).

Prints four makespans and the efficiency the issue targets (≥ 0.90):

* ideal (DAG): greedy list scheduling on ``--slots`` slots, each trial released as soon as
  its own source finished, no overhead (the bound a dependency-aware runner can approach);
* ideal (staged): the same with a barrier between stages;
* measured: the wall time of ``StudyRunner.run`` (one Tuner; Tune + MLflow + per-trial
  overhead);
* baseline, in the same run: the same runner called once per stage (a barrier between
  stages, as the study ran before its runner became dependency-aware);

efficiency = ideal (DAG) / measured.

    python bench/packing.py                       # 4 sources x (1 eval + 3 transfers), 2 slots
    python bench/packing.py --sources 6 --scale 0.5 --slots 2
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sleep_trial(config: dict[str, Any]) -> None:
    """A trial that only sleeps its nominal duration, then reports like ``run_trial``."""
    from ray import tune

    cell = config["trial"]
    out = Path(cell["trial_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if any(p in cell["name"] for p in filter(None, cell["inject_failure"].split(","))):
        raise RuntimeError("deliberate failure (--inject-failure)")
    time.sleep(float(cell["config"]["seconds"]))
    (out / "best.pt").write_bytes(b"")  # the dependants' source checkpoint
    tune.report({"trial/final": 1, "epoch": 1, "per_volume": "{}",
                 "tags": json.dumps({"best_checkpoint": str(out / "best.pt")})})


def make_grid(sources: int, per_source: int, scale: float, seed: int) -> Any:
    from study.grids import Grid, TrialSpec

    rng = random.Random(seed)
    trials: list[TrialSpec] = []
    ids = iter(range(10**6))

    def spec(name: str, kind: str, stage: int, seconds: float, source: str | None) -> TrialSpec:
        return TrialSpec(f"{next(ids):04d}", name, name.split("/")[0], kind, stage,
                         {"seconds": round(seconds * scale, 2), "data": {"store": ""}},
                         {"kind": kind}, (), source)

    roots = [spec(f"src/{i}", "train", 1, rng.uniform(6, 18), None) for i in range(sources)]
    trials += roots
    for root in roots:
        trials.append(spec(f"eval/{root.name}", "evaluate", 2, rng.uniform(1, 2), root.trial_id))
        for j in range(per_source):
            trials.append(spec(f"transfer/{root.name}/{j}", "transfer", 2, rng.uniform(3, 12),
                               root.trial_id))
    return Grid("packing", "sleep trials", "none", trials)


def list_schedule(trials: list[Any], slots: int, barrier: bool) -> float:
    """Greedy list scheduling (grid order among released trials) on ``slots`` slots."""
    secs = {t.trial_id: float(t.config["seconds"]) for t in trials}
    finish: dict[str, float] = {}
    free = [0.0] * slots
    stage_end: dict[int, float] = {}
    for t in sorted(trials, key=lambda t: t.stage) if barrier else trials:
        ready = finish[t.depends_on] if t.depends_on else 0.0
        if barrier and t.stage > 1:
            ready = max(ready, stage_end.get(t.stage - 1, 0.0))
        slot_free = heapq.heappop(free)
        start = max(slot_free, ready)
        finish[t.trial_id] = start + secs[t.trial_id]
        heapq.heappush(free, finish[t.trial_id])
        stage_end[t.stage] = max(stage_end.get(t.stage, 0.0), finish[t.trial_id])
    return max(finish.values(), default=0.0)


def measure(grid: Any, slots: int, root: Path, staged: bool, fail: str = "") -> float:
    """Wall time of ``StudyRunner.run`` over ``grid``; ``staged`` runs it once per stage
    (a barrier between stages: the runner before it became dependency-aware)."""
    import study.trial_entry
    from study.grids import Grid
    from study.ray_cluster import init_ray
    from study.runner import Resources, StudyRunner
    from study.tracking import Tracker, default_tracking_uri

    study.trial_entry.run_trial = sleep_trial  # the runner imports it at launch
    root.mkdir(parents=True, exist_ok=True)
    init_ray(None, num_cpus=slots)
    tracker = Tracker(default_tracking_uri(root), "packing", artifact_root=root / "mlartifacts",
                      journal=root / "journal.jsonl")
    tracker.start_parent("packing", {"grid": "packing"}, {"grid": "packing"})
    parts = ([Grid(grid.name, grid.description, grid.budget, stage) for stage in grid.stages()]
             if staged else [grid])
    started = time.monotonic()
    done = 0
    for part in parts:
        runner = StudyRunner(part, tracker, root, "", "val",
                             Resources(1.0, 0.0, max_failures=0, inject_failure=fail), {})
        done += len(runner.run().done)
    took = time.monotonic() - started
    tracker.end_parent("FINISHED", {"done": done})
    tracker.close(wait_s=30.0)
    if done != len(grid.trials) and not fail:
        raise SystemExit(f"only {done} of {len(grid.trials)} trials finished")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=int, default=4, help="source trials (stage 1)")
    ap.add_argument("--per-source", type=int, default=3, help="transfers per source (+1 evaluation)")
    ap.add_argument("--slots", type=int, default=2, help="concurrent trials (Ray CPUs, 1 per trial)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every duration")
    ap.add_argument("--seed", type=int, default=0, help="seed of the durations")
    ap.add_argument("--staged", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the runner stage by stage (the baseline: a barrier per stage)")
    ap.add_argument("--inject-failure", default="", metavar="SUBSTRINGS",
                    help="drill: trials whose name contains one fail (their dependants skipped)")
    args = ap.parse_args()
    grid = make_grid(args.sources, args.per_source, args.scale, args.seed)
    work = sum(float(t.config["seconds"]) for t in grid.trials)
    ideal = list_schedule(grid.trials, args.slots, barrier=False)
    staged_ideal = list_schedule(grid.trials, args.slots, barrier=True)
    print(f"{len(grid.trials)} sleep trials ({args.sources} sources, {args.per_source} transfers "
          f"+ 1 evaluation each), {work:.1f} s of work on {args.slots} slots", flush=True)
    with tempfile.TemporaryDirectory(prefix="packing-") as tmp:
        measured = measure(grid, args.slots, Path(tmp) / "dag", False, args.inject_failure)
        staged = (measure(grid, args.slots, Path(tmp) / "staged", True, args.inject_failure)
                  if args.staged else 0.0)
    print(f"\nideal makespan (DAG list scheduling):    {ideal:7.1f} s")
    print(f"ideal makespan (stage barrier):          {staged_ideal:7.1f} s "
          f"({ideal / staged_ideal:.2f} of DAG ideal)")
    print(f"measured makespan (StudyRunner, one Tuner):   {measured:7.1f} s")
    print(f"efficiency = ideal / measured = {ideal / measured:.2f} (target >= 0.90)")
    if staged:
        print(f"measured makespan (same runner, stage by stage): {staged:7.1f} s; "
              f"efficiency {ideal / staged:.2f}, vs the staged ideal {staged_ideal / staged:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Overhead of the study runner (Ray Tune + MLflow + checkpoints) over a plain loop.

1. Calibrate: one cell trained by ``core.trainer.fit`` for ``--trial-seconds`` (the
   ``train.max_seconds`` cap) gives the step count N of a trial that long.
2. K cells (one FLAIR cell x K seeds, ``train.max_steps=N``, no time cap, so both sides do
   exactly the same work) run through ``run_study.py`` (one at a time, ``--cpus-per-trial``
   threads each) and through a plain loop in one process (``fit`` then the same evaluation
   as the trainable), both as fresh processes timed from outside (imports, Ray start and
   MLflow setup included). Prints the ratio (target <= 1.10 at 30-s trials), and the
   ratio of the two sides' fast epochs (``FAST_QUANTILE``), which this machine's slow
   spells do not reach; over several pairs, an end-to-end estimate from it.
3. Driver peak RSS (``ru_maxrss`` of the driver process itself, not of Ray's processes)
   over a full run of ``--rss-grid`` (default transfer_all: 63 cells) with the ``smoke``
   budget and ``--rss-steps`` steps per trial.

    python bench/overhead.py                              # K=4 trials of 30 s, 63-cell RSS
    python bench/overhead.py --repeats 4 --rss-grid ''    # 4 pairs (ABBA), median and pooled
    python bench/overhead.py --k 2 --trial-seconds 10 --rss-grid ''   # quick, no RSS run
    python bench/overhead.py --repeats 4 --noise-pairs 2 --rss-grid ''  # and the machine's noise
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ONE_CELL = """\
budget: smoke
seeds: [0]
families:
  one:
    kind: train
    axes:
      modalities: [flair]
"""


def _timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, seconds from the runner's ``== … to run`` line to the study's summary line:
    the trials phase, without process start, Ray start or MLflow setup)."""
    started = time.monotonic()
    first = last = 0.0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("== ") and "to run" in line and not first:
                first = time.monotonic()
            if " trials in " in line and " finished, " in line:
                last = time.monotonic()
        rc = proc.wait()
    took = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}; see {log}")
    return took, (last - first if first and last else 0.0)


def _cells(grid: str, store: str, budget: str, seeds: tuple[int, ...], sets: list[str]):
    from core.data.store import BratsStore
    from study.grids import ExpandContext, expand
    from study.session import eval_split_of, parse_sets

    manifest = BratsStore(store).manifest
    ctx = ExpandContext(budget, store, manifest["store_id"], seeds, (), parse_sets(sets))
    return expand(grid, ctx).trials, eval_split_of(manifest)


def plain_loop(args: argparse.Namespace) -> int:
    """The same cells as the runner's, in this process: ``fit`` then the evaluation."""
    import torch

    from core.checkpoint import load_checkpoint
    from core.config import from_dict
    from core.trainer import fit
    from study.trainable import eval_metrics

    torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    trials, split = _cells(args.grid, args.data, args.budget, seeds, args.set)
    steps, started = 0, time.monotonic()
    for spec in trials:
        cfg = from_dict(spec.config).replace({"train.device": "cpu"})
        result = fit(cfg, Path(args.out) / spec.trial_id, provenance={"cell": spec.name})
        eval_metrics(load_checkpoint(result.best_path), args.data, list(spec.eval_modalities),
                     split, "cpu")
        steps += result.steps
    print(json.dumps({"steps": steps, "loop_s": time.monotonic() - started}))
    return 0


def driver_rss(study_args: list[str]) -> int:
    """Run the study in this process; print the driver's own peak RSS (MiB)."""
    import run_study

    rc = run_study.main(study_args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rc": rc, "driver_peak_rss_mib": round(peak, 1)}))
    return rc


def calibrate(store: str, grid: str, budget: str, seconds: float, threads: int, tmp: Path) -> int:
    import torch

    from core.config import from_dict
    from core.trainer import fit

    torch.set_num_threads(threads)
    spec = _cells(grid, store, budget, (0,), [])[0][0]
    cfg = from_dict(spec.config).replace({"train.device": "cpu", "train.max_epochs": 100000,
                                          "train.patience": 0, "train.max_seconds": seconds})
    result = fit(cfg, tmp / "calibrate")
    return max(1, result.steps)


def _pair(args: argparse.Namespace, out: Path, grid: Path, common: list[str],
          sets: list[str], runner_first: bool) -> tuple[float, ...]:
    """The plain loop and the runner on the same K cells, back to back: (end-to-end ratio,
    trials-phase ratio, plain seconds, runner seconds, plain and runner training seconds).
    Pairs alternate which side goes first (plain-runner, runner-plain, ...), so a steady
    drift of the machine's speed cancels out of the pooled ratio over an even number of
    pairs."""
    out.mkdir(parents=True)
    plain_cmd = _plain_cmd(args, out / "plain", grid, common, sets)
    runner_cmd = [sys.executable, "run_study.py", "--grid", str(grid), "--study-dir",
                  str(out / "study"), "--cpus-per-trial", str(args.threads), "--max-concurrent",
                  "1", "--no-report", *common, *(x for s in sets for x in ("--set", s))]
    sides = ["runner", "plain"] if runner_first else ["plain", "runner"]
    for side in sides:
        if side == "plain":
            plain, _ = _timed(plain_cmd, out / "plain.log")
            loop = json.loads((out / "plain.log").read_text().strip().splitlines()[-1])["loop_s"]
            print(f"plain loop: {args.k} trials in {plain:.1f} s (one process, fit + evaluation; "
                  f"the loop itself {loop:.1f} s)", flush=True)
        else:
            runner, phase = _timed(runner_cmd, out / "runner.log")
            print(f"runner:     {args.k} trials in {runner:.1f} s (run_study.py: Ray + MLflow + "
                  f"checkpoints; trials phase {phase:.1f} s)", flush=True)
    print(f"overhead ratio runner / plain = {runner / plain:.3f} end to end (target <= 1.10), "
          f"{phase / loop:.3f} trials phase / loop; {(runner - plain) / args.k:.1f} s per trial",
          flush=True)
    fit_plain, fit_runner = _fit_seconds(out / "plain"), _fit_seconds(out / "study" / "trials")
    print(f"  of which training (fit, from the checkpoints): runner {fit_runner:.1f} s, plain "
          f"{fit_plain:.1f} s ({fit_runner / fit_plain:.3f}); the rest: runner "
          f"{runner - fit_runner:.1f} s, plain {plain - fit_plain:.1f} s", flush=True)
    fast = (_quantile(_epoch_seconds(out / "study" / "trials"), FAST_QUANTILE)
            / _quantile(_epoch_seconds(out / "plain"), FAST_QUANTILE))
    print(f"  epochs at the machine's fast speed ({FAST_QUANTILE:.0%} quantile of epoch times): "
          f"runner / plain = {fast:.3f}", flush=True)
    return runner / plain, phase / loop, plain, runner, fit_plain, fit_runner, fast


FAST_QUANTILE = 0.10
"""This machine runs in two speeds: spells of 10-60 s in which every epoch takes ~30 %
longer come and go on either side (seen in the plain loop alone, and not as CPU steal), and
a spell or two more on one side moves a pair's ratio by 0.1. The epochs' 10 % quantile is
taken outside spells on both sides (they cover at most ~40 % of the epochs): its ratio is
what the runner costs a trial's training on the same machine state."""


def _epoch_seconds(trials: Path) -> list[float]:
    """Each cell's epoch times (``time/epoch_s`` of the checkpoint's history), first epoch
    of each cell left out (warm-up)."""
    from core.checkpoint import load_checkpoint

    return [float(row["time/epoch_s"]) for p in sorted(trials.glob("*/last.pt"))
            for row in load_checkpoint(p)["history"][1:] if "time/epoch_s" in row]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))] if ordered else float("nan")


def _plain_cmd(args: argparse.Namespace, out: Path, grid: Path, common: list[str],
               sets: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--plain-loop", "--grid", str(grid),
            "--threads", str(args.threads), "--out", str(out), *common,
            *(x for s in sets for x in ("--set", s))]


def _noise_pair(args: argparse.Namespace, out: Path, grid: Path, common: list[str],
                sets: list[str]) -> tuple[float, float]:
    """The plain loop twice on the same cells (an A/A pair): how far this machine alone
    moves a ratio. Returns (end-to-end ratio, training ratio), second run over first."""
    out.mkdir(parents=True)
    took = [_timed(_plain_cmd(args, out / side, grid, common, sets), out / f"{side}.log")[0]
            for side in ("a", "b")]
    fit = [_fit_seconds(out / side) for side in ("a", "b")]
    print(f"A/A: plain loop {took[0]:.1f} s then {took[1]:.1f} s: ratio {took[1] / took[0]:.3f} "
          f"end to end, {fit[1] / fit[0]:.3f} training", flush=True)
    return took[1] / took[0], fit[1] / fit[0]


def _fit_seconds(trials: Path) -> float:
    """Training time of the cells under ``trials`` (each ``last.pt``'s own clock): the
    part of each side that is the same work, so a gap there is the machine's speed or the
    CPU that Ray's processes take from the trial, not the runner's own steps."""
    from core.checkpoint import load_checkpoint

    return sum(float(load_checkpoint(p)["seconds"]) for p in sorted(trials.glob("*/last.pt")))


def main() -> int:
    if sys.argv[1:2] == ["--driver-rss"]:  # the rest is a study command line
        return driver_rss(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=4, help="trials on each side (0: only the RSS run)")
    ap.add_argument("--trial-seconds", type=float, default=30.0, help="length of one trial")
    ap.add_argument("--repeats", type=int, default=1,
                    help="plain/runner pairs, alternating which goes first (median and pooled "
                         "ratios are printed; use an even number)")
    ap.add_argument("--noise-pairs", type=int, default=0,
                    help="then this many A/A pairs (the plain loop twice): the machine's own "
                         "spread of a ratio, to read the pairs against")
    ap.add_argument("--budget", default="demo",
                    help="training budget of the cells: demo (the synthetic store's default, "
                         "epochs of ~0.3 s) or smoke (epochs of 4 steps, ~0.1 s: the worst "
                         "case for what the runner does per epoch)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads = --cpus-per-trial")
    ap.add_argument("--data", default=None, help="store (default: the synthetic one)")
    ap.add_argument("--rss-grid", default="transfer_all", help="grid of the RSS run ('' = skip)")
    ap.add_argument("--rss-steps", type=int, default=2, help="train.max_steps in the RSS run")
    ap.add_argument("--plain-loop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--grid", help=argparse.SUPPRESS)
    ap.add_argument("--seeds", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_loop:
        return plain_loop(args)
    from study.main import resolve_store

    store = args.data or resolve_store(None)[0]
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    grid = tmp / "one.yaml"
    grid.write_text(ONE_CELL)
    if args.k > 0:  # --k 0: the RSS run only
        steps = calibrate(store, str(grid), args.budget, args.trial_seconds, args.threads, tmp)
        print(f"calibration: {steps} steps = {args.trial_seconds:g} s of training (budget "
              f"{args.budget}, {args.threads} threads)", flush=True)
        seeds = ",".join(str(s) for s in range(args.k))
        sets = [f"train.max_steps={steps}", "train.max_epochs=100000", "train.patience=0",
                "train.max_seconds=0"]
        common = ["--data", store, "--budget", args.budget, "--seeds", seeds]
        ratios = [_pair(args, tmp / f"pair{r}", grid, common, sets, runner_first=r % 2 == 1)
                  for r in range(args.repeats)]
        if args.repeats > 1:
            ends, phases = sorted(r[0] for r in ratios), sorted(r[1] for r in ratios)
            print(f"median of {args.repeats} pairs: runner / plain = {statistics.median(ends):.3f} "
                  f"end to end (range {ends[0]:.3f}-{ends[-1]:.3f}; target <= 1.10), "
                  f"{statistics.median(phases):.3f} trials phase / loop", flush=True)
            pooled = sum(r[3] for r in ratios) / sum(r[2] for r in ratios)
            print(f"pooled over the {args.repeats} pairs: total runner time / total plain time = "
                  f"{pooled:.3f}", flush=True)
            fit_plain, fit_runner = sum(r[4] for r in ratios), sum(r[5] for r in ratios)
            rest = (sum(r[3] for r in ratios) - fit_runner) / (sum(r[2] for r in ratios) - fit_plain)
            print(f"pooled training time runner / plain = {fit_runner / fit_plain:.3f}; pooled "
                  f"time outside training runner / plain = {rest:.3f}", flush=True)
            fast = statistics.median(r[6] for r in ratios)
            steady = (fit_plain * fast + sum(r[3] for r in ratios) - fit_runner) / sum(
                r[2] for r in ratios)
            print(f"outside the machine's slow spells (median over pairs of the epochs' "
                  f"{FAST_QUANTILE:.0%}-quantile ratio, {fast:.3f}): runner / plain = "
                  f"{steady:.3f} end to end, estimated (the plain loop's training times that "
                  f"ratio, plus each side's measured time outside training)", flush=True)
        noise = [_noise_pair(args, tmp / f"aa{r}", grid, common, sets)
                 for r in range(args.noise_pairs)]
        if noise:
            ends = sorted(n[0] for n in noise)
            print(f"A/A over {len(noise)} pairs: end-to-end ratios {ends[0]:.3f}-{ends[-1]:.3f} "
                  "(what the machine alone does to a runner / plain ratio)", flush=True)
    if args.rss_grid:
        rss_cmd = [sys.executable, str(Path(__file__).resolve()), "--driver-rss", "--grid",
                   args.rss_grid, "--data", store, "--budget", "smoke", "--study-dir",
                   str(tmp / "rss"), "--set", f"train.max_steps={args.rss_steps}", "--no-report"]
        took, _ = _timed(rss_cmd, tmp / "rss.log")
        last = (tmp / "rss.log").read_text().strip().splitlines()[-1]
        peak = json.loads(last)["driver_peak_rss_mib"]
        summary = next((ln for ln in (tmp / "rss.log").read_text().splitlines()
                        if " trials in " in ln and " finished, " in ln), "")
        print(f"driver peak RSS over a full run of {args.rss_grid} (smoke budget, "
              f"max_steps {args.rss_steps}): {peak:.0f} MiB; {summary.strip()} ({took:.0f} s)")
    print(f"(logs in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

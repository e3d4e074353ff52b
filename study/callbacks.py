"""Tune callback: forwards trial results to MLflow and prints study progress."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from core.protocol import parse_eval_metric
from study.mlflow_meta import record_dataset, strict_json, summary_columns
from study.tracking import Tracker
from study.trial_entry import FINAL_KEY, HISTORY_KEY, NOTE_KEY

PROGRESS_EVERY = 60.0
"""Seconds between progress lines of one running trial."""

SUMMARY_KEYS = ("eval/", "best/", "train/epochs", "train/steps")
"""A trial's one-off values (prefixes): logged once, at ``SUMMARY_STEP``."""

SUMMARY_STEP = 0
"""MLflow step of a trial's one-off values (``SUMMARY_KEYS``).
Epochs are steps 1..N, so these never mix with a curve. MLflow 3's UI draws a metric whose
latest step is 0 in every run as a bar per run (a comparison), and one at any later step as
a line chart, which for a single value is a lone dot."""


class StudyCallback(Callback):
    """Logs each epoch's metrics to the cell's MLflow run; ends runs with a status."""

    def __init__(self, tracker: Tracker, total: int, done_before: int, label: str,
                 open_run: Callable[[Any], str] | None = None) -> None:
        self.tracker = tracker
        self.open_run = open_run
        """Creates the MLflow run of a trial the driver could not know in advance (HPO samples)."""
        self.run_ids: dict[str, str] = {}
        self.total = total
        self.done = done_before
        self.label = label
        """Prefix of every progress line: ``study`` or ``hpo``."""
        self.completed: set[str] = set()
        self.failed: dict[str, str] = {}
        self.best: dict[tuple[str, str], tuple[float, str]] = {}
        """(input modalities, region) → best validation dice so far and its cell: only cells
        validated on the same inputs and region are comparable."""
        self.started: dict[str, float] = {}
        self.epochs_before: dict[str, int] = {}
        """Trial id → epochs its checkpoint held when this invocation resumed it (its pace
        counts only the epochs trained since)."""
        self.last_line: dict[str, float] = {}
        self.done_before, self.launched = done_before, time.monotonic()  # for the ETA
        self.notes: set[tuple[str, str]] = set()

    @staticmethod
    def _cell(trial: Any) -> dict[str, Any]:
        return trial.config["trial"]

    def run_id(self, trial: Any) -> str:
        if trial.trial_id not in self.run_ids:
            cell = self._cell(trial)
            self.run_ids[trial.trial_id] = cell.get("run_id") or (self.open_run(trial) if self.open_run else "")
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        if run_id:  # the run was opened when Tune was handed the trial: its start is now
            self.tracker.trial_started(run_id)
        self.started[self._cell(trial)["trial_id"]] = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        cell, final = self._cell(trial), bool(result.get(FINAL_KEY))
        rows = self._history_rows(cell, result)
        if not final:
            rows.append((int(result.get("epoch", 0)), result))
        self.tracker.log_steps(self.run_id(trial), (  # one store call per report, made by the
            (step, {k: v for k, v in row.items() if "/" in k and isinstance(v, (int, float))})
            for step, row in rows), background=not final)  # courier: the trial waits for us
        if final:
            self._final(cell, self.run_id(trial), result)
        else:
            self._epoch_line(cell, result)

    def _history_rows(self, cell: dict[str, Any], result: dict[str, Any]
                      ) -> list[tuple[int, dict[str, Any]]]:
        """The epochs a report carries besides its own: those held since the last report,
        and on a trial's first report the checkpoint's history, which the run may lack (a
        killed driver, a tracking outage; the tracker skips a logged key and step). A
        checkpoint fallback is said once."""
        note = result.get(NOTE_KEY)
        if note and (cell["trial_id"], note) not in self.notes:
            self.notes.add((cell["trial_id"], note))
            print(f"[{self.label}] {cell['name']}: {note}", flush=True)
        return [(int(row.get("epoch", 0)), row) for row in json.loads(result.get(HISTORY_KEY) or "[]")]

    def _epoch_line(self, cell: dict[str, Any], result: dict[str, Any]) -> None:
        """A line per running trial at most every PROGRESS_EVERY seconds: long budgets are
        otherwise silent for hours."""
        now = time.monotonic()
        self.epochs_before.setdefault(cell["trial_id"], int(result.get("epoch", 1)) - 1)
        if now - self.last_line.get(cell["trial_id"], self.started.get(cell["trial_id"], now)) \
                < PROGRESS_EVERY:
            return
        self.last_line[cell["trial_id"]] = now
        elapsed = now - self.started.get(cell["trial_id"], now)
        before = self.epochs_before.get(cell["trial_id"], 0)
        print(f"[{self.label}] {cell['name']}: epoch {int(result.get('epoch', 0))}, "
              f"val dice {result.get('val/dice', float('nan')):.3f} "
              f"(best {result.get('val/best_dice', float('nan')):.3f}), {elapsed / 60:.1f} min"
              f"{trial_eta(cell, result, elapsed, before)}", flush=True)

    def _final(self, cell: dict[str, Any], run_id: str, result: dict[str, Any]) -> None:
        metrics = {k: v for k, v in result.items() if k.startswith(SUMMARY_KEYS)}
        metrics.update(summary_columns(cell, metrics))  # eval/<split>/dice: one sort ranks all
        self.tracker.log_metrics(run_id, metrics, step=SUMMARY_STEP)
        self.tracker.set_tags(run_id, json.loads(result.get("tags") or "{}"))
        self.tracker.log_json(run_id, strict_json(json.loads(result["per_volume"])), "per_volume.json")
        if not self.tracker.outage.down:  # a direct call: no ~30 s wait per trial
            record_dataset(self.tracker, run_id, cell)
        self.rank(cell, result)

    def rank(self, cell: dict[str, Any], result: dict[str, Any]) -> None:
        """Keep "best so far": by the cell's own validation dice, never by the evaluation
        split, and only among cells validated on the same inputs and region."""
        val = result.get("val/best_dice")
        group = comparable_group(cell)
        if (isinstance(val, (int, float)) and cell.get("kind") != "evaluate"
                and val > self.best.get(group, (float("-inf"), ""))[0]):
            self.best[group] = (float(val), cell["name"])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cell = self._cell(trial)
        final = (trial.last_result or {}).get(FINAL_KEY)
        status = "FINISHED" if final else "KILLED"
        if not final:
            self.tracker.set_tags(self.run_id(trial), {"stopped_by": "scheduler"})
        self.tracker.finish(self.run_id(trial), status)
        if final:
            self.completed.add(cell["trial_id"])
        self._progress(cell, "done" if final else "stopped", trials, trial.last_result or {})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cell = self._cell(trial)
        reason = _error_line(trial)
        self.failed[cell["trial_id"]] = reason
        self.tracker.set_tags(self.run_id(trial), {"error": reason,
                                                   "error_file": _keep_error_file(trial, cell)})
        self.tracker.finish(self.run_id(trial), "FAILED")
        self._progress(cell, f"FAILED ({reason})", trials, {})

    def _progress(self, cell: dict[str, Any], what: str, trials: list, result: dict) -> None:
        self.done += 1
        secs = time.monotonic() - self.started.get(cell["trial_id"], time.monotonic())
        running = sum(1 for t in trials if t.status == "RUNNING")
        pending = sum(1 for t in trials if t.status == "PENDING")
        found = next(((parse_eval_metric(k), v) for k, v in result.items()
                      if (parse_eval_metric(k) or ("", "", ""))[2] == "dice"), None)
        score = f" {found[0][0]} dice {found[1]:.3f}" if found and isinstance(found[1], float) else ""
        top = self.best.get(comparable_group(cell))
        best = (f" | best val so far on {'+'.join(comparable_group(cell))} {top[0]:.3f} ({top[1]})"
                if top else "")
        eta = study_eta(time.monotonic() - self.launched, self.done - self.done_before,
                        self.total - self.done)
        print(f"[{self.label}] {self.done}/{self.total} {what}: {cell['name']}{score} "
              f"({secs:.0f}s) | running {running}, pending {pending}{best}{eta}", flush=True)


def trial_eta(cell: dict[str, Any], result: dict[str, Any], elapsed: float,
              epochs_before: int = 0) -> str:
    """", ≤ N min left": the epochs left at this trial's pace (``elapsed`` seconds for the
    epochs after ``epochs_before``, those its checkpoint held when resumed), capped by its
    time budget, which counts across resumes (early stopping can end it sooner)."""
    train = (cell.get("config") or {}).get("train", {})
    epoch, cap = int(result.get("epoch", 0)), int(train.get("max_epochs") or 0)
    if epoch <= epochs_before or cap <= epoch:
        return ""
    left = elapsed / (epoch - epochs_before) * (cap - epoch)
    if train.get("max_seconds"):
        spent = float(result.get("time/trial_s", elapsed))
        left = min(left, max(0.0, float(train["max_seconds"]) - spent))
    return f", epoch cap {cap}, ≤ {left / 60:.1f} min left"


def study_eta(elapsed: float, finished: int, remaining: int) -> str:
    """" | M min, ETA ~N min": this invocation's pace (trials finished per wall-clock
    minute, concurrency included) over the study's remaining trials."""
    if finished <= 0:
        return ""
    eta = f", ETA ~{elapsed / finished * remaining / 60:.1f} min" if remaining > 0 else ""
    return f" | {elapsed / 60:.1f} min{eta}"


def _error_line(trial: Any) -> str:
    """Last line of the trial's error (the exception message), for tags and the summary."""
    path = getattr(trial, "error_file", None) or ""
    try:
        with open(path) as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
        return lines[-1][:500] if lines else "unknown error"
    except OSError:
        return "unknown error"


def _keep_error_file(trial: Any, cell: dict[str, Any]) -> str:
    """Copy Tune's error file (the traceback; it lives in Ray's temporary session folder)
    to the cell's trial folder as ``error.txt``; returns its path ('' if there is none)."""
    import re

    try:
        text = Path(getattr(trial, "error_file", None) or "").read_text()
        kept = Path(cell["trial_dir"]) / "error.txt"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(re.sub(r"\x1b\[[0-9;]*m", "", text))  # no terminal colours
        return str(kept)
    except (OSError, KeyError):  # no file, or no room for it: the error line still goes out
        return ""


def comparable_group(cell: dict[str, Any]) -> tuple[str, str]:
    """The validation set a cell's dice is measured on: its input modalities and region."""
    data = (cell.get("config") or {}).get("data", {})
    return ",".join(data.get("modalities", ())), str(data.get("region", ""))

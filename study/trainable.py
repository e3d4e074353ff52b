"""The Ray Tune function trainable: one grid cell → core's trainer → reports.

The trial config carries everything as plain data with absolute paths (trials
run with their Tune directory as cwd). Metrics go out through
``ray.tune.report`` with a checkpoint (core's own ``last.pt``, readable without Ray)
after every epoch, or, for epochs shorter than ``REPORT_EVERY_S``, with the next report
(their rows ride along as history); the final report adds per-modality metrics on the evaluation split and the
per-volume rows that the report's confidence intervals are computed from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import metrics
from core.atomic import write_text
from core.checkpoint import load_checkpoint, load_resume_checkpoint, weights_digest
from core.config import from_dict
from core.device import resolve_device
from core.evaluation import volumes
from core.nested import merge, unflatten
from core.protocol import eval_metric
from core.trainer import fit
from study.trial_entry import FINAL_KEY, HISTORY_KEY, NOTE_KEY, sampled_id


def _inject_fault(name: str, patterns: str) -> int:
    """Fault drill (``--inject-failure``): a trial whose name contains a pattern fails at
    start; with ``PATTERN@N`` it fails once, after epoch N, losing its local ``last.pt``
    (a node that died with its disk): returns N, or 0."""
    for token in filter(None, patterns.split(",")):
        pattern, _, epoch = token.partition("@")
        if pattern in name:
            if not epoch:
                raise RuntimeError(f"deliberate failure (--inject-failure {token!r})")
            return int(epoch)
    return 0


def _fail_once_after(epoch: int, out_dir: Path, report: Callable[[dict[str, Any]], None]
                     ) -> Callable[[dict[str, Any]], None]:
    """``report``, then (first attempt only) drop ``last.pt`` and fail after ``epoch``."""
    marker = out_dir / f".injected-failure-{epoch}"

    def report_then_fail(result: dict[str, Any]) -> None:
        report(result)
        if epoch and result["epoch"] == epoch and not marker.exists():
            marker.touch()
            (out_dir / "last.pt").unlink(missing_ok=True)
            raise RuntimeError(f"deliberate failure after epoch {epoch} (--inject-failure)")

    return report_then_fail


def _resume_point(out_dir: Path) -> dict[str, str]:
    """Make ``last.pt`` a readable resume point before ``fit`` (``load_resume_checkpoint``:
    fall back to ``last.prev.pt``, Tune's copy on a retry, ``best.pt``, else start over).
    Returns what the driver needs: the checkpoint's epoch history (it re-logs epochs MLflow
    lacks) and the one-line note when a fallback was used."""
    from ray import tune

    _hold_trial_folder(out_dir)
    staged = out_dir / "last.tune.pt"
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if (Path(d) / "last.pt").exists():
                shutil.copy2(Path(d) / "last.pt", staged)
    resumed, note = load_resume_checkpoint(out_dir, {"Tune's copy": staged})
    staged.unlink(missing_ok=True)
    history = resumed.get("history", []) if resumed else []
    return {HISTORY_KEY: json.dumps(history), NOTE_KEY: note}


_HELD: list[Any] = []
"""The open lock file of the trial this process runs (one at a time: actors are reused)."""


def _hold_trial_folder(out_dir: Path, wait_s: float = 120.0) -> None:
    """Hold ``out_dir`` while this process trains in it. A worker orphaned by a killed
    driver writes on for a few seconds: wait for it (the OS drops a dead holder's lock)."""
    import fcntl
    import time

    while _HELD:
        _HELD.pop().close()
    handle = open(out_dir / ".trial.lock", "a")  # noqa: SIM115 - held until the next trial
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise RuntimeError(f"trial folder {out_dir} is still in use by another process "
                                   f"after {wait_s:g} s") from None
            time.sleep(0.2)
    _HELD.append(handle)


REPORT_EVERY_S = 5.0
"""Shortest interval between two reports to Tune. A report stalls the trial until the
driver has handled it: ~22 ms (median) with the checkpoint's copy, since the MLflow write
went to a background thread (``study.courier``; 52–64 ms before). Nothing next to a real
epoch, far more than a sub-second one; every 5 s it is ~0.4 % of the trial's time. Epochs
in between reach MLflow with the next report, as history rows."""


def _epoch_reporter(first: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    """The trainer's callback: ``_report_epoch`` at most every ``REPORT_EVERY_S`` seconds
    (always the attempt's first epoch, which also carries ``first`` = ``_resume_point``);
    the epochs held back go out with the next report."""
    pending: list[dict[str, str]] = [first]
    held: list[dict[str, float]] = []
    last = [-float("inf")]

    def report(epoch_report: dict[str, Any]) -> None:
        now = time.monotonic()
        if not pending and now - last[0] < REPORT_EVERY_S:
            held.append(_numbers(epoch_report))
            return
        extra = pending.pop() if pending else {}
        if held:
            rows = json.loads(extra.get(HISTORY_KEY) or "[]") + held
            extra = {**extra, HISTORY_KEY: json.dumps(rows)}
            held.clear()
        last[0] = now
        _report_epoch(epoch_report, extra)

    return report


def _numbers(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if isinstance(v, (int, float))}


def _report_epoch(report: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    """The epoch's numbers to Tune, with core's ``last.pt`` as checkpoint."""
    from ray import tune

    numbers = _numbers(report)
    numbers.update(extra or {})
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(report["checkpoint"], Path(tmp) / "last.pt")
        tune.report(numbers, checkpoint=tune.Checkpoint.from_directory(tmp))


def eval_summary(split: str, key: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The logged summary of one evaluation set (``eval/<split>/<key>/…``): mean and 95% CI
    per study metric (HD95 included) over the per-volume ``rows`` under the empty-truth
    policy, with volume counts (``core.metrics.policy_summary``)."""
    return {eval_metric(split, key, name): value
            for name, value in metrics.policy_summary(rows).items()}


def eval_metrics(state: dict[str, Any], store: str, eval_sets: list[str], split: str,
                 device: str) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """``eval/<split>/<set>/<metric>`` means with CIs, and per-volume rows per evaluation set."""
    out: dict[str, float] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for eval_set in eval_sets:
        mods = tuple(eval_set.split(","))
        key = volumes.modality_key(mods)
        results = volumes.evaluate_checkpoint(state, store, mods, split, resolve_device(device))
        rows[key] = [r.row() for r in results]
        out.update(eval_summary(split, key, rows[key]))
    return out, rows


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune entry point. ``config["trial"]`` is one prepared cell (see runner)."""
    import torch
    from ray import tune

    cell = config["trial"]
    fail_after = _inject_fault(cell["name"], cell.get("inject_failure", ""))
    torch.set_num_threads(max(1, int(cell["threads"])))
    spec_config = dict(cell["config"])
    if config.get("sampled"):  # HPO: the searcher's values overlay the cell's config
        spec_config = merge(spec_config, unflatten(config["sampled"]))
    if cell.get("source_checkpoint"):
        spec_config["transfer"] = {**spec_config["transfer"], "source": cell["source_checkpoint"]}
    cfg = from_dict(spec_config)
    if cell["device"] != "auto":
        cfg = cfg.replace({"train.device": cell["device"]})
    out_dir = Path(cell["trial_dir"])
    if config.get("sampled"):
        out_dir = out_dir / sampled_id(config["sampled"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "cell.json", json.dumps(  # the hash-named folder says what it holds
        {"name": cell["name"], "trial_id": cell["trial_id"], "kind": cell["kind"],
         "budget": cell.get("budget"),
         "sampled": config.get("sampled"), "config": spec_config}, indent=1, default=str))
    final: dict[str, Any] = {}
    if cell["kind"] == "evaluate":
        state = load_checkpoint(cell["source_checkpoint"])
    else:
        resume = _resume_point(out_dir)
        result = fit(cfg, out_dir, callback=_fail_once_after(fail_after, out_dir,
                                                             _epoch_reporter(resume)),
                     provenance={"budget": cell.get("budget", ""), "cell": cell["name"],
                                 "trial_id": cell["trial_id"]})
        state = load_checkpoint(result.best_path)
        # val/best_dice and epoch again: schedulers check every result for their metric
        final.update({"val/best_dice": result.best_score, "epoch": result.epochs,
                      "best/epoch": result.best_epoch,
                      "train/epochs": result.epochs, "train/steps": result.steps})
        final["tags"] = {"best_checkpoint": str(result.best_path), "stopped": result.stopped,
                         "init_digest": result.init_digest,
                         "best_digest": weights_digest(state["segmentor"], state["critic"])}
        final.update({HISTORY_KEY: json.dumps(result.history), NOTE_KEY: resume[NOTE_KEY]})
    test, rows = eval_metrics(state, cfg.data.store, list(cell["eval_modalities"]),
                              cell["eval_split"], cfg.train.device)
    final.update(test)
    final["per_volume"] = json.dumps(rows)
    final[FINAL_KEY] = 1
    tune.report({**final, "tags": json.dumps(final.get("tags", {}))})

"""The prepare pipeline: BraTS folder → validated, preprocessed cases → zarr store.

``prepare()`` is the one preparation path: the CLI (``core/data/commands.py``), the
synthetic default dataset and the benchmarks all call it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.atomic import staging_path
from core.data.brats import CaseFiles, check_simpleitk, discover_cases
from core.data.preprocess import PreprocessParams, preprocess_case, region_mask
from core.data.splits import (
    SplitCase,
    assign_folds,
    assign_splits,
    minimum_note,
    patient_id,
    split_summary,
)
from core.data.store import (
    BratsStore,
    StorageSpec,
    check_output_path,
    commit_store,
    create_store,
    is_store,
    layout_dict,
    write_case,
)
from core.errors import DataError
from core.version import code_version
from core.vocabulary import MODALITIES

Log = Callable[[str], None]
DEFAULT_TEST_FRACTION = 0.15
"""Held-out test share of all patients by default: the study's numbers come from it."""


@dataclass
class PrepareResult:
    """What prepare() did: the store path, cases written, skipped-case messages, timing."""

    out: Path
    written: int = 0
    skipped: list[str] = field(default_factory=list)
    up_to_date: bool = False
    seconds: float = 0.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_sources(cases: list[CaseFiles], root: Path, workers: int) -> dict[str, dict]:
    """{case_id: {modality|"seg": {path (relative to root), sha256, bytes}}}."""
    jobs = [
        (c.case_id, k, p)
        for c in cases
        for k, p in [*c.images.items(), *([("seg", c.label)] if c.label else [])]
    ]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib releases the GIL
        digests = list(pool.map(lambda j: _sha256(j[2]), jobs))
    out: dict[str, dict] = {c.case_id: {} for c in cases}
    for (cid, kind, path), digest in zip(jobs, digests, strict=True):
        rel = os.path.relpath(path, root)
        out[cid][kind] = {"path": rel, "sha256": digest, "bytes": path.stat().st_size}
    return out


def _prepare_one(case: CaseFiles, params: PreprocessParams, tmp: str, spec: StorageSpec):
    """Worker: preprocess and write one case. Returns (case_id, row or error message, s)."""
    start = time.perf_counter()
    try:
        pre = preprocess_case(case, params, MODALITIES, require_label=True)
        write_case(Path(tmp), pre, spec)
    except DataError as exc:
        return case.case_id, str(exc), time.perf_counter() - start
    assert pre.labels is not None
    row = {
        "case_id": case.case_id,
        "release": case.release,
        "grade": case.grade,
        "institution": case.institution,
        "num_slices": int(pre.image.shape[0]),
        "shape": list(pre.image.shape),
        "wt_voxels": int(region_mask(pre.labels, "wt", case.release).sum()),
        "label_values": sorted(int(v) for v in set(pre.labels.ravel().tolist())),
        **pre.info,
    }
    return case.case_id, row, time.perf_counter() - start


def _run_cases(cases, params, tmp, spec, workers) -> Generator[tuple[str, Any, float]]:
    if workers <= 1:
        for case in cases:
            yield _prepare_one(case, params, str(tmp), spec)
        return
    # spawn, not fork: a forked child inheriting zarr's IO thread state can deadlock.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        futures = [pool.submit(_prepare_one, c, params, str(tmp), spec) for c in cases]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _inputs_digest(request: dict, sources: dict, cases: list[CaseFiles], problems: list) -> str:
    key = {
        "request": request,
        "problems": problems,
        "cases": {
            c.case_id: [c.release, c.grade, c.institution, sources[c.case_id]] for c in cases
        },
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _existing_digest(out: Path) -> str | None:
    if not is_store(out):
        return None
    try:
        return BratsStore(out).manifest.get("inputs_digest")
    except DataError:  # e.g. an older store format: rebuild it
        return None


def prepare(
    brats_root: Path,
    out: Path,
    params: PreprocessParams | None = None,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    folds: int | None = None,
    seed: int = 0,
    workers: int = 1,
    grades_csv: Path | None = None,
    strict: bool = False,
    force: bool = False,
    spec: StorageSpec | None = None,
    extra_manifest: dict[str, Any] | None = None,
    log: Log = print,
) -> PrepareResult:
    """Discover, validate, preprocess and store every case under ``brats_root`` in ``out``.

    Bad cases are reported and skipped (``strict`` makes the first one fatal). Writes to a
    temporary path beside ``out`` and renames it when complete; a store whose recorded
    inputs (source sha256s, parameters) match is left alone unless ``force``.
    """
    start = time.perf_counter()
    params, spec = params or PreprocessParams(), spec or StorageSpec()
    if "://" in str(out):
        raise DataError(f"prepare writes a local store; got URL {out} (copy the store afterwards)")
    root, out = Path(brats_root).resolve(), Path(out).resolve()
    check_output_path(out)
    cases, problems = discover_cases(root, grades_csv)
    if problems and strict:
        raise DataError(f"{problems[0]} (--strict; {len(problems)} problem(s) found)")
    check_simpleitk(cases)
    sources = _hash_sources(cases, root, workers)
    request = {
        "preprocessing": params.as_dict(),
        "storage": layout_dict(spec),
        "splits": [val_fraction, test_fraction, folds, seed],
        "grades_csv": _sha256(grades_csv) if grades_csv else None,
        "extra": extra_manifest,
    }
    digest = _inputs_digest(request, sources, cases, problems)
    if not force and _existing_digest(out) == digest:
        log(
            f"{out} is up to date with {root} (same files and parameters): nothing to do; "
            f"--force rebuilds it"
        )
        return PrepareResult(out, up_to_date=True, seconds=time.perf_counter() - start)

    result = PrepareResult(out, skipped=list(problems))
    for msg in problems:
        log(f"skip: {msg}")
    tmp = staging_path(out)
    try:
        create_store(tmp)
        rows = _process(cases, params, tmp, spec, workers, strict, result, log)
        for row in rows:
            row["sources"] = sources[row["case_id"]]
        manifest = _manifest(root, params, spec, rows, result.skipped, digest, code_version())
        manifest["splits"] = _splits(rows, val_fraction, test_fraction, folds, seed, log)
        manifest.update(extra_manifest or {})
        commit_store(tmp, out, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.written, result.seconds = len(rows), time.perf_counter() - start
    _log_summary(result, rows, log)
    return result


def _process(cases, params, tmp, spec, workers, strict, result, log) -> list[dict]:
    rows: list[dict] = []
    width = len(str(len(cases)))
    # closing(): on an error here the worker pool is shut down (and stops writing into tmp)
    # before the caller removes tmp.
    with contextlib.closing(_run_cases(cases, params, tmp, spec, workers)) as results:
        for i, (cid, row, seconds) in enumerate(results, 1):
            if isinstance(row, str):
                if strict:
                    raise DataError(f"{row} (--strict)")
                result.skipped.append(row)
                log(f"[{i:{width}}/{len(cases)}] {cid}: SKIPPED: {row}")
                continue
            rows.append(row)
            log(
                f"[{i:{width}}/{len(cases)}] {cid}: ok ({row['grade']}, {row['institution']}, "
                f"WT {row['wt_voxels']} voxels, {seconds:.1f} s)"
            )
    if not rows:
        raise DataError(
            f"no usable cases; {len(result.skipped)} skipped: " + "; ".join(result.skipped[:5])
        )
    return sorted(rows, key=lambda r: r["case_id"])


def _splits(rows: list[dict], val_fraction, test_fraction, folds, seed, log: Log = print
            ) -> dict[str, Any]:
    for r in rows:
        r["patient"] = patient_id(r["case_id"])
    split_cases = [SplitCase(r["case_id"], r["grade"], r["institution"], r["patient"])
                   for r in rows]
    split = assign_splits(split_cases, val_fraction, test_fraction, seed)
    note = minimum_note(len(rows), val_fraction, test_fraction, Counter(split.values()))
    if note:
        log(f"note: {note}")
    fold = (
        assign_folds([c for c in split_cases if split[c.case_id] != "test"], folds, seed)
        if folds
        else {}
    )
    for r in rows:
        r["split"], r["fold"] = split[r["case_id"]], fold.get(r["case_id"])
    return {
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "folds": folds,
        "stratify": ["grade", "institution"],
        "group": "patient",
        "counts": split_summary(rows),
    }


def _manifest(root, params, spec, rows, skipped, digest, version) -> dict[str, Any]:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": version,
        "source_root": str(root),
        "preprocessing": params.as_dict(),
        "modalities": list(MODALITIES),
        "layout": layout_dict(spec),
        "inputs_digest": digest,
        "cases": rows,
        "skipped": skipped,
    }


def _log_summary(result: PrepareResult, rows: list[dict], log: Log) -> None:
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    log(
        f"wrote {result.written} cases to {result.out} in {result.seconds:.1f} s "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']})"
    )
    if result.skipped:
        log(f"skipped {len(result.skipped)}:")
        for msg in result.skipped:
            log(f"  - {msg}")

"""Seeded, stratified train/val/test splits and optional k-fold assignment.

Fractions: ``test_fraction`` is a fraction of all cases; ``val_fraction`` a fraction of the
cases left after the test split (so 0.2 keeps the paper's 80/20 train/val ratio whether or
not a test split is held out). Counts are ``round(n * fraction)``.

Stratification by systematic sampling: cases are ordered by (grade, institution), shuffled
within each stratum (and the strata shuffled within each grade), then every 1/fraction-th
position is taken. Any contiguous run of that order, hence every (grade, institution)
stratum and every grade, gets its proportional share to within one case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitCase:
    """What stratification needs to know about a case."""

    case_id: str
    grade: str = "unknown"
    institution: str = "unknown"


def _stratified_order(cases: Sequence[SplitCase], rng: np.random.Generator) -> list[str]:
    """Case ids grouped by grade, then institution, in a seeded random order inside."""
    strata: dict[str, dict[str, list[str]]] = {}
    for c in sorted(cases, key=lambda c: c.case_id):
        strata.setdefault(c.grade, {}).setdefault(c.institution, []).append(c.case_id)
    order: list[str] = []
    for grade in sorted(strata):
        institutions = sorted(strata[grade])
        for k in rng.permutation(len(institutions)):
            ids = strata[grade][institutions[k]]
            order.extend(ids[j] for j in rng.permutation(len(ids)))
    return order


def _systematic(order: list[str], count: int) -> set[str]:
    """Pick ``count`` ids spread evenly over ``order`` (position i taken when the running
    quota floor((i + 1) * f + 1/2) steps up)."""
    n = len(order)
    if count <= 0 or n == 0:
        return set()
    f = count / n
    return {
        cid
        for i, cid in enumerate(order)
        if math.floor((i + 1) * f + 0.5) > math.floor(i * f + 0.5)
    }


def _count(n: int, fraction: float) -> int:
    return int(math.floor(n * fraction + 0.5))


def assign_splits(
    cases: Sequence[SplitCase],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, str]:
    """Map case id -> "train" | "val" | "test" (see module docstring for the fractions)."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {frac}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise DataError("duplicate case ids given to assign_splits")
    rng = np.random.default_rng(seed)
    order = _stratified_order(cases, rng)
    test = _systematic(order, _count(len(order), test_fraction))
    rest = [cid for cid in order if cid not in test]
    val = _systematic(rest, _count(len(rest), val_fraction))
    return {cid: "test" if cid in test else "val" if cid in val else "train" for cid in ids}


def assign_folds(cases: Sequence[SplitCase], folds: int, seed: int = 0) -> dict[str, int]:
    """Map case id -> fold in [0, folds), stratified like assign_splits (round robin over
    the stratified order, starting at a seeded fold)."""
    if folds < 2:
        raise DataError(f"folds must be >= 2, got {folds}")
    if folds > len(cases):
        raise DataError(f"folds ({folds}) exceeds the number of cases ({len(cases)})")
    rng = np.random.default_rng([seed, folds])
    order = _stratified_order(cases, rng)
    start = int(rng.integers(folds))
    return {cid: (start + i) % folds for i, cid in enumerate(order)}


def split_summary(rows: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Counts per split and grade from manifest rows: {split: {grade: n, "total": n}}."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        per = out.setdefault(row["split"], {"total": 0})
        per["total"] += 1
        per[row.get("grade", "unknown")] = per.get(row.get("grade", "unknown"), 0) + 1
    return out

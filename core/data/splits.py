"""Seeded, stratified train/val/test splits and optional k-fold assignment.

Fractions: ``test_fraction`` is a fraction of all cases; ``val_fraction`` a fraction of the
cases left after the test split (so 0.2 keeps the paper's 80/20 train/val ratio whether or
not a test split is held out). Counts are ``round(n * fraction)``.

Patients, not scans, are split: cases of one patient (BraTS 2015 longitudinal scans
``brats_tcia_pat101_1``/``…_2``, BraTS 2023 timepoints ``BraTS-GLI-00012-000``/``-001``)
always share a split. Sampling works on patients; fractions are then of patients.

Every requested split gets at least one patient as long as one stays for training and
(when asked for) one for validation; ``minimum_note`` says when a split had to stay empty.

Stratification by systematic sampling: cases are ordered by (grade, institution), shuffled
within each stratum (and the strata shuffled within each grade), then every 1/fraction-th
position is taken. Any contiguous run of that order, hence every (grade, institution)
stratum and every grade, gets its proportional share to within one case.
"""

from __future__ import annotations

import math
import re
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
    patient: str = ""
    """Patient id; empty = the case is its own patient."""

    @property
    def group(self) -> str:
        return self.patient or self.case_id


# Releases that encode the patient in the case name; the trailing number is the scan.
_PATIENT_PATTERNS = (
    re.compile(r"^(brats_[A-Za-z0-9]+_pat\d+)_\d+$", re.I),   # 2015: brats_2013_pat0001_1
    re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d+$"),               # 2023+: BraTS-GLI-00000-000
)


def patient_id(case_id: str) -> str:
    """The patient a case belongs to, where the release's naming says it; else the case id."""
    for pattern in _PATIENT_PATTERNS:
        m = pattern.match(case_id)
        if m:
            return m.group(1)
    return case_id


def _stratified_order(cases: Sequence[SplitCase], rng: np.random.Generator) -> list[str]:
    """Patient ids grouped by grade, then institution (of the patient's first case), in a
    seeded random order inside."""
    strata: dict[str, dict[str, list[str]]] = {}
    seen: set[str] = set()
    for c in sorted(cases, key=lambda c: c.case_id):
        if c.group in seen:
            continue
        seen.add(c.group)
        strata.setdefault(c.grade, {}).setdefault(c.institution, []).append(c.group)
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


def _count(n: int, fraction: float, keep: int = 1) -> int:
    """round(n · fraction), at least 1 when a share is asked for, leaving ``keep`` patients."""
    count = int(math.floor(n * fraction + 0.5))
    if fraction > 0:
        count = max(count, 1)
    return max(0, min(count, n - keep))


def minimum_note(n_cases: int, val_fraction: float, test_fraction: float,
                 counts: dict[str, int]) -> str:
    """A message when a requested split is empty because there are too few patients."""
    empty = [name for name, frac in (("test", test_fraction), ("val", val_fraction))
             if frac > 0 and not counts.get(name)]
    if not empty:
        return ""
    return (f"only {n_cases} usable case(s): too few to hold out a {' or '.join(empty)} split; "
            f"numbers will be reported on the splits that exist (named by split)")


def assign_splits(
    cases: Sequence[SplitCase],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, str]:
    """Map case id -> "train" | "val" | "test" (see module docstring: patients, fractions)."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {frac}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise DataError("duplicate case ids given to assign_splits")
    rng = np.random.default_rng(seed)
    order = _stratified_order(cases, rng)
    # train and (when asked for) val come first: a study cannot select without them
    test = _systematic(order, _count(len(order), test_fraction, keep=2 if val_fraction else 1))
    rest = [cid for cid in order if cid not in test]
    val = _systematic(rest, _count(len(rest), val_fraction))
    group = {c.case_id: c.group for c in cases}
    return {cid: "test" if group[cid] in test else "val" if group[cid] in val else "train"
            for cid in ids}


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
    fold_of = {gid: (start + i) % folds for i, gid in enumerate(order)}
    return {c.case_id: fold_of[c.group] for c in cases}


def split_summary(rows: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Counts per split and grade from manifest rows: {split: {grade: n, "total": n}}."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        per = out.setdefault(row["split"], {"total": 0})
        per["total"] += 1
        per[row.get("grade", "unknown")] = per.get(row.get("grade", "unknown"), 0) + 1
    return out

"""Seeded stratified splits and folds on a synthetic manifest with known grades."""

from __future__ import annotations

from collections import Counter

import pytest

from core.data.splits import SplitCase, assign_folds, assign_splits
from core.errors import DataError


def _manifest() -> list[SplitCase]:
    """113 cases: uneven grades and institutions (like BraTS 2019's mix)."""
    sizes = {("HGG", "TCIA01"): 31, ("HGG", "CBICA"): 40, ("HGG", "2013"): 9,
             ("LGG", "TCIA09"): 21, ("LGG", "2013"): 7, ("LGG", "unknown"): 5}  # fmt: skip
    return [
        SplitCase(f"{grade}_{inst}_{i:03d}", grade, inst)
        for (grade, inst), n in sizes.items()
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", [0, 1, 1234567890])
@pytest.mark.parametrize(("val", "test"), [(0.2, 0.0), (0.2, 0.15), (0.25, 0.1)])
def test_stratified_within_one_case_per_stratum(seed: int, val: float, test: float) -> None:
    cases = _manifest()
    split = assign_splits(cases, val_fraction=val, test_fraction=test, seed=seed)
    n = len(cases)
    n_test = int(n * test + 0.5)
    n_val = int((n - n_test) * val + 0.5)
    counts = Counter(split.values())
    assert (counts["test"], counts["val"]) == (n_test, n_val)
    assert counts["train"] == n - n_test - n_val
    keys = [lambda c: (c.grade, c.institution), lambda c: c.grade]
    for key in keys:  # every stratum, and every grade, gets its share to within one case
        groups: dict = {}
        for c in cases:
            groups.setdefault(key(c), []).append(split[c.case_id])
        for members in groups.values():
            assert abs(members.count("test") - len(members) * n_test / n) < 1
            non_test = len(members) - members.count("test")  # val is drawn from the rest
            assert abs(members.count("val") - non_test * n_val / (n - n_test)) < 1


def test_seeded_and_order_independent() -> None:
    cases = _manifest()
    a = assign_splits(cases, 0.2, 0.1, seed=7)
    assert assign_splits(list(reversed(cases)), 0.2, 0.1, seed=7) == a
    assert assign_splits(cases, 0.2, 0.1, seed=8) != a


def test_synthetic_fractions_give_16_4_4() -> None:
    from core.data.synthetic import SYNTHETIC_TEST_FRACTION, SYNTHETIC_VAL_FRACTION

    cases = [SplitCase(f"c{i}", "HGG" if i % 3 else "LGG", f"I{i % 4}") for i in range(24)]
    counts = Counter(assign_splits(cases, SYNTHETIC_VAL_FRACTION, SYNTHETIC_TEST_FRACTION).values())
    assert counts == {"train": 16, "val": 4, "test": 4}


def test_folds_balanced_and_stratified() -> None:
    cases = _manifest()
    folds = assign_folds(cases, 5, seed=3)
    sizes = Counter(folds.values())
    assert sorted(sizes) == [0, 1, 2, 3, 4]
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for grade in ("HGG", "LGG"):
        per = Counter(folds[c.case_id] for c in cases if c.grade == grade)
        assert max(per.values()) - min(per.values()) <= 1
    assert assign_folds(cases, 5, seed=3) == folds


def test_bad_arguments() -> None:
    cases = _manifest()
    with pytest.raises(DataError, match="val_fraction"):
        assign_splits(cases, val_fraction=1.2)
    with pytest.raises(DataError, match="folds"):
        assign_folds(cases[:3], 5)
    with pytest.raises(DataError, match="duplicate"):
        assign_splits([SplitCase("a"), SplitCase("a")])

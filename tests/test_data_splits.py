"""Seeded stratified splits and folds on a synthetic manifest with known grades."""

from __future__ import annotations

from collections import Counter

import pytest

from core.data.splits import SplitCase, assign_folds, assign_splits, minimum_note, patient_id
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


@pytest.mark.parametrize(("case_id", "patient"), [
    ("brats_2013_pat0001_1", "brats_2013_pat0001"),
    ("brats_tcia_pat101_2", "brats_tcia_pat101"),
    ("BraTS-GLI-00012-001", "BraTS-GLI-00012"),
    ("BraTS-MEN-00400-000", "BraTS-MEN-00400"),
    ("Brats18_TCIA01_201_1", "Brats18_TCIA01_201_1"),  # 2017-2021: one case, one patient
    ("BraTS2021_00000", "BraTS2021_00000"),
])
def test_patient_id_from_release_naming(case_id: str, patient: str) -> None:
    assert patient_id(case_id) == patient


@pytest.mark.parametrize("seed", range(8))
def test_scans_of_one_patient_never_straddle_splits(seed: int) -> None:
    cases = []
    for p in range(30):  # 30 patients with 1-4 longitudinal scans each
        for t in range(1 + p % 4):
            cid = f"BraTS-GLI-{p:05d}-{t:03d}"
            cases.append(SplitCase(cid, "HGG" if p % 3 else "LGG", "unknown", patient_id(cid)))
    split = assign_splits(cases, 0.2, 0.15, seed=seed)
    by_patient: dict[str, set[str]] = {}
    for c in cases:
        by_patient.setdefault(c.patient, set()).add(split[c.case_id])
    assert all(len(s) == 1 for s in by_patient.values())
    assert {"train", "val", "test"} == set(split.values())
    folds = assign_folds(cases, 5, seed=seed)
    assert all(len({folds[c.case_id] for c in cases if c.patient == p}) == 1 for p in by_patient)


def test_small_sets_still_hold_out_one_patient_or_say_why() -> None:
    three = [SplitCase(f"c{i}") for i in range(3)]
    counts = Counter(assign_splits(three, 0.2, 0.15).values())
    assert counts == {"train": 1, "val": 1, "test": 1}
    two = [SplitCase(f"c{i}") for i in range(2)]
    counts = Counter(assign_splits(two, 0.2, 0.15).values())
    assert counts == {"train": 1, "val": 1}  # training and selection come before a test split
    assert "too few to hold out a test split" in minimum_note(2, 0.2, 0.15, counts)
    one = [SplitCase("c0")]
    counts = Counter(assign_splits(one, 0.2, 0.15).values())
    assert counts == {"train": 1}
    assert "too few to hold out a test or val split" in minimum_note(1, 0.2, 0.15, counts)
    assert minimum_note(3, 0.2, 0.15, {"train": 1, "val": 1, "test": 1}) == ""

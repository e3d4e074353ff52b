"""The synthetic default dataset: layout, determinism, and modality contrast like real MRI."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.data.brats import discover_cases
from core.data.store import BratsStore
from core.data.synthetic import ensure_synthetic_store, write_synthetic_brats


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Separability of two samples (Mann-Whitney AUC, symmetric: 0.5 = none, 1 = perfect)."""
    values = np.concatenate([pos, neg])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    a = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    return max(a, 1 - a)


def test_layout_and_determinism(tmp_path: Path) -> None:
    a = write_synthetic_brats(tmp_path / "a", n_cases=3, shape=(40, 44, 24), seed=1)
    b = write_synthetic_brats(tmp_path / "b", n_cases=3, shape=(40, 44, 24), seed=1)
    c = write_synthetic_brats(tmp_path / "c", n_cases=3, shape=(40, 44, 24), seed=2)
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.nii.gz"))
    assert "HGG/Brats18_TCIA01_100_1/Brats18_TCIA01_100_1_t1ce.nii.gz" in names
    assert "HGG/Brats18_CBICA_AAB_1/Brats18_CBICA_AAB_1_seg.nii.gz" in names
    assert "LGG/Brats18_2013_2_1/Brats18_2013_2_1_flair.nii.gz" in names
    assert len(names) == 15
    for name in names:
        da = np.asarray(nib.load(a / name).dataobj)
        assert da.shape == (40, 44, 24)
        np.testing.assert_array_equal(da, np.asarray(nib.load(b / name).dataobj))
    seg = np.asarray(nib.load(a / next(n for n in names if n.endswith("_seg.nii.gz"))).dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
    differs = [
        not np.array_equal(np.asarray(nib.load(a / n).dataobj), np.asarray(nib.load(c / n).dataobj))
        for n in names
    ]
    assert all(differs)
    cases, problems = discover_cases(a)
    assert problems == [] and len(cases) == 3
    assert {(x.grade, x.institution) for x in cases} == {
        ("HGG", "TCIA01"),
        ("HGG", "CBICA"),
        ("LGG", "2013"),
    }


def test_store_split_and_empty_cases(synthetic_store: Path) -> None:
    store = BratsStore(synthetic_store)
    m = store.manifest
    assert m["preprocessing"]["crop"] == [80, 80, 32]
    assert Counter(r["split"] for r in m["cases"]) == {"train": 16, "val": 4, "test": 4}
    assert {r["institution"] for r in m["cases"]} == {"TCIA01", "TCIA02", "CBICA", "2013"}
    assert {r["grade"] for r in m["cases"]} == {"HGG", "LGG"}
    wt = [r["wt_voxels"] for r in m["cases"]]
    assert 0 in wt and sum(v > 0 for v in wt) >= 20  # some cases have no tumour in the crop
    empty_slices = 0
    for r in m["cases"]:
        per_slice = store.read_mask(r["case_id"]).sum(axis=(1, 2))
        empty_slices += int((per_slice == 0).sum())
        labels = set(store.read_labels(r["case_id"]).ravel().tolist())
        assert labels <= {0, 1, 2, 4} and (2 in labels or r["wt_voxels"] == 0)
    assert 0.25 < empty_slices / (24 * 32) < 0.75  # empty slices are common, as in BraTS


def test_modality_contrast_orders_like_real_mri(synthetic_store: Path) -> None:
    store = BratsStore(synthetic_store)
    rng = np.random.default_rng(0)
    pos: dict[str, list] = {m: [] for m in store.modalities}
    neg: dict[str, list] = {m: [] for m in store.modalities}
    for cid in store.case_ids():
        image = store.read_image(cid, store.modalities)
        wt = store.read_mask(cid).astype(bool)
        brain = image.max(axis=1) > 0
        for k, m in enumerate(store.modalities):
            pos[m].append(image[:, k][wt])
            neg[m].append(image[:, k][brain & ~wt])
    score = {}
    for m in store.modalities:
        p, n = np.concatenate(pos[m]), np.concatenate(neg[m])
        score[m] = auc(rng.choice(p, 20000), rng.choice(n, 20000))
    assert score["flair"] > 0.9, score
    assert score["t1"] < 0.75, score
    # T1c's advantage over T1 is the enhancing rim's shape, which voxel intensities miss
    assert score["flair"] > score["t2"] > max(score["t1c"], score["t1"]), score


def test_second_call_is_a_cached_noop(synthetic_store: Path) -> None:
    stamp = (synthetic_store / "zarr.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_synthetic_store(synthetic_store.parent) == synthetic_store
    assert time.perf_counter() - start < 2.0
    assert (synthetic_store / "zarr.json").stat().st_mtime_ns == stamp


def test_synthetic_nifti_fixture(synthetic_nifti: Path) -> None:
    cases, problems = discover_cases(synthetic_nifti)
    assert len(cases) == 24 and problems == []


@pytest.mark.parametrize("bad", [{"n_cases": 0}, {"shape": (8, 8, 8)}])
def test_bad_arguments(tmp_path: Path, bad: dict) -> None:
    from core.errors import DataError

    with pytest.raises(DataError):
        write_synthetic_brats(tmp_path / "x", **bad)

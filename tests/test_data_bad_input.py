"""Every kind of bad input: reported and skipped by default, fatal with strict, never partial."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.data import prepare as prepare_module
from core.data.prepare import prepare
from core.data.preprocess import PreprocessParams
from core.data.store import BratsStore
from core.errors import DataError

SHAPE = (16, 16, 8)
PARAMS = PreprocessParams(crop=(12, 12, 6))
SUFFIXES = {"flair": "flair", "t1": "t1", "t1c": "t1ce", "t2": "t2"}


def make_case(
    root: Path,
    case_id: str,
    grade: str = "HGG",
    edit: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None,
    skip: tuple[str, ...] = (),
) -> Path:
    """Write a tiny valid BraTS 2018-style case; ``edit(arrays, affines)`` may spoil it."""
    rng = np.random.default_rng(abs(hash(case_id)) % 2**32)
    arrays: dict[str, np.ndarray] = {
        m: rng.integers(1, 400, SHAPE).astype(np.int16) for m in SUFFIXES
    }
    seg = np.zeros(SHAPE, np.uint8)
    seg[5:10, 5:10, 2:6] = 2
    seg[6:8, 6:8, 3:5] = 4
    arrays["seg"] = seg
    affines = {k: np.eye(4) for k in arrays}
    if edit is not None:
        edit(arrays, affines)
    folder = root / grade / case_id
    folder.mkdir(parents=True)
    for kind, data in arrays.items():
        if kind in skip:
            continue
        suffix = SUFFIXES.get(kind, kind)
        nib.save(nib.Nifti1Image(data, affines[kind]), folder / f"{case_id}_{suffix}.nii.gz")
    return folder


def _set(kind: str, value: np.ndarray) -> Callable[[dict, dict], None]:
    def edit(arrays: dict, _affines: dict) -> None:
        arrays[kind] = value

    return edit


def _shift_affine(arrays: dict, affines: dict) -> None:
    affines["t1c"] = np.diag([1.0, 1.0, 1.0, 1.0])
    affines["t1c"][0, 3] = 5.0


def _nan(arrays: dict, _affines: dict) -> None:
    data = arrays["t2"].astype(np.float32)
    data[3, 3, 3] = np.nan
    data[4, 4, 4] = np.inf
    arrays["t2"] = data


def _truncate(folder: Path) -> None:
    path = folder / f"{folder.name}_t1.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _not_gzip(folder: Path) -> None:
    (folder / f"{folder.name}_flair.nii.gz").write_bytes(gzip.compress(b"not a nifti file"))


BAD = "Brats18_CBICA_BAD_1"
# kind -> (make_case kwargs, post-write hook, message regex naming case and file)
KINDS: dict[str, tuple[dict, Callable[[Path], None] | None, str]] = {
    "missing modality": ({"skip": ("t1",)}, None, rf"{BAD}: missing modality t1 in .*{BAD}"),
    "missing label": ({"skip": ("seg",)}, None, rf"{BAD}: missing label .* in .*{BAD}"),
    "shape mismatch": (
        {"edit": _set("t2", np.ones((16, 16, 9), np.int16))},
        None,
        rf"{BAD}: .*{BAD}_t2.nii.gz: shape \(16, 16, 9\) differs from .*_flair",
    ),
    "affine mismatch": (
        {"edit": _shift_affine},
        None,
        rf"{BAD}: .*{BAD}_t1ce.nii.gz: affine differs from .*_flair",
    ),
    "truncated gz": ({}, _truncate, rf"{BAD}: cannot read .*{BAD}_t1.nii.gz"),
    "corrupt nifti": ({}, _not_gzip, rf"{BAD}: cannot read .*{BAD}_flair.nii.gz"),
    "nan/inf": ({"edit": _nan}, None, rf"{BAD}: .*{BAD}_t2.nii.gz: 2 NaN/inf voxels"),
    "all-zero modality": (
        {"edit": _set("t1c", np.zeros(SHAPE, np.int16))},
        None,
        rf"{BAD}: .*{BAD}_t1ce.nii.gz: modality is all-zero",
    ),
    "label outside set": (
        {"edit": _set("seg", np.full(SHAPE, 3, np.uint8))},
        None,
        rf"{BAD}: .*{BAD}_seg.nii.gz: label values \[3\] outside the BraTS 2018 set \[0, 1, 2, 4\]",
    ),
}


def _no_leftovers(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_case_skipped_then_fatal_with_strict(kind: str, tmp_path: Path) -> None:
    kwargs, hook, message = KINDS[kind]
    root = tmp_path / "brats"
    make_case(root, "Brats18_CBICA_GOOD_1")
    folder = make_case(root, BAD, **kwargs)
    if hook is not None:
        hook(folder)
    out = tmp_path / "store.zarr"
    lines: list[str] = []
    result = prepare(root, out, PARAMS, log=lines.append)
    assert result.written == 1 and len(result.skipped) == 1
    assert re.search(message, result.skipped[0]), result.skipped[0]
    assert BratsStore(out).case_ids() == ["Brats18_CBICA_GOOD_1"]
    assert BratsStore(out).manifest["skipped"] == result.skipped
    assert any("skipped 1" in line for line in lines)

    strict_out = tmp_path / "strict.zarr"
    with pytest.raises(DataError, match=message):
        prepare(root, strict_out, PARAMS, strict=True, log=lines.append)
    assert not strict_out.exists()
    _no_leftovers(tmp_path)


def test_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no BraTS cases found under .*empty"):
        prepare(tmp_path / "empty", tmp_path / "s.zarr", PARAMS, log=lambda _: None)
    assert not (tmp_path / "s.zarr").exists()


def test_only_bad_cases_writes_nothing(tmp_path: Path) -> None:
    make_case(tmp_path / "brats", BAD, skip=("seg",))
    with pytest.raises(DataError, match="no usable cases"):
        prepare(tmp_path / "brats", tmp_path / "s.zarr", PARAMS, log=lambda _: None)
    assert not (tmp_path / "s.zarr").exists()
    _no_leftovers(tmp_path)


def test_duplicate_case_ids(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    make_case(root, "Brats18_TCIA01_001_1", grade="HGG")
    make_case(root, "Brats18_TCIA01_001_1", grade="LGG")
    make_case(root, "Brats18_TCIA01_002_1")
    result = prepare(root, tmp_path / "s.zarr", PARAMS, log=lambda _: None)
    assert result.written == 1
    assert "Brats18_TCIA01_001_1: duplicate case id in" in result.skipped[0]
    assert "HGG" in result.skipped[0] and "LGG" in result.skipped[0]
    with pytest.raises(DataError, match="duplicate case id"):
        prepare(root, tmp_path / "t.zarr", PARAMS, strict=True, log=lambda _: None)


def test_output_exists_and_is_not_a_store(tmp_path: Path) -> None:
    make_case(tmp_path / "brats", "Brats18_TCIA01_001_1")
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="exists and is not a BraTS store"):
        prepare(tmp_path / "brats", out, PARAMS, log=lambda _: None)
    assert (out / "thesis.tex").read_text() == "keep me"
    with pytest.raises(DataError, match="is not a BraTS store"):
        BratsStore(out)


def test_interrupted_prepare_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "brats"
    for i in range(3):
        make_case(root, f"Brats18_TCIA01_00{i}_1")
    calls = []
    real = prepare_module.write_case

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(root, tmp_path / "s.zarr", PARAMS, log=lambda _: None)
    assert not (tmp_path / "s.zarr").exists()
    _no_leftovers(tmp_path)


def test_strict_with_parallel_workers_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    for i in range(3):
        make_case(root, f"Brats18_TCIA01_00{i}_1")
    make_case(root, BAD, edit=_nan)
    with pytest.raises(DataError, match="NaN/inf"):
        prepare(root, tmp_path / "s.zarr", PARAMS, workers=2, strict=True, log=lambda _: None)
    assert not (tmp_path / "s.zarr").exists()
    _no_leftovers(tmp_path)
    result = prepare(root, tmp_path / "s.zarr", PARAMS, workers=2, log=lambda _: None)
    assert result.written == 3 and len(result.skipped) == 1

"""Case discovery in every BraTS naming, volume loading, grades and institutions."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.data.brats import (
    MHA_HINT,
    MODALITIES,
    check_simpleitk,
    classify_file,
    discover_cases,
    find_case_files,
    institution_from_id,
    load_volume,
    read_grades_csv,
)
from core.data.preprocess import PreprocessParams, preprocess_case
from core.errors import DataError


def _link_case(src: Path, dst_parent: Path) -> Path:
    """Symlink a sample case folder's files into ``dst_parent/<case>`` (no copying)."""
    dst = dst_parent / src.name
    dst.mkdir(parents=True)
    for f in src.iterdir():
        os.symlink(f, dst / f.name)
    return dst


def test_discovers_2018_and_2023_naming(brats_samples: Path) -> None:
    cases, problems = discover_cases(brats_samples)
    assert problems == []
    by_id = {c.case_id: c for c in cases}
    assert sorted(by_id) == ["BraTS-GLI-00000-000", "Brats18_2013_11_1", "Brats18_CBICA_ABM_1"]
    c23 = by_id["BraTS-GLI-00000-000"]
    assert c23.release == "2023"
    assert c23.images["flair"].name.endswith("-t2f.nii.gz")
    assert c23.images["t1"].name.endswith("-t1n.nii.gz")
    assert c23.images["t1c"].name.endswith("-t1c.nii.gz")
    assert c23.images["t2"].name.endswith("-t2w.nii.gz")
    assert c23.label is not None and c23.label.name.endswith("-seg.nii.gz")
    c18 = by_id["Brats18_CBICA_ABM_1"]
    assert (c18.release, c18.institution, c18.grade) == ("2018", "CBICA", "unknown")
    assert c18.images["t1c"].name.endswith("_t1ce.nii.gz")
    assert by_id["Brats18_2013_11_1"].institution == "2013"
    assert set(c18.images) == set(MODALITIES)


def test_grade_from_folder_and_csv(brats_samples: Path, tmp_path: Path) -> None:
    root = tmp_path / "MICCAI_BraTS_2018"
    _link_case(brats_samples / "brats2018" / "Brats18_CBICA_ABM_1", root / "HGG")
    _link_case(brats_samples / "brats2018" / "Brats18_2013_11_1", root / "LGG")
    cases, _ = discover_cases(root)
    assert {c.case_id: c.grade for c in cases} == {
        "Brats18_CBICA_ABM_1": "HGG",
        "Brats18_2013_11_1": "LGG",
    }
    csv = tmp_path / "name_mapping.csv"
    csv.write_text(
        "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID\n"
        "lgg,Brats17_CBICA_ABM_1,Brats18_CBICA_ABM_1\n"
    )
    assert read_grades_csv(csv)["Brats18_CBICA_ABM_1"] == "LGG"
    cases, _ = discover_cases(root, grades_csv=csv)
    assert {c.case_id: c.grade for c in cases}["Brats18_CBICA_ABM_1"] == "LGG"


@pytest.mark.parametrize(
    ("case_id", "institution"),
    [
        ("Brats18_TCIA01_0001_1", "TCIA01"),
        ("BraTS19_CBICA_AAB_1", "CBICA"),
        ("Brats18_2013_3_1", "2013"),
        ("BraTS19_TMC_06290_1", "TMC"),
        ("brats_tcia_pat101_1", "tcia"),
        ("BraTS20_Training_001", "unknown"),
        ("BraTS2021_00000", "unknown"),
        ("BraTS-GLI-00000-000", "unknown"),
    ],
)
def test_institution_from_id(case_id: str, institution: str) -> None:
    assert institution_from_id(case_id) == institution


def test_classify_file_names() -> None:
    assert classify_file(Path("x_t1ce.nii.gz")) == "t1c"
    assert classify_file(Path("x_t1.nii")) == "t1"
    assert classify_file(Path("X-T2F.nii.gz")) == "flair"
    assert classify_file(Path("VSD.Brain.XX.O.MR_T1c.54514.mha")) == "t1c"
    assert classify_file(Path("VSD.Brain.XX.O.MR_T1.54513.mha")) == "t1"
    assert classify_file(Path("VSD.Brain_3more.XX.O.OT.54517.mha")) == "seg"
    assert classify_file(Path("notes.txt")) is None


def test_find_case_files_without_label(brats_samples: Path, tmp_path: Path) -> None:
    case = _link_case(brats_samples / "brats2023" / "BraTS-GLI-00000-000", tmp_path)
    next(case.glob("*-seg.nii.gz")).unlink()
    files = find_case_files(case)
    assert files.label is None and set(files.images) == set(MODALITIES)
    # the predict path: preprocessing works without a label
    pre = preprocess_case(files, PreprocessParams(crop=(32, 32, 8)), ("flair",), False)
    assert pre.labels is None and pre.image.shape == (8, 1, 32, 32)
    with pytest.raises(DataError, match="no BraTS image files"):
        find_case_files(tmp_path)


def test_load_volume_matches_nibabel(brats_samples: Path) -> None:
    path = brats_samples / "brats2018" / "Brats18_CBICA_ABM_1" / "Brats18_CBICA_ABM_1_t2.nii.gz"
    data, affine, info = load_volume(path)
    img = nib.load(path)
    assert data.shape == (240, 240, 155) and info["format"] == "nifti"
    np.testing.assert_array_equal(data, np.asanyarray(img.dataobj))
    np.testing.assert_allclose(affine, img.affine)


# ---------------------------------------------------------------- BraTS 2015 .mha


def _write_mha_case(case_dir: Path, arrays_xyz: dict[str, np.ndarray]) -> None:
    sitk = pytest.importorskip("SimpleITK")
    names = {
        "flair": "VSD.Brain.XX.O.MR_Flair.54512",
        "t1": "VSD.Brain.XX.O.MR_T1.54513",
        "t1c": "VSD.Brain.XX.O.MR_T1c.54514",
        "t2": "VSD.Brain.XX.O.MR_T2.54515",
        "seg": "VSD.Brain_3more.XX.O.OT.54517",
    }
    for kind, name in names.items():
        folder = case_dir / name
        folder.mkdir(parents=True)
        image = sitk.GetImageFromArray(arrays_xyz[kind].transpose(2, 1, 0))  # wants (z, y, x)
        image.SetSpacing((1.0, 1.0, 1.0))
        image.SetOrigin((-10.0, -12.0, 3.0))
        sitk.WriteImage(image, str(folder / f"{name}.mha"))


def _mha_arrays(shape: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {m: rng.integers(1, 500, shape).astype(np.int16) for m in MODALITIES}
    seg = np.zeros(shape, np.uint8)
    seg[4:8, 5:9, 2:5] = 2
    seg[5:7, 6:8, 3] = 3  # label 3 only exists in 2015
    seg[6, 6, 3] = 4
    arrays["seg"] = seg
    return arrays


def test_mha_2015_layout(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    shape = (20, 24, 10)
    arrays = _mha_arrays(shape, 0)
    _write_mha_case(tmp_path / "BRATS2015_Training" / "HGG" / "brats_2013_pat0001_1", arrays)
    cases, problems = discover_cases(tmp_path)
    assert problems == []
    (case,) = cases
    assert (case.case_id, case.release, case.grade, case.institution) == (
        "brats_2013_pat0001_1",
        "2015",
        "HGG",
        "2013",
    )
    data, affine, info = load_volume(case.images["t1c"])
    assert info["format"] == "mha"
    np.testing.assert_array_equal(data, arrays["t1c"])  # (X, Y, Z) like nibabel
    # ITK origin (LPS) -> RAS affine: x and y flip sign
    np.testing.assert_allclose(affine[:3, 3], [10.0, 12.0, 3.0])
    pre = preprocess_case(case, PreprocessParams(crop=(16, 16, 8)))
    assert pre.labels is not None and set(np.unique(pre.labels)) <= {0, 2, 3, 4}
    assert pre.image.shape == (8, 4, 16, 16)


def test_mha_without_simpleitk_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("SimpleITK")
    _write_mha_case(tmp_path / "HGG" / "brats_tcia_pat101_1", _mha_arrays((12, 12, 6), 1))
    cases, _ = discover_cases(tmp_path)
    real_import = builtins.__import__

    def no_sitk(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "SimpleITK":
            raise ImportError("No module named 'SimpleITK'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sitk)
    with pytest.raises(DataError, match=r'pip install -e "\.\[mha\]"'):
        check_simpleitk(cases)
    with pytest.raises(DataError, match="SimpleITK") as err:
        load_volume(cases[0].images["flair"])
    assert MHA_HINT in str(err.value)


def test_symlinked_case_folders_are_found(brats_samples: Path, tmp_path: Path) -> None:
    """Users link datasets into place: a folder of links to case folders, and a link cycle."""
    root = tmp_path / "linked"
    root.mkdir()
    for case in ("Brats18_CBICA_ABM_1", "Brats18_2013_11_1"):
        os.symlink(brats_samples / "brats2018" / case, root / case)
    os.symlink(root, root / "loop")  # a cycle must not be walked forever
    cases, problems = discover_cases(root)
    assert [c.case_id for c in cases] == ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1"]
    assert problems == []

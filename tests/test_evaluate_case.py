"""``evaluate --pred mask.nii.gz --truth CASE_FOLDER/``: the case's one label file is used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError
from core.evaluation.mask_files import case_label_file

SHAPE = (12, 12, 8)


def _save(path: Path, data: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _labels(et: int) -> np.ndarray:
    """A label map: edema (2) around a core with necrosis (1) and enhancing tumour (et)."""
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[2:10, 2:10, 2:6] = 2
    seg[4:8, 4:8, 3:5] = 1
    seg[5:7, 5:7, 3:5] = et
    return seg


def _case(root: Path, name: str, seg_name: str | None, images: tuple[str, ...], et: int) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for image in images:
        _save(folder / image, np.zeros(SHAPE, dtype=np.float32))
    if seg_name:
        _save(folder / seg_name, _labels(et))
    return folder


def _et_mask(tmp_path: Path) -> Path:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[5:7, 5:7, 3:5] = 1  # exactly the enhancing tumour
    return _save(tmp_path / "pred.nii.gz", mask)


@pytest.mark.parametrize(("name", "seg", "images", "et"), [
    ("BraTS-GLI-00001-000", "BraTS-GLI-00001-000-seg.nii.gz",
     ("BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000-t1c.nii.gz"), 3),
    ("Brats18_TCIA01_0001_1", "Brats18_TCIA01_0001_1_seg.nii.gz",
     ("Brats18_TCIA01_0001_1_flair.nii.gz", "Brats18_TCIA01_0001_1_t1ce.nii.gz"), 4),
])
def test_case_folder_as_truth(tmp_path: Path, capsys, name: str, seg: str,
                              images: tuple[str, ...], et: int) -> None:
    """2023 and 2018 naming: the label file is found and its release maps ET (3 vs 4)."""
    from run_study import main

    folder = _case(tmp_path / "cases", name, seg, images, et)
    label, _release = case_label_file(folder)
    assert label == folder / seg
    assert main(["evaluate", "--pred", str(_et_mask(tmp_path)), "--truth", str(folder),
                 "--region", "et", "--json"]) == 0
    out = capsys.readouterr()
    row = json.loads(out.out)
    assert row["truth"] == str(folder / seg) and row["dice"] == 1.0 and row["truth_voxels"] == 8
    assert str(folder / seg) in out.err  # says which file it used


def test_case_folder_without_label_names_the_folder(tmp_path: Path, capsys) -> None:
    from run_study import main

    folder = _case(tmp_path, "BraTS-GLI-00002-000", None, ("BraTS-GLI-00002-000-t2f.nii.gz",), 3)
    with pytest.raises(DataError, match="no label file"):
        case_label_file(folder)
    assert main(["evaluate", "--pred", str(_et_mask(tmp_path)), "--truth", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "no label file" in err


def test_case_folder_with_two_labels_names_both(tmp_path: Path, capsys) -> None:
    from run_study import main

    folder = _case(tmp_path, "case7", "case7_seg.nii.gz", ("case7_flair.nii.gz",), 4)
    _save(folder / "case7-seg.nii.gz", _labels(3))
    assert main(["evaluate", "--pred", str(_et_mask(tmp_path)), "--truth", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "case7_seg.nii.gz" in err and "case7-seg.nii.gz" in err


def test_folder_pred_with_file_truth_is_refused(tmp_path: Path, capsys) -> None:
    from run_study import main

    (tmp_path / "preds").mkdir()
    truth = _save(tmp_path / "t.nii.gz", _labels(4))
    assert main(["evaluate", "--pred", str(tmp_path / "preds"), "--truth", str(truth)]) == 2
    assert "must be a folder too" in capsys.readouterr().err


def test_real_case_folder_lesion_wise(brats_samples: Path, capsys) -> None:
    """A real BraTS 2023 case folder as truth, its own label map as the prediction."""
    from run_study import main

    case = brats_samples / "brats2023" / "BraTS-GLI-00000-000"
    assert main(["evaluate", "--pred", str(case / "BraTS-GLI-00000-000-seg.nii.gz"), "--truth",
                 str(case), "--region", "et", "--lesion-wise", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["dice"], row["lesion_dice"], row["lesion_hd95"]) == (1.0, 1.0, 0.0)
    assert row["n_lesions"] >= 1 and row["n_missed"] == row["n_false_positive_lesions"] == 0

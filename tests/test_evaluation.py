"""evaluate_pair / evaluate_folders on hand-computed NIfTI cases (and one real label map)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.errors import DataError
from core.evaluation.mask_files import evaluate_folders, evaluate_pair, json_safe

SPACING = (1.0, 1.0, 2.5)
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/data/brats-samples"


def _write(path: Path, data: np.ndarray, spacing: tuple[float, ...] = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def _cube(z0: int, shape: tuple[int, int, int] = (14, 14, 16)) -> np.ndarray:
    v = np.zeros(shape, dtype=np.uint8)
    v[2:12, 2:12, z0 : z0 + 10] = 1
    return v


def test_offset_cubes_by_hand(tmp_path: Path) -> None:
    # 10³ cubes shifted by 2 slices of 2.5 mm: overlap 10·10·8 = 800 voxels
    pred = _write(tmp_path / "pred.nii.gz", _cube(2))
    truth = _write(tmp_path / "truth.nii.gz", _cube(4))
    r = evaluate_pair(pred, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (800, 200, 200)
    assert r["tn"] == 14 * 14 * 16 - 1200
    assert r["dice"] == pytest.approx(0.8)
    assert r["precision"] == pytest.approx(0.8)
    assert r["sensitivity"] == pytest.approx(0.8)
    assert r["specificity"] == pytest.approx(1936 / 2136)
    assert r["hd95"] == pytest.approx(5.0)  # see tests/test_surface.py for the count
    assert (r["pred_voxels"], r["truth_voxels"]) == (1000, 1000)
    assert r["spacing"] == list(SPACING)


def test_label_maps_by_release(tmp_path: Path) -> None:
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[2:4, 2:6, 2:6] = 2  # oedema: 32 voxels
    labels[4:6, 2:6, 2:6] = 1  # necrosis: 32
    labels[6:8, 2:6, 2:6] = 4  # enhancing (≤2021): 32
    truth = _write(tmp_path / "seg18.nii.gz", labels)
    et = np.zeros_like(labels, dtype=np.uint8)
    et[6:8, 2:6, 2:6] = 1
    pred = _write(tmp_path / "pred.nii.gz", et)
    assert evaluate_pair(pred, truth, region="et")["dice"] == pytest.approx(1.0)
    assert evaluate_pair(pred, truth, region="tc")["dice"] == pytest.approx(2 * 32 / (32 + 64))
    assert evaluate_pair(pred, truth, region="wt")["sensitivity"] == pytest.approx(32 / 96)
    # 2023 labels (ET = 3), release read from the 2023 file naming or given as "brats2023"
    labels23 = np.where(labels == 4, 3, labels).astype(np.float32)  # float seg as in 2023
    truth23 = _write(tmp_path / "BraTS-GLI-00001-000-seg.nii.gz", labels23)
    assert evaluate_pair(pred, truth23, region="et")["dice"] == pytest.approx(1.0)
    assert evaluate_pair(pred, truth23, "et", release="brats2023")["dice"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="00001-000-seg.*outside"):
        evaluate_pair(pred, truth23, "et", release="2018")


def test_3_without_4_is_not_taken_for_2023(tmp_path: Path) -> None:
    """A BraTS 2015 map without enhancing tumour has labels {0, 1, 2, 3} too (3 = non-enhancing)."""
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[2:4, 2:6, 2:6] = 2
    labels[4:6, 2:6, 2:6] = 3  # 2015: non-enhancing core, part of TC, not ET
    three = np.zeros_like(labels, dtype=np.uint8)
    three[4:6, 2:6, 2:6] = 1
    pred = _write(tmp_path / "pred.nii.gz", three)
    seg15 = _write(tmp_path / "brats_tcia_pat101_1_seg.nii.gz", labels)  # ≤2021-style name
    et = evaluate_pair(pred, seg15, region="et")
    assert et["truth_voxels"] == 0 and et["dice"] == 0.0  # no ET in this map: all FP
    assert evaluate_pair(pred, seg15, region="tc")["dice"] == pytest.approx(1.0)
    anonymous = _write(tmp_path / "truth.nii.gz", labels)
    with pytest.raises(DataError, match="truth.nii.gz: labels .* 3 but no 4.*--release"):
        evaluate_pair(pred, anonymous, region="et")
    assert evaluate_pair(pred, anonymous, region="wt")["sensitivity"] == pytest.approx(0.5)
    assert evaluate_pair(pred, anonymous, "et", release="2023")["dice"] == pytest.approx(1.0)


def test_probability_prediction_is_thresholded(tmp_path: Path) -> None:
    prob = _cube(2).astype(np.float32) * 0.7 + 0.1  # 0.8 inside, 0.1 outside
    pred = _write(tmp_path / "prob.nii.gz", prob)
    truth = _write(tmp_path / "truth.nii.gz", _cube(2))
    assert evaluate_pair(pred, truth)["dice"] == pytest.approx(1.0)
    assert evaluate_pair(pred, truth, threshold=0.9)["dice"] == 0.0


def test_empty_mask_rules(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.nii.gz", np.zeros((14, 14, 16), np.uint8))
    empty2 = _write(tmp_path / "empty2.nii.gz", np.zeros((14, 14, 16), np.uint8))
    truth = _write(tmp_path / "truth.nii.gz", _cube(2))
    missed = evaluate_pair(empty, truth)  # a missed tumour: scored, not dropped
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0
    assert math.isnan(missed["precision"]) and missed["hd95"] == math.inf
    false_alarm = evaluate_pair(truth, empty)
    assert false_alarm["dice"] == 0.0 and false_alarm["hd95"] == math.inf
    both = evaluate_pair(empty, empty2)
    assert math.isnan(both["dice"]) and math.isnan(both["hd95"])
    assert both["specificity"] == 1.0


def test_mismatch_names_both_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a_pred.nii.gz", _cube(2))
    b = _write(tmp_path / "b_truth.nii.gz", _cube(2, shape=(14, 14, 17)))
    c = _write(tmp_path / "c_truth.nii.gz", _cube(2), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"shape mismatch.*a_pred.*b_truth"):
        evaluate_pair(a, b)
    with pytest.raises(DataError, match=r"affine mismatch.*a_pred.*c_truth"):
        evaluate_pair(a, c)
    with pytest.raises(DataError, match="not found.*nope"):
        evaluate_pair(a, tmp_path / "nope.nii.gz")


def test_folders_pair_by_case_id(tmp_path: Path) -> None:
    preds, truths = tmp_path / "pred", tmp_path / "truth"
    _write(preds / "case1.nii.gz", _cube(2))
    _write(preds / "case1_prob.nii.gz", np.full((14, 14, 16), 0.3, np.float32))  # skipped
    _write(preds / "case2.nii.gz", np.zeros((14, 14, 16), np.uint8))  # missed tumour
    _write(preds / "case3_seg.nii.gz", _cube(4))
    _write(preds / "extra.nii.gz", _cube(4))
    # truths: BraTS 2018-style case folders with raw labels, and a bare mask file
    for case in ("case1", "case2", "case9"):
        _write(truths / case / f"{case}_seg.nii.gz", (_cube(2) * 2).astype(np.int16))
    _write(truths / "case3.nii.gz", _cube(2))
    result = evaluate_folders(preds, truths)
    assert [r["case_id"] for r in result["cases"]] == ["case1", "case2", "case3"]
    assert result["pred_only"] == ["extra"] and result["truth_only"] == ["case9"]
    s = result["summary"]
    assert s["dice"]["n"] == 3 and s["dice"]["mean"] == pytest.approx((1.0 + 0.0 + 0.8) / 3)
    assert s["hd95"]["n_inf"] == 1 and s["hd95"]["n"] == 2
    assert s["hd95"]["mean"] == pytest.approx(2.5)  # (0 + 5.0) / 2, the inf counted apart
    assert s["precision"]["n_nan"] == 1
    text = json.dumps(json_safe(result), allow_nan=False)  # strict JSON
    assert '"inf"' in text
    (tmp_path / "empty_truth").mkdir()
    with pytest.raises(DataError, match="no case id"):
        evaluate_folders(preds, tmp_path / "empty_truth")


def test_real_label_map_against_its_whole_tumour(tmp_path: Path) -> None:
    case = SAMPLES / "brats2018" / "Brats18_CBICA_ABM_1"
    if not case.is_dir():
        pytest.skip(f"shared samples not found at {SAMPLES}")
    seg = nib.load(str(case / "Brats18_CBICA_ABM_1_seg.nii.gz"))
    wt = (np.asarray(seg.dataobj) > 0).astype(np.uint8)
    pred = tmp_path / "wt.nii.gz"
    nib.save(nib.Nifti1Image(wt, seg.affine, seg.header), str(pred))
    r = evaluate_pair(pred, case / "Brats18_CBICA_ABM_1_seg.nii.gz", region="wt")
    assert r["dice"] == 1.0 and r["hd95"] == 0.0
    assert r["truth_voxels"] * 1e-3 == pytest.approx(39.8, abs=0.1)  # README: 39.8 ml
    et = evaluate_pair(pred, case / "Brats18_CBICA_ABM_1_seg.nii.gz", region="et")
    assert et["precision"] < 1.0 and et["sensitivity"] == 1.0

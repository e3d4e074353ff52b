"""BraTS 2023+ lesion-wise dice and HD95 (core.evaluation.lesions) on hand-built volumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from core.evaluation.lesions import PENALTY_HD95, lesion_wise, truth_lesions
from core.surface import hd95

SHAPE = (40, 40, 40)


def cube(mask: np.ndarray, corner: tuple[int, int, int], size: int) -> np.ndarray:
    x, y, z = corner
    mask[x : x + size, y : y + size, z : z + size] = True
    return mask


def empty() -> np.ndarray:
    return np.zeros(SHAPE, dtype=bool)


def test_hit_missed_and_false_positive() -> None:
    """Lesion A found exactly, lesion B missed, one false-positive blob:
    dice (1 + 0 + 0) / 3, HD95 (0 + 374 + 374) / 3."""
    truth = cube(cube(empty(), (2, 2, 2), 4), (30, 30, 30), 4)  # 64 voxels each
    pred = cube(cube(empty(), (2, 2, 2), 4), (2, 30, 2), 2)
    s = lesion_wise(pred, truth)
    assert (s["n_lesions"], s["n_missed"], s["n_false_positive_lesions"]) == (2, 1, 1)
    assert s["lesion_dice"] == pytest.approx(1 / 3)
    assert s["lesion_hd95"] == pytest.approx(2 * PENALTY_HD95 / 3)


def test_dilation_groups_close_truth_blobs() -> None:
    """Two 64-voxel blobs 2 voxels apart are one lesion (3-voxel dilation): finding one
    blob scores 2·64 / (64 + 128); without dilation they are two lesions (1 and 0)."""
    truth = cube(cube(empty(), (5, 5, 5), 4), (11, 5, 5), 4)  # gap of 2 voxels (x 9, 10)
    pred = cube(empty(), (5, 5, 5), 4)
    labels, n = truth_lesions(truth)
    assert n == 1 and set(np.unique(labels)) == {0, 1}
    s = lesion_wise(pred, truth)
    assert (s["n_lesions"], s["n_missed"]) == (1, 0)
    assert s["lesion_dice"] == pytest.approx(2 * 64 / (64 + 128))
    assert s["lesion_hd95"] == pytest.approx(hd95(pred, truth))
    apart = lesion_wise(pred, truth, dilation=0)
    assert (apart["n_lesions"], apart["n_missed"]) == (2, 1)
    assert apart["lesion_dice"] == pytest.approx(0.5)
    assert apart["lesion_hd95"] == pytest.approx(PENALTY_HD95 / 2)


def test_near_component_matches_without_overlap() -> None:
    """A predicted blob 2 voxels from the lesion (inside its dilated reach) is matched, not a
    false positive: dice 0 but a finite HD95; 5 voxels away it is missed + false positive."""
    truth = cube(empty(), (10, 10, 10), 4)
    near = cube(empty(), (16, 10, 10), 4)  # x 16..19, lesion ends at 13: gap 2
    s = lesion_wise(near, truth)
    assert (s["n_missed"], s["n_false_positive_lesions"], s["lesion_dice"]) == (0, 0, 0.0)
    assert s["lesion_hd95"] == pytest.approx(hd95(near, truth)) and s["lesion_hd95"] < 10
    far = cube(empty(), (19, 10, 10), 4)
    s = lesion_wise(far, truth)
    assert (s["n_missed"], s["n_false_positive_lesions"]) == (1, 1)
    assert (s["lesion_dice"], s["lesion_hd95"]) == (0.0, PENALTY_HD95)


def test_components_matched_to_one_lesion_are_scored_together() -> None:
    """Two predicted pieces of one lesion are united before the dice: 2·(32+16)/(64+48)."""
    truth = cube(empty(), (10, 10, 10), 4)
    pred = empty()
    pred[10:12, 10:14, 10:14] = True  # 32 voxels
    pred[13:14, 10:14, 10:14] = True  # 16 voxels, not touching the first (x 12 empty)
    s = lesion_wise(pred, truth)
    assert s["lesions"][0]["matched"] == 2 and s["n_false_positive_lesions"] == 0
    assert s["lesion_dice"] == pytest.approx(2 * 48 / (64 + 48))


def test_small_lesions_are_not_scored_and_spacing_counts() -> None:
    """27 voxels at 1 mm³ is <= 50 mm³: not scored (an empty score is 1 / 0 mm), and its
    matched prediction is no false positive; at 2 mm spacing (216 mm³) it is scored."""
    truth = cube(empty(), (10, 10, 10), 3)
    pred = cube(empty(), (10, 10, 10), 2)
    s = lesion_wise(pred, truth)
    assert (s["n_lesions"], s["n_small_lesions"], s["n_false_positive_lesions"]) == (0, 1, 0)
    assert (s["lesion_dice"], s["lesion_hd95"]) == (1.0, 0.0)
    s = lesion_wise(pred, truth, spacing=(2.0, 2.0, 2.0))
    assert s["n_lesions"] == 1 and s["lesion_dice"] == pytest.approx(2 * 8 / 35)
    assert s["lesion_hd95"] == pytest.approx(hd95(pred, truth, (2.0, 2.0, 2.0)))


def test_empty_cases() -> None:
    """Both empty → 1 / 0 mm (the challenge's rule); tumour-free truth with a false
    positive → 0 / 374; a tumour with an empty prediction → 0 / 374."""
    s = lesion_wise(empty(), empty())
    assert (s["lesion_dice"], s["lesion_hd95"], s["n_lesions"]) == (1.0, 0.0, 0)
    s = lesion_wise(cube(empty(), (5, 5, 5), 2), empty())
    assert (s["lesion_dice"], s["lesion_hd95"], s["n_false_positive_lesions"]) == \
        (0.0, PENALTY_HD95, 1)
    s = lesion_wise(empty(), cube(empty(), (5, 5, 5), 4))
    assert (s["lesion_dice"], s["lesion_hd95"], s["n_missed"]) == (0.0, PENALTY_HD95, 1)


def _write(path: Path, mask: np.ndarray, spacing: tuple[float, float, float] = (1, 1, 1)) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))
    return path


def test_evaluate_cli_lesion_wise_pair_and_folders(tmp_path: Path, capsys) -> None:
    """``evaluate --lesion-wise``: the five fields per case and a summary over all cases."""
    from run_study import main

    truth = cube(cube(empty(), (2, 2, 2), 4), (30, 30, 30), 4)
    pred = cube(cube(empty(), (2, 2, 2), 4), (2, 30, 2), 2)
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    _write(tmp_path / "p" / "c1.nii.gz", pred)
    _write(tmp_path / "t" / "c1_seg.nii.gz", truth)
    _write(tmp_path / "p" / "c2.nii.gz", truth)
    _write(tmp_path / "t" / "c2_seg.nii.gz", truth)
    assert main(["evaluate", "--pred", str(tmp_path / "p" / "c1.nii.gz"), "--truth",
                 str(tmp_path / "t" / "c1_seg.nii.gz"), "--lesion-wise", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["lesion_dice"] == pytest.approx(1 / 3)
    assert (row["n_lesions"], row["n_missed"], row["n_false_positive_lesions"]) == (2, 1, 1)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t"),
                 "--lesion-wise", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for case in result["cases"]:
        assert {"lesion_dice", "lesion_hd95", "n_lesions", "n_missed",
                "n_false_positive_lesions"} <= set(case)
    summary = result["summary"]
    assert summary["lesion_dice"]["mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["lesion_hd95"]["mean"] == pytest.approx((2 * PENALTY_HD95 / 3 + 0) / 2)
    assert summary["n_missed"]["total"] == 1 and summary["n_lesions"]["total"] == 4
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t"),
                 "--lesion-wise"]) == 0
    assert "4 lesions, 1 missed, 1 false-positive" in capsys.readouterr().out


def test_matches_brats_evaluation_package(tmp_path: Path) -> None:
    """Cross-check with the official ``brats-evaluation`` (Panoptica) where its definition
    and the BraTS 2023 one agree: well separated lesions of > 50 voxels, one component per
    lesion. Its per-instance dice (sq_dsc over matched pairs) with the penalty applied for
    missed and false-positive lesions must give our lesion-wise dice and HD95."""
    pytest.importorskip("brats_evaluation")
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[2:7, 2:7, 2:7] = 2  # a lesion found with a 1-voxel shift
    truth[30:35, 30:35, 30:35] = 2  # missed
    truth[2:7, 30:35, 2:7] = 2  # found exactly
    pred = np.zeros_like(truth)
    pred[3:8, 2:7, 2:7] = 2
    pred[2:7, 30:35, 2:7] = 2
    pred[30:33, 2:5, 2:5] = 2  # false positive
    ref = _write(tmp_path / "ref.nii.gz", truth)
    prd = _write(tmp_path / "pred.nii.gz", pred)
    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
    wt = evaluator.evaluate(str(prd), str(ref))["wt"].to_dict(True)
    ours = lesion_wise(pred > 0, truth > 0)
    assert (wt["tp"], wt["fn"], wt["fp"]) == (2, 1, 1)
    assert (ours["n_lesions"] - ours["n_missed"], ours["n_missed"],
            ours["n_false_positive_lesions"]) == (2, 1, 1)
    n = wt["tp"] + wt["fn"] + wt["fp"]
    assert ours["lesion_dice"] == pytest.approx(wt["sq_dsc"] * wt["tp"] / n, abs=1e-6)
    penalised = (wt["sq_hd95"] * wt["tp"] + PENALTY_HD95 * (wt["fn"] + wt["fp"])) / n
    assert math.isfinite(ours["lesion_hd95"])
    assert ours["lesion_hd95"] == pytest.approx(penalised, abs=1e-6)

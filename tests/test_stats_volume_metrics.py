"""The study's per-volume rows (dice … specificity, HD95) are ``evaluate``'s numbers: the same
functions on the same window, with the store's voxel spacing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.data.dataset import iter_volumes
from core.data.store import BratsStore
from core.evaluation.mask_files import evaluate_masks
from core.evaluation.volumes import evaluate_volumes, stored_spacing
from core.protocol import window_slices
from core.vocabulary import STUDY_METRICS


class Bright(nn.Module):
    """A stand-in segmentor: "tumour" where the first channel is brighter than ``level``."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, 1, H, W)
        return torch.sigmoid(200 * (x[:, :1] - self.level))


def test_stored_spacing_reverses_the_nifti_axes() -> None:
    assert stored_spacing({"zooms": [0.9, 1.0, 2.5]}) == (2.5, 1.0, 0.9)  # (X, Y, Z) -> (Z, H, W)
    assert stored_spacing({}) == (1.0, 1.0, 1.0)


def test_rows_equal_evaluate_on_the_same_window(synthetic_store: Path) -> None:
    store = BratsStore(synthetic_store)
    volumes = list(iter_volumes(store, "test", ["flair"]))
    spacing = {cid: (2.0, 1.0, 1.5) for cid, _, _ in volumes}  # anisotropic on purpose
    results = evaluate_volumes(Bright(0.8), volumes, spacing=spacing.__getitem__)
    free = 0
    for (cid, image, mask), result in zip(volumes, results, strict=True):
        rows, cols = window_slices(*mask.shape[1:])
        pred = image[:, 0, rows, cols] >= 0.8
        expected = evaluate_masks(pred, mask[:, rows, cols], spacing[cid])
        row = result.row()
        for name in STUDY_METRICS:
            assert row[name] == pytest.approx(expected[name], nan_ok=True), (cid, name)
        free += not mask.any()
    assert free == 1 and any(math.isfinite(float(r.row()["hd95"])) for r in results)
    # validation passes no spacing: no HD95, rows as before
    assert "hd95" not in evaluate_volumes(Bright(0.8), volumes[:1])[0].row()


def test_hd95_in_mm_by_hand() -> None:
    truth = np.zeros((3, 16, 16), np.uint8)
    truth[1, 4:8, 4:8] = 1
    image = np.zeros((3, 1, 16, 16), np.float32)
    image[1, 0, 4:8, 6:10] = 1.0  # the prediction is the truth shifted 2 columns
    (result,) = evaluate_volumes(Bright(0.5), [("a", image, truth)],
                                 spacing=lambda _: (1.0, 1.0, 3.0))
    # a one-slice mask is all surface: 16 of the 32 distances are 0, 8 are one column
    # (3 mm) and 8 two columns (6 mm), so the 95th percentile is 6 mm
    assert result.hd95 == pytest.approx(6.0)
    assert result.row()["dice"] == pytest.approx(0.5)

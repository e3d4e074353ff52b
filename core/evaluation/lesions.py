"""BraTS 2023+ lesion-wise dice and HD95 of one binary prediction against one binary truth.

The challenge's definition (BraTS 2023 lesion-wise metrics, the GLI/SSA/PED parameters;
written here from its description and reference script, numpy/scipy only):

1. *Truth lesions.* The truth is dilated ``dilation`` times (3 for BraTS-GLI) with the
   18-neighbourhood structuring element, and the 26-connected components of the dilated
   mask group the truth voxels: truth blobs closer than the dilation reach form **one**
   lesion (the truth itself is not changed).
2. *Predicted components*: the 26-connected components of the prediction (never merged).
3. *Matching.* Each truth lesion, dilated again the same way, is matched to **every**
   predicted component that touches its dilated extent; its dice and HD95 are computed
   between the lesion and the union of those components (a component may serve several
   lesions). A lesion without a match is *missed*: dice 0, HD95 ``PENALTY_HD95`` (374 mm,
   the SRI-24 grid's diagonal).
4. *False positives*: predicted components matched to no truth lesion; each counts as one
   more lesion with dice 0 and HD95 374.
5. *Small lesions*: truth lesions of ``min_volume_mm3`` (50 mm³) or less are left out of
   the scores and counts (a component matched to one is not a false positive either).
6. Per case: ``lesion_dice = Σ dice / (n_lesions + n_fp)``, ``lesion_hd95 = (Σ hd95 +
   374·n_fp) / (n_lesions + n_fp)``, an infinite HD95 replaced by 374. With no scored
   lesion and no false positive the case scores dice 1 and HD95 0 (the challenge's rule;
   the voxel-level metrics of ``core.metrics`` call that case undefined instead).

HD95 per lesion is this project's ``core.surface.hd95`` (95th percentile of the pooled
symmetric surface distances), with the voxel spacing in mm; volumes use the spacing too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from core.surface import hd95

PENALTY_HD95 = 374.0
"""HD95 (mm) of a missed lesion or a false-positive component (BraTS 2023+)."""
DILATION = 3
"""Dilation iterations for grouping and matching truth lesions (BraTS-GLI, SSA, PED)."""
MIN_VOLUME_MM3 = 50.0
"""Truth lesions of at most this volume are not scored (BraTS-GLI, SSA, PED, MEN)."""
LESION_METRICS: tuple[str, ...] = ("lesion_dice", "lesion_hd95")
LESION_COUNTS: tuple[str, ...] = ("n_lesions", "n_missed", "n_false_positive_lesions")


def _structures(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(full connectivity for components: 26 in 3-D, the dilation element: 18 in 3-D)."""
    return (ndimage.generate_binary_structure(ndim, ndim),
            ndimage.generate_binary_structure(ndim, min(2, ndim)))


def _dilate(mask: np.ndarray, element: np.ndarray, dilation: int) -> np.ndarray:
    if dilation <= 0:
        return mask
    return np.asarray(ndimage.binary_dilation(mask, structure=element, iterations=dilation))


def truth_lesions(truth: np.ndarray, dilation: int = DILATION) -> tuple[np.ndarray, int]:
    """(int32 label map of the truth voxels, lesion count): lesion k = the truth voxels in
    the k-th 26-connected component of the dilated truth."""
    truth = np.asarray(truth).astype(bool)
    full, element = _structures(truth.ndim)
    grouped, n = ndimage.label(_dilate(truth, element, dilation), structure=full)
    return np.where(truth, grouped, 0).astype(np.int32), int(n)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, widened by ``margin`` voxels (clipped)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(idx[0]) - margin),
                         min(mask.shape[axis], int(idx[-1]) + 1 + margin)))
    return tuple(box)


def lesion_wise(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | None = None,
    dilation: int = DILATION,
    min_volume_mm3: float = MIN_VOLUME_MM3,
) -> dict[str, Any]:
    """Lesion-wise scores of one binary prediction against one binary truth (same shape).

    Returns ``lesion_dice``, ``lesion_hd95`` (mm), ``n_lesions`` (scored truth lesions),
    ``n_missed`` (scored lesions with no matched component), ``n_false_positive_lesions``,
    ``n_small_lesions`` (truth lesions left out by volume) and ``lesions``: per truth lesion
    ``{volume_mm3, dice, hd95, matched, scored}`` (hd95 ``None`` when missed).
    """
    pred = np.asarray(pred).astype(bool)
    truth = np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * pred.ndim
    voxel_mm3 = float(np.prod(sp))
    full, element = _structures(pred.ndim)
    lesions, n_truth = truth_lesions(truth, dilation)
    components, _ = ndimage.label(pred, structure=full)
    matched_any: set[int] = set()
    per_lesion: list[dict[str, Any]] = []
    for k in range(1, n_truth + 1):
        lesion = lesions == k
        box = _box(lesion, dilation + 1)
        reach = _dilate(lesion[box], element, dilation)
        matched = sorted(int(c) for c in np.unique(components[box][reach]) if c)
        matched_any.update(matched)
        volume = float(lesion.sum()) * voxel_mm3
        if matched:
            found = np.isin(components, matched)
            inter = float(np.count_nonzero(found & lesion))
            dice = 2.0 * inter / (float(found.sum()) + float(lesion.sum()))
            hd: float | None = float(hd95(found, lesion, sp))
        else:
            dice, hd = 0.0, None
        per_lesion.append({"volume_mm3": volume, "dice": dice, "hd95": hd,
                           "matched": len(matched), "scored": volume > min_volume_mm3})
    n_components = int(components.max()) if components.size else 0
    n_fp = n_components - len(matched_any)
    scored = [r for r in per_lesion if r["scored"]]
    denominator = len(scored) + n_fp
    if denominator == 0:
        dice_mean, hd_mean = 1.0, 0.0
    else:
        dice_mean = sum(r["dice"] for r in scored) / denominator
        hds = [PENALTY_HD95 if r["hd95"] is None or not math.isfinite(r["hd95"]) else r["hd95"]
               for r in scored]
        hd_mean = (sum(hds) + PENALTY_HD95 * n_fp) / denominator
    return {
        "lesion_dice": float(dice_mean), "lesion_hd95": float(hd_mean),
        "n_lesions": len(scored), "n_missed": sum(1 for r in scored if not r["matched"]),
        "n_false_positive_lesions": int(n_fp),
        "n_small_lesions": len(per_lesion) - len(scored), "lesions": per_lesion,
    }

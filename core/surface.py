"""Surface distances and the 95th-percentile Hausdorff distance (HD95) in millimetres.

Definitions (masks of any ndim, usually ``(X, Y, Z)`` in the NIfTI voxel grid):

- The *surface* of a binary mask is its set of voxels that have at least one
  face-neighbour (connectivity 1: 6 neighbours in 3D) outside the mask; voxels on
  the array border count as surface (outside the array is background). A mask
  one voxel thick is all surface.
- The *directed surface distances* from A to B are, for every surface voxel of A,
  the Euclidean distance in mm (voxel centres scaled by ``spacing``) to the
  nearest surface voxel of B, computed with ``scipy.ndimage.distance_transform_edt``.
- **HD95** is symmetric: the 95th percentile (numpy's linear interpolation) of
  the *union* (concatenation) of both directed sets, A→B and B→A.

Empty-mask rule (stated, counted, never silently dropped):
- both masks empty → NaN (undefined; left out of means like dice's NaN);
- exactly one mask empty → ``inf`` (no surface to measure against: a missed
  tumour or a false alarm). Means leave it out, and reports count it separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing {sp} has {len(sp)} values for a {ndim}-D mask")
    if any(not s > 0 for s in sp):
        raise ValueError(f"spacing must be positive, got {sp}")
    return sp


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask (any ndim) as a bool array of the same shape."""
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return m
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    eroded = ndimage.binary_erosion(m, structure=structure, border_value=0)
    return m & ~eroded


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding every non-zero voxel of ``mask`` (non-empty)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (A→B for each surface voxel of A, B→A).

    ``a`` and ``b``: binary masks of the same shape, both non-empty. ``spacing``:
    voxel size per axis in mm (default 1). Returns two 1-D float64 arrays.

    The masks are first cropped to the bounding box of their union: every surface
    voxel (query point and feature) lies inside it, so distances are exact.
    """
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    sp = _spacing(spacing, a.ndim)
    box = _bounding_box(a | b)
    # surfaces of the full masks, then cropped (the box edge is not a mask edge)
    sa, sb = surface(a)[box], surface(b)[box]
    # distance_transform_edt gives, for every non-zero voxel, the distance to the nearest zero
    to_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return np.asarray(to_b[sa], dtype=np.float64), np.asarray(to_a[sb], dtype=np.float64)


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | None = None,
    percentile: float = 95.0,
) -> float:
    """Symmetric percentile Hausdorff distance in mm between two binary masks.

    ``pred``, ``truth``: binary masks of the same shape (any ndim, non-zero =
    inside). ``spacing``: voxel size per axis in mm, anisotropic allowed (e.g. the
    NIfTI header's zooms for ``(X, Y, Z)``). Returns the ``percentile``-th
    percentile of the union of the directed surface distances pred→truth and
    truth→pred; NaN when both masks are empty, ``inf`` when exactly one is.
    ``percentile=100`` gives the classic Hausdorff distance.
    """
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != truth shape {t.shape}")
    _spacing(spacing, p.ndim)  # validate even when a mask is empty
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return math.nan
    if has_p != has_t:
        return math.inf
    d_pt, d_tp = surface_distances(p, t, spacing)
    return float(np.percentile(np.concatenate([d_pt, d_tp]), percentile))

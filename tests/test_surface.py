"""HD95 against cases computed by hand (isotropic and anisotropic spacing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.surface import hd95, surface, surface_distances


def _vol(shape: tuple[int, ...] = (20, 20, 20)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def test_single_voxels_isotropic() -> None:
    a, b = _vol(), _vol()
    a[2, 2, 2] = 1
    b[5, 6, 2] = 1  # (3, 4, 0) voxels apart -> 5 mm
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(b, a) == pytest.approx(5.0)


def test_single_voxels_anisotropic() -> None:
    a, b = _vol(), _vol()
    a[1, 1, 1] = 1
    b[1, 1, 3] = 1  # 2 slices apart at 2.5 mm
    assert hd95(a, b, spacing=(1, 1, 2.5)) == pytest.approx(5.0)
    b2 = _vol()
    b2[4, 1, 3] = 1  # (3, 0, 2) voxels -> sqrt(3² + 5²) mm
    assert hd95(a, b2, spacing=(1, 1, 2.5)) == pytest.approx(math.sqrt(34.0))
    assert hd95(a, b2, spacing=(2.0, 1, 1)) == pytest.approx(math.sqrt(36.0 + 4.0))


def test_identical_masks_zero() -> None:
    a = _vol()
    a[3:9, 4:10, 5:12] = 1
    assert hd95(a, a.copy(), spacing=(0.5, 0.7, 3.0)) == 0.0


def test_sheets_offset_every_distance_equal() -> None:
    # one-voxel-thick sheets are all surface: every directed distance is k * 2.5 mm
    a, b = _vol(), _vol()
    a[2:12, 2:12, 4] = 1
    b[2:12, 2:12, 7] = 1
    assert hd95(a, b, spacing=(1, 1, 2.5)) == pytest.approx(3 * 2.5)


def test_cubes_offset_along_anisotropic_axis() -> None:
    """10³ cubes, B shifted by k=2 slices along z, spacing (1, 1, 2.5).

    Surface of a 10³ cube: 10³ − 8³ = 488 voxels. A→B: A's bottom face (100 voxels)
    is 2 slices from B's bottom face → 5.0 mm; A's first side ring (36) → 2.5 mm;
    A's top-face interior (64) reaches B's side walls at 1–4 mm; the rest (288) lies
    on B's surface → 0. B→A mirrors it. Union: 976 values, the largest 200 equal
    5.0; the 95th percentile (index 926.25 of 975) is therefore 5.0 mm, as is the
    maximum (k·2.5). With the shift along x (1 mm voxels) the answer is 2.0 mm.
    """
    a, b = _vol((14, 14, 16)), _vol((14, 14, 16))
    a[2:12, 2:12, 2:12] = 1
    b[2:12, 2:12, 4:14] = 1
    d_ab, d_ba = surface_distances(a, b, (1, 1, 2.5))
    assert d_ab.size == d_ba.size == 488
    assert np.count_nonzero(d_ab == 5.0) == 100
    assert np.count_nonzero(d_ab == 2.5) == 36
    assert hd95(a, b, spacing=(1, 1, 2.5)) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(1, 1, 2.5), percentile=100) == pytest.approx(5.0)
    c = _vol((16, 14, 14))
    d = _vol((16, 14, 14))
    c[2:12, 2:12, 2:12] = 1
    d[4:14, 2:12, 2:12] = 1
    assert hd95(c, d, spacing=(1, 1, 2.5)) == pytest.approx(2.0)


def test_percentile_ignores_a_single_outlier() -> None:
    # truth = pred + one far-away voxel: Hausdorff sees it, HD95 does not
    pred = _vol((40, 20, 20))
    pred[2:12, 2:12, 2:12] = 1
    truth = pred.copy()
    truth[35, 5, 5] = 1
    assert hd95(pred, truth, percentile=100) == pytest.approx(35.0 - 11.0)
    assert hd95(pred, truth) == 0.0


def test_empty_rules() -> None:
    empty, full = _vol(), _vol()
    full[5, 5, 5] = 1
    assert math.isnan(hd95(empty, empty.copy()))
    assert hd95(empty, full) == math.inf
    assert hd95(full, empty) == math.inf


def test_surface_of_solid_and_thin_masks() -> None:
    cube = _vol()
    cube[2:7, 2:7, 2:7] = 1
    assert surface(cube).sum() == 5**3 - 3**3
    line = _vol()
    line[3, 3, 2:9] = 1
    assert surface(line).sum() == 7
    border = np.ones((4, 4, 4), dtype=bool)  # touches the array border on every side
    assert surface(border).sum() == 4**3 - 2**3


def test_2d_and_bad_inputs() -> None:
    a = np.zeros((10, 10), dtype=bool)
    b = np.zeros((10, 10), dtype=bool)
    a[1, 1] = b[1, 7] = True
    assert hd95(a, b, spacing=(0.5, 0.5)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, b, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        hd95(a, b[:5])

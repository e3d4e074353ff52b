"""Preprocessing against values computed independently with nibabel, and the uncrop inverse."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.data.brats import find_case_files
from core.data.preprocess import (
    PreprocessParams,
    preprocess_case,
    region_mask,
    uncrop_to_original,
)
from core.errors import DataError

CROP = (120, 100, 40)  # (X, Y, Z): small and unequal, so an axis mix-up cannot pass
CASES = {
    "2018": ("brats2018/Brats18_CBICA_ABM_1", "_flair", "_seg"),
    "2023": ("brats2023/BraTS-GLI-00000-000", "-t2f", "-seg"),
}


def _nib(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(), dtype=np.float64)


@pytest.mark.parametrize("release", sorted(CASES))
def test_real_case_matches_independent_nibabel(brats_samples: Path, release: str) -> None:
    folder, flair_suffix, seg_suffix = CASES[release]
    case_dir = brats_samples / folder
    case = find_case_files(case_dir)
    pre = preprocess_case(case, PreprocessParams(crop=CROP))

    flair_path = next(case_dir.glob(f"*{flair_suffix}.nii.gz"))
    seg = np.rint(_nib(next(case_dir.glob(f"*{seg_suffix}.nii.gz"))))
    x0, y0, z0 = (240 - 120) // 2, (240 - 100) // 2, (155 - 40) // 2
    window = (slice(x0, x0 + 120), slice(y0, y0 + 100), slice(z0, z0 + 40))

    assert pre.image.shape == (40, 4, 100, 120) and pre.image.dtype == np.float32
    assert pre.labels is not None and pre.labels.shape == (40, 100, 120)
    assert pre.image.min() >= 0.0 and pre.image.max() <= 1.0
    # WT voxel count inside the crop, and the exact label values in store order (z, y, x)
    assert int((pre.labels > 0).sum()) == int((seg[window] > 0).sum()) > 0
    np.testing.assert_array_equal(pre.labels, seg[window].transpose(2, 1, 0))
    # FLAIR: 2nd/98th percentile of the cropped volume, clipped and scaled to [0, 1]
    vol = _nib(flair_path)[window]
    lo, hi = np.percentile(vol, [2, 98])
    expected = np.clip((vol - lo) / (hi - lo), 0, 1).transpose(2, 1, 0)
    np.testing.assert_allclose(pre.image[:, 0], expected, atol=1e-5)
    assert pre.info["percentiles"]["flair"] == pytest.approx([lo, hi])
    assert pre.info["original_shape"] == [240, 240, 155]
    assert pre.info["crop_offsets"] == [x0, y0, z0]
    np.testing.assert_allclose(pre.info["affine"], nib.load(flair_path).affine)

    # uncrop puts the crop back exactly where it came from, zeros elsewhere
    back = uncrop_to_original(pre.labels, pre.info)
    expected_full = np.zeros_like(seg)
    expected_full[window] = seg[window]
    assert back.shape == (240, 240, 155)
    np.testing.assert_array_equal(back, expected_full)


def test_uncrop_of_centred_subcrop(brats_samples: Path) -> None:
    case = find_case_files(brats_samples / "brats2018" / "Brats18_CBICA_ABM_1")
    pre = preprocess_case(case, PreprocessParams(crop=(64, 64, 8)), ("t2",))
    assert pre.labels is not None
    inner = pre.labels[:, 8:56, 8:56]  # centred 48x48 window of the 64x64 slices
    back = uncrop_to_original(inner, pre.info)
    x0, y0, z0 = pre.info["crop_offsets"]
    np.testing.assert_array_equal(
        back[x0 + 8 : x0 + 56, y0 + 8 : y0 + 56, z0 : z0 + 8], inner.transpose(2, 1, 0)
    )
    assert back.sum() == inner.sum()
    with pytest.raises(DataError, match="does not fit"):
        uncrop_to_original(pre.labels[:4], pre.info)


def _tiny_case(root: Path, shape: tuple[int, int, int]) -> Path:
    rng = np.random.default_rng(3)
    case = root / "Brats18_TCIA01_001_1"
    case.mkdir(parents=True)
    for suffix in ("flair", "t1", "t1ce", "t2"):
        data = rng.integers(0, 300, shape).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.eye(4)), case / f"{case.name}_{suffix}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[2:6, 3:9, 1:4] = 2
    seg[0, 0, 0] = 4  # a corner: must survive pad + uncrop
    nib.save(nib.Nifti1Image(seg, np.eye(4)), case / f"{case.name}_seg.nii.gz")
    return case


def test_small_volume_is_padded_never_shrunk(tmp_path: Path) -> None:
    case = find_case_files(_tiny_case(tmp_path, (20, 18, 10)))
    pre = preprocess_case(case, PreprocessParams(crop=(24, 24, 12)))
    assert pre.info["crop_offsets"] == [-2, -3, -1]
    assert pre.image.shape == (12, 4, 24, 24)
    assert pre.image[0].max() == 0 and pre.image[:, :, :3].max() == 0  # padded border
    seg = np.asarray(nib.load(case.label).dataobj)  # type: ignore[arg-type]
    np.testing.assert_array_equal(uncrop_to_original(pre.labels, pre.info), seg)


@pytest.mark.parametrize(
    ("release", "labels", "tc", "et"),
    [
        ("2018", [0, 1, 2, 4], [0, 1, 0, 1], [0, 0, 0, 1]),
        ("2017-2021", [0, 1, 2, 4], [0, 1, 0, 1], [0, 0, 0, 1]),
        ("2023", [0, 1, 2, 3], [0, 1, 0, 1], [0, 0, 0, 1]),
        ("2015", [0, 1, 2, 3, 4], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]),
    ],
)
def test_region_mask(release: str, labels: list[int], tc: list[int], et: list[int]) -> None:
    arr = np.array(labels, np.uint8)
    assert region_mask(arr, "wt", release).tolist() == [0] + [1] * (len(labels) - 1)
    assert region_mask(arr, "tc", release).tolist() == tc
    assert region_mask(arr, "et", release).tolist() == et
    assert region_mask(arr, "wt", release).dtype == np.uint8


def test_bad_names_and_params() -> None:
    with pytest.raises(ValueError, match="unknown region 'edema'; valid: wt, tc, et"):
        region_mask(np.zeros(3, np.uint8), "edema", "2018")
    with pytest.raises(DataError, match="percentiles"):
        PreprocessParams(low_pct=50, high_pct=10)
    with pytest.raises(DataError, match="crop"):
        PreprocessParams(crop=(10, 0, 10))
    assert PreprocessParams(crop=[8, 8, 4]).crop == (8, 8, 4)  # type: ignore[arg-type]

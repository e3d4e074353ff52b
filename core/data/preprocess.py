"""Per-case preprocessing (segan-cat.md, "Data preparation"), validating every file.

Axis mapping (used everywhere in the store): a nibabel volume ``v[x, y, z]`` is stored as
``s[z, y, x]``, i.e. store ``(Z, H, W)`` = nibabel ``(z, y, x)`` = ``v.transpose(2, 1, 0)``
(the same order SimpleITK arrays use). ``crop`` and ``crop_offsets`` are given in nibabel
``(X, Y, Z)`` order.

Steps per case: load every modality (and the label), check they are finite, non-constant
and share shape and affine; centre-crop to ``crop`` (zero-padding axes that are smaller,
never shrinking the crop); per modality clip to the ``low_pct``/``high_pct`` percentiles of
the whole cropped volume (background included) and scale to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data.brats import CaseFiles, check_names, load_volume
from core.errors import DataError
from core.vocabulary import LABEL_SETS, MODALITIES, REGION_LABELS, REGIONS

_AFFINE_ATOL = 1e-3  # mm; BraTS files of one case differ only by signed zeros


@dataclass(frozen=True)
class PreprocessParams:
    """Preprocessing parameters; recorded in the store manifest."""

    crop: tuple[int, int, int] = (180, 180, 128)
    """Crop size in nibabel (X, Y, Z) order; smaller volumes are zero-padded."""
    low_pct: float = 2.0
    """Lower intensity percentile (clip and map to 0), per volume and modality."""
    high_pct: float = 98.0
    """Upper intensity percentile (clip and map to 1)."""

    def __post_init__(self) -> None:
        crop = tuple(int(c) for c in self.crop)
        if len(crop) != 3 or min(crop) < 1:
            raise DataError(f"crop must be three positive sizes (X, Y, Z), got {self.crop}")
        object.__setattr__(self, "crop", crop)
        if not 0.0 <= self.low_pct < self.high_pct <= 100.0:
            raise DataError(
                f"percentiles must satisfy 0 <= low < high <= 100, got "
                f"{self.low_pct}, {self.high_pct}"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict (crop as a list)."""
        d = asdict(self)
        d["crop"] = list(self.crop)
        return d


@dataclass
class PreprocessedCase:
    """Output of preprocess_case.

    image: float32 (Z, C, H, W) in [0, 1], C in the requested modality order.
    labels: uint8 (Z, H, W) original label values, or None.
    info: original_shape (X, Y, Z), affine (4x4 list), crop_offsets (x0, y0, z0; negative =
    padded), crop (X, Y, Z), percentiles {modality: [low, high]}, zooms, release.
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray | None
    info: dict[str, Any]


def label_scheme(release: str) -> str:
    """Label scheme of a release: "2015" (0-4), "2021" (0,1,2,4; 2017-2021) or "2023" (0-3).

    Accepts "2018", "brats2023", "BraTS-2015", "2017-2021" …: the first four-digit year
    counts. A release without a year is an error, never a silent guess (TC/ET differ).
    """
    import re

    match = re.search(r"(19|20)\d\d", str(release))
    if match is None:
        raise DataError(f"unknown BraTS release {release!r}: expected a year such as 2018 or 2023")
    year = int(match.group(0))
    if year <= 2015:
        return "2015"
    return "2023" if year >= 2023 else "2021"


def region_mask(labels: np.ndarray, region: str, release: str) -> np.ndarray:
    """Binary uint8 {0,1} mask of ``region`` (wt, tc or et) from a label map, any shape.

    WT = label > 0. TC/ET: <=2021 TC = 1|4, ET = 4; 2023 TC = 1|3, ET = 3;
    2015 TC = 1|3|4, ET = 4.
    """
    check_names("region", [region], REGIONS)
    if region == "wt":
        return (labels > 0).astype(np.uint8)
    values = REGION_LABELS[label_scheme(release)][region]
    return np.isin(labels, values).astype(np.uint8)


def centre_offset(full: int, size: int) -> int:
    """Start index of a centred window of ``size`` in ``full`` (negative if size > full)."""
    return (full - size) // 2


def _overlap(full: int, size: int, offset: int) -> tuple[slice, slice]:
    """(slice in the full axis, slice in the window axis) where window[i] = full[i + offset]."""
    lo = max(0, -offset)
    hi = min(size, full - offset)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo + offset, hi + offset), slice(lo, hi)


def crop_or_pad(volume: np.ndarray, offsets: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Window of ``size`` starting at ``offsets`` (any axis count); zeros outside ``volume``."""
    out = np.zeros(tuple(size), dtype=volume.dtype)
    pairs = [_overlap(n, s, o) for n, s, o in zip(volume.shape, size, offsets, strict=True)]
    out[tuple(p[1] for p in pairs)] = volume[tuple(p[0] for p in pairs)]
    return out


def uncrop_to_original(volume_zhw: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Put a (Z, H, W) crop-space volume back in the original nibabel (X, Y, Z) grid.

    ``volume_zhw`` is a store-space volume of shape (crop Z, crop Y, crop X), or a centred
    in-plane sub-crop (Z, h, w) of it (h, w <= the stored crop; e.g. the 160x160 centre
    crop a model saw, placed with the dataset's centre rule). Voxels outside are 0; the
    dtype is kept.
    """
    cx, cy, cz = (int(c) for c in info["crop"])
    z, h, w = volume_zhw.shape
    if z != cz or h > cy or w > cx:
        raise DataError(
            f"volume shape {volume_zhw.shape} does not fit the stored crop (Z, H, W) = "
            f"({cz}, {cy}, {cx})"
        )
    full = np.zeros((cz, cy, cx), dtype=volume_zhw.dtype)
    oy, ox = centre_offset(cy, h), centre_offset(cx, w)
    full[:, oy : oy + h, ox : ox + w] = volume_zhw
    crop_xyz = full.transpose(2, 1, 0)
    original = tuple(int(s) for s in info["original_shape"])
    # Inverse of crop_or_pad: the original sees the crop at offsets (x0, y0, z0), i.e. the
    # crop sees the original at the negated offsets.
    neg = [-int(o) for o in info["crop_offsets"]]
    return crop_or_pad(crop_xyz, neg, original)


def _check_intensities(case_id: str, path: Any, data: np.ndarray) -> None:
    floating = not np.issubdtype(data.dtype, np.integer)
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data))) if floating else 0
    if bad:
        raise DataError(f"{case_id}: {path}: {bad} NaN/inf voxels")
    lo, hi = data.min(), data.max()
    if lo == hi:
        what = "all-zero" if lo == 0 else f"constant value {lo}"
        raise DataError(f"{case_id}: {path}: modality is {what}")


def _check_geometry(case_id: str, path: Any, shape: tuple, affine: np.ndarray, ref: dict) -> None:
    if shape != ref["shape"]:
        raise DataError(
            f"{case_id}: {path}: shape {shape} differs from {ref['path']} {ref['shape']}"
        )
    if not np.allclose(affine, ref["affine"], atol=_AFFINE_ATOL):
        raise DataError(
            f"{case_id}: {path}: affine differs from {ref['path']}: "
            f"{np.round(affine, 3).tolist()} vs {np.round(ref['affine'], 3).tolist()}"
        )


def _load(case: CaseFiles, path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """load_volume, with the case id leading any error message."""
    try:
        return load_volume(path)
    except DataError as exc:
        raise DataError(f"{case.case_id}: {exc}") from exc


def _load_labels(case: CaseFiles, ref: dict) -> np.ndarray:
    assert case.label is not None
    data, affine, _ = _load(case, case.label)
    _check_geometry(case.case_id, case.label, data.shape, affine, ref)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)):
            raise DataError(f"{case.case_id}: {case.label}: NaN/inf label values")
        rounded = np.rint(data)
        if np.abs(data - rounded).max() > 1e-3:
            raise DataError(f"{case.case_id}: {case.label}: non-integer label values")
        data = rounded
    values = {int(v) for v in np.unique(data)}
    allowed = LABEL_SETS[label_scheme(case.release)]
    if not values <= allowed:
        raise DataError(
            f"{case.case_id}: {case.label}: label values {sorted(values - allowed)} outside "
            f"the BraTS {case.release} set {sorted(allowed)}"
        )
    return data.astype(np.uint8)


def _normalise(
    case_id: str, path: Any, cropped: np.ndarray, params: PreprocessParams
) -> tuple[np.ndarray, list[float]]:
    """Clip to the volume's percentiles and scale to [0, 1]: float32, same shape."""
    vol = cropped.astype(np.float32)  # a fresh copy we may modify in place
    lo, hi = np.percentile(vol, [params.low_pct, params.high_pct])
    if hi <= lo:
        raise DataError(
            f"{case_id}: {path}: intensities are constant inside the crop "
            f"({params.low_pct}th = {params.high_pct}th percentile = {lo})"
        )
    np.clip(vol, lo, hi, out=vol)
    vol -= np.float32(lo)
    vol *= np.float32(1.0 / (hi - lo))
    np.clip(vol, 0.0, 1.0, out=vol)  # float32 rounding may step a hair outside [0, 1]
    return vol, [float(lo), float(hi)]


def preprocess_case(
    case: CaseFiles,
    params: PreprocessParams,
    modalities: Sequence[str] = MODALITIES,
    require_label: bool = True,
) -> PreprocessedCase:
    """Load, validate, crop and normalise one case (see the module docstring).

    Returns image float32 (Z, C, H, W) in [0, 1] and labels uint8 (Z, H, W) (original
    values; None if the case has no label file and ``require_label`` is False). Every
    problem raises DataError naming the case and the file.
    """
    check_names("modality", list(modalities), MODALITIES)
    missing = [m for m in modalities if m not in case.images]
    if missing:
        raise DataError(f"{case.case_id}: missing modality {', '.join(missing)}")
    if require_label and case.label is None:
        raise DataError(f"{case.case_id}: missing label (segmentation) file")

    ref: dict[str, Any] = {}
    image: np.ndarray | None = None
    offsets: tuple[int, ...] = ()
    percentiles = {}
    for k, m in enumerate(modalities):
        path = case.images[m]
        data, affine, meta = _load(case, path)
        if not ref:
            ref = {"shape": data.shape, "affine": affine, "path": path, "zooms": meta["zooms"]}
            offsets = tuple(
                centre_offset(n, c) for n, c in zip(data.shape, params.crop, strict=True)
            )
            cx, cy, cz = params.crop
            image = np.empty((cz, len(modalities), cy, cx), dtype=np.float32)
        _check_geometry(case.case_id, path, data.shape, affine, ref)
        _check_intensities(case.case_id, path, data)
        # Crop and transpose in the file's dtype (usually int16): half the bytes to move.
        cropped = np.ascontiguousarray(crop_or_pad(data, offsets, params.crop).transpose(2, 1, 0))
        assert image is not None
        image[:, k], percentiles[m] = _normalise(case.case_id, path, cropped, params)

    labels = None
    if case.label is not None:
        full = _load_labels(case, ref)
        labels = np.ascontiguousarray(crop_or_pad(full, offsets, params.crop).transpose(2, 1, 0))

    info = {
        "original_shape": [int(s) for s in ref["shape"]],
        "affine": np.asarray(ref["affine"], dtype=float).tolist(),
        "crop_offsets": [int(o) for o in offsets],
        "crop": list(params.crop),
        "percentiles": percentiles,
        "zooms": list(ref["zooms"]),
        "release": case.release,
    }
    assert image is not None
    return PreprocessedCase(case.case_id, image, labels, info)

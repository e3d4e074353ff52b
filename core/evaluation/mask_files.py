"""Evaluate predicted masks against ground truth NIfTI files: one pair or two folders.

Per pair (whole volume in the files' own grid): dice, precision, sensitivity and
specificity from voxel counts (``core.metrics``: NaN rules there), HD95 in mm with
the header's voxel spacing (``core.surface``: NaN if both masks are empty, ``inf``
if exactly one is), raw TP/FP/FN/TN and both masks' voxel counts.

Reading a volume as a mask of ``region`` (the same rule for prediction and truth):
- values that are not all integers → a probability map, positive where ``>= threshold``;
- integer values all in {0, 1} → already a binary mask of the region;
- other integer values → a BraTS label map, mapped with
  ``core.data.preprocess.region_mask`` (WT = label > 0; TC/ET per release). The release
  is the ``release`` argument, else the truth case folder's, else read from the labels
  and file name (``infer_release``: 3 and 4 → 2015, 4 → 2017–2021, 3 alone → 2023 or
  2015 by the file's naming, else an error asking for the release).

Folder summaries: mean over cases with a 95% bootstrap CI (``core.metrics.summarize``)
under the study's empty-truth policy (``core.metrics``: tumour-free cases count for
specificity only, and are counted apart with their false positives); NaN and inf values
are left out of the mean and counted separately (``n_nan``, ``n_inf``).

``lesion_wise=True`` adds the BraTS 2023+ lesion-wise scores per pair
(``core.evaluation.lesions``: ``lesion_dice``, ``lesion_hd95``, ``n_lesions``, ``n_missed``,
``n_false_positive_lesions``); their folder summary is over **every** case, tumour-free
ones included (the challenge scores those 1 / 0 mm, or penalises false positives).

A truth may also be one BraTS case folder (``case_label_file``: its one label file).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core import metrics
from core.errors import DataError
from core.surface import hd95
from core.vocabulary import REGIONS, SURFACE_METRICS, VOLUME_METRICS

METRIC_NAMES = VOLUME_METRICS + SURFACE_METRICS
_NIFTI_EXTS = (".nii.gz", ".nii")
_PRED_SUFFIXES = ("_seg", "-seg", "_pred", "-pred", "_mask", "-mask")
_PROB_SUFFIXES = ("_prob", "-prob")
_AFFINE_ATOL = 1e-3  # mm


def _nifti_stem(path: Path) -> str | None:
    """File name without .nii/.nii.gz, or None for a non-NIfTI file."""
    lower = path.name.lower()
    for ext in _NIFTI_EXTS:
        if lower.endswith(ext):
            return path.name[: -len(ext)]
    return None


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(data (X, Y, Z) in the file's dtype, 4×4 affine, voxel spacing in mm) of a 3-D NIfTI."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # type: ignore[attr-defined]
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])  # type: ignore[attr-defined]
        affine = np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D mask, found shape {data.shape}")
    return data, affine, zooms


def _release_key(release: str | None) -> str | None:
    """'brats2023' / 'BraTS2018' / '2023' → '2023' / '2018' / '2023' (the data module's form)."""
    if release is None:
        return None
    key = str(release).strip().lower()
    return key[len("brats"):].lstrip("_-") if key.startswith("brats") else key


def infer_release(values: set[int], path: Path | None = None) -> str | None:
    """Label scheme read from a label map's values and file name; None if ambiguous.

    3 and 4 → 2015; 4 without 3 → 2017–2021. 3 without 4 is a BraTS 2023 map *or* a 2015
    map with no enhancing tumour: the file name decides (``-seg`` / ``BraTS-…`` → 2023;
    ``_seg``, ``.mha`` or a VSD ``OT`` name → 2015), else it is ambiguous (None).
    """
    if 3 in values and 4 in values:
        return "2015"
    if 3 not in values:
        return "2021"
    name = path.name.lower() if path is not None else ""
    stem = _nifti_stem(path) if path is not None else None
    stem = (stem or name).lower()
    if stem.endswith("-seg") or name.startswith("brats-"):
        return "2023"
    if stem.endswith("_seg") or name.endswith(".mha") or ".ot." in name:
        return "2015"
    return None


def as_region_mask(
    volume: np.ndarray, region: str, release: str | None, path: Path, threshold: float = 0.5
) -> np.ndarray:
    """Binary bool mask (same shape) of ``region`` from a mask, probability or label map."""
    from core.data.preprocess import label_scheme, region_mask
    from core.vocabulary import LABEL_SETS

    if region not in REGIONS:
        raise DataError(f"unknown region {region!r}; valid: {', '.join(REGIONS)}")
    if volume.dtype.kind == "f":
        if not np.all(np.isfinite(volume)):
            raise DataError(f"{path}: NaN/inf values")
        rounded = np.rint(volume)
        if np.any(rounded != volume):
            return np.asarray(volume >= threshold)
        volume = rounded.astype(np.int32)
    elif volume.dtype.kind == "b":
        return volume.astype(bool)
    values = {int(v) for v in np.unique(volume)}
    if values <= {0, 1}:
        return volume.astype(bool)
    if min(values) < 0:
        raise DataError(f"{path}: negative values {sorted(v for v in values if v < 0)}")
    key = _release_key(release) or infer_release(values, path)
    if key is None:
        if region == "wt":  # WT = label > 0 in every release
            return volume > 0
        raise DataError(f"{path}: labels {sorted(values)} hold 3 but no 4: BraTS 2023 (3 = ET) "
                        f"or BraTS 2015 without enhancing tumour (3 = non-enhancing); "
                        f"the file name does not say which: pass --release 2015 or 2023")
    allowed = LABEL_SETS[label_scheme(key)]
    if not values <= allowed:
        raise DataError(f"{path}: label values {sorted(values - allowed)} outside the BraTS "
                        f"{key} label set {sorted(allowed)}")
    return region_mask(volume, region, key).astype(bool)


def evaluate_masks(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None
) -> dict[str, Any]:
    """Metrics of one binary prediction against one binary truth, same shape (any ndim).

    Returns dice, precision, sensitivity, specificity, hd95 (mm; NaN/inf by the
    empty rules), tp, fp, fn, tn, pred_voxels, truth_voxels.
    """
    c = metrics.confusion_counts(pred.astype(bool), truth.astype(bool))
    return {
        "dice": metrics.dice(c), "precision": metrics.precision(c),
        "sensitivity": metrics.sensitivity(c), "specificity": metrics.specificity(c),
        "hd95": hd95(pred, truth, spacing),
        "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn,
        "pred_voxels": c.tp + c.fp, "truth_voxels": c.tp + c.fn,
    }


def evaluate_pair(
    pred_path: str | Path,
    truth_path: str | Path,
    region: str = "wt",
    release: str | None = None,
    threshold: float = 0.5,
    lesion_wise: bool = False,
) -> dict[str, Any]:
    """Evaluate one predicted mask file against one truth file (NIfTI, same grid).

    The truth may be a binary mask or a raw BraTS label map; the prediction a binary
    mask (or a probability map, thresholded; or a label map). Shape or affine
    mismatch raises DataError naming both files. Returns ``evaluate_masks``' dict plus
    pred, truth (paths), region, spacing (and the lesion-wise scores with ``lesion_wise``).
    """
    pred_path, truth_path = Path(pred_path), Path(truth_path)
    pred, p_affine, spacing = load_nifti(pred_path)
    truth, t_affine, _ = load_nifti(truth_path)
    if pred.shape != truth.shape:
        raise DataError(f"shape mismatch: prediction {pred_path} {pred.shape} vs "
                        f"truth {truth_path} {truth.shape}")
    if not np.allclose(p_affine, t_affine, atol=_AFFINE_ATOL):
        raise DataError(f"affine mismatch: prediction {pred_path} vs truth {truth_path} "
                        f"({np.round(p_affine, 3).tolist()} vs {np.round(t_affine, 3).tolist()})")
    p = as_region_mask(pred, region, release, pred_path, threshold)
    t = as_region_mask(truth, region, release, truth_path, threshold)
    row = evaluate_masks(p, t, spacing)
    if lesion_wise:
        from core.evaluation.lesions import lesion_wise as score_lesions

        row.update(score_lesions(p, t, spacing))
    return {"pred": str(pred_path), "truth": str(truth_path), "region": region,
            "spacing": list(spacing), **row}


def case_key(path: Path) -> str:
    """Case id of a mask file: the name without .nii(.gz) and a _seg/_pred/_mask suffix."""
    stem = _nifti_stem(path) or path.name
    for suffix in _PRED_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _mask_files(folder: Path) -> dict[str, Path]:
    """case id → NIfTI file directly in ``folder`` (probability maps skipped)."""
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = _nifti_stem(path)
        if not path.is_file() or stem is None or stem.lower().endswith(_PROB_SUFFIXES):
            continue
        key = case_key(path)
        if key in out:
            raise DataError(f"{folder}: two masks for case {key}: {out[key].name}, {path.name}")
        out[key] = path
    return out


def truth_files(truth_dir: Path) -> dict[str, tuple[Path, str | None]]:
    """case id → (label file, release or None) from mask files and/or BraTS case folders."""
    from core.data.brats import LABEL, classify_file, find_case_files, walk_files

    found: dict[str, tuple[Path, str | None]] = {
        k: (p, None) for k, p in _mask_files(truth_dir).items()
    }
    labels: dict[Path, list[Path]] = {}
    for path in walk_files(truth_dir):
        if path.parent != truth_dir and classify_file(path) == LABEL:
            vsd = path.parent.name.upper().startswith("VSD.")  # BraTS 2015 layout
            labels.setdefault(path.parent.parent if vsd else path.parent, []).append(path)
    for case_dir, files in sorted(labels.items()):
        try:
            case = find_case_files(case_dir)
        except DataError:
            if len(files) != 1:  # ambiguous: several label files in one case folder
                raise
            found.setdefault(case_dir.name, (files[0], None))  # a folder of labels only
            continue
        if case.label is not None:
            found.setdefault(case.case_id, (case.label, case.release))
    return found


def evaluate_folders(
    pred_dir: str | Path,
    truth_dir: str | Path,
    region: str = "wt",
    release: str | None = None,
    threshold: float = 0.5,
    progress: Callable[[str], None] | None = None,
    lesion_wise: bool = False,
) -> dict[str, Any]:
    """Evaluate every prediction in ``pred_dir`` against its truth in ``truth_dir``.

    ``pred_dir``: NIfTI masks named ``<case_id>[_seg|_pred|_mask].nii.gz`` (as
    ``predict`` writes them; ``*_prob.nii.gz`` skipped). ``truth_dir``: masks named the
    same way and/or BraTS case folders (any naming, any depth) holding a label file.
    Pairs by case id. Returns ``{"region", "cases": [row per pair], "summary": {metric:
    {mean, ci_low, ci_high, n, n_excluded, n_nan, n_inf}}, "pred_only": [...],
    "truth_only": [...]}``. No pair at all raises DataError naming both folders.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for folder in (pred_dir, truth_dir):
        if not folder.is_dir():
            raise DataError(f"folder not found: {folder}")
    preds = _mask_files(pred_dir)
    truths = truth_files(truth_dir)
    common = sorted(set(preds) & set(truths))
    if not common:
        raise DataError(f"no case id in {pred_dir} ({len(preds)} masks) matches one in "
                        f"{truth_dir} ({len(truths)} truths)")
    rows = []
    for i, case_id in enumerate(common, 1):
        truth_path, case_release = truths[case_id]
        row = evaluate_pair(preds[case_id], truth_path, region, release or case_release,
                            threshold, lesion_wise)
        rows.append({"case_id": case_id, **row})
        if progress is not None:
            progress(f"[{i}/{len(common)}] {case_id}: dice {row['dice']:.4f}, "
                     f"hd95 {row['hd95']:.2f} mm")
    return {
        "region": region,
        "cases": rows,
        "summary": summarize_rows(rows),
        "tumour_free": dict(zip(("cases", "false_positive"), metrics.tumour_free(rows), strict=True)),
        "pred_only": sorted(set(preds) - set(truths)),
        "truth_only": sorted(set(truths) - set(preds)),
    }


def summarize_rows(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per metric: mean ± 95% bootstrap CI over finite values under the study's empty-truth
    policy (``core.metrics``: tumour-free cases count for specificity only); NaN (which
    includes tumour-free cases) and inf counted apart."""
    out: dict[str, dict[str, Any]] = {}
    from core.evaluation.lesions import LESION_COUNTS, LESION_METRICS

    lesion = [n for n in LESION_METRICS + LESION_COUNTS if rows and all(n in r for r in rows)]
    for name in (*METRIC_NAMES, *lesion):
        values = (metrics.policy_values(rows, name) if name in METRIC_NAMES
                  else np.array([float(r[name]) for r in rows], dtype=float))
        summary = metrics.summarize(values, seed=seed).as_dict()
        summary["n_nan"] = int(np.isnan(values).sum())
        summary["n_inf"] = int(np.isinf(values).sum())
        if name in LESION_COUNTS:
            summary["total"] = int(np.nansum(values))
        out[name] = summary
    return out


def case_label_file(folder: str | Path) -> tuple[Path, str]:
    """(label file, release) of one BraTS case folder in any supported naming.

    DataError naming the folder when it holds no label file or several."""
    from core.data.brats import LABEL, classify_file, detect_release

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"case folder not found: {folder}")
    files = [p for p in folder.iterdir() if p.is_file()]
    for sub in folder.iterdir():  # BraTS 2015: one VSD.* folder per file
        if sub.is_dir() and sub.name.upper().startswith("VSD."):
            files.extend(p for p in sub.iterdir() if p.is_file())
    labels = sorted(p for p in files if classify_file(p) == LABEL)
    if not labels:
        raise DataError(f"--truth {folder}: no label file in this case folder (looked for "
                        f"*_seg.nii.gz, *-seg.nii.gz, VSD.*.OT.*.mha); give the label file, "
                        f"or a folder of predicted masks as --pred to pair a folder of cases")
    if len(labels) > 1:
        raise DataError(f"--truth {folder}: several label files in this case folder: "
                        f"{', '.join(p.name for p in labels)}; pass the one to use as --truth")
    return labels[0], detect_release(folder.name, files)


def json_safe(value: Any) -> Any:
    """Strict-JSON copy: NaN → None (null), ±inf → "inf"/"-inf"; recurses into dicts/lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value

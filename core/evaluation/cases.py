"""Checkpoint + case folder → tumour mask NIfTI in the case's original grid.

The network is rebuilt from the checkpoint alone (``core.checkpoint.build_segmentor``)
and the case is preprocessed with the parameters the store recorded there
(``state["preprocessing"]``: crop, intensity percentiles), by the same function that
built the training store (``core.data.preprocess.preprocess_case``):

    original (X, Y, Z) → centre crop → per-modality 2–98 % clip → [0, 1] → (Z, C, H, W)
    → slice-wise probabilities over the whole stored slice (Z, H, W; padded to a multiple
    of 16 and stripped) → zeros outside the crop → (X, Y, Z)

The mask is ``prob >= train.threshold`` (uint8 {0, 1}), post-processed as the checkpoint
says (``core.postprocess``: chosen on validation by ``fit``); it is written with the
original affine and header, so it overlays the input images in any viewer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_path
from core.checkpoint import build_segmentor
from core.device import resolve_device
from core.errors import CheckpointError, DataError
from core.evaluation.volumes import checkpoint_postprocessing, predict_volume
from core.postprocess import postprocess

REQUIRED_KEYS = ("config", "in_channels", "modalities", "segmentor")


def preprocess_params(state: Mapping[str, Any]) -> Any:
    """``PreprocessParams`` from the checkpoint's ``preprocessing`` dict (strictly)."""
    from core.data.preprocess import PreprocessParams

    prep = state.get("preprocessing")
    if not isinstance(prep, Mapping):
        raise CheckpointError("checkpoint has no 'preprocessing' parameters (was it trained "
                              "on a prepared store?); cannot reproduce the training input")
    known = {f.name for f in dataclasses.fields(PreprocessParams)}
    unknown = sorted(set(prep) - known)
    if unknown:
        raise CheckpointError(f"checkpoint preprocessing has keys this code does not know: "
                              f"{', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return PreprocessParams(**dict(prep))


def case_files(case: Path | Mapping[str, Path], modalities: tuple[str, ...]) -> Any:
    """``CaseFiles`` for a case folder or explicit ``{modality: file}``; check modalities.

    Raises DataError naming every modality the model needs that is absent, and the folder.
    """
    from core.data.brats import CaseFiles, find_case_files
    from core.vocabulary import MODALITIES

    if isinstance(case, Mapping):
        images = {m: Path(p) for m, p in case.items()}
        bad = sorted(set(images) - set(MODALITIES))
        if bad:
            raise DataError(f"unknown modality {', '.join(bad)}; valid: {', '.join(MODALITIES)}")
        for m, p in images.items():
            if not p.is_file():
                raise DataError(f"{m} file not found: {p}")
        first = images[next(iter(images))] if images else Path("case")
        stem = first.name.split(".nii")[0]
        files = CaseFiles(case_id=stem, release="unknown", grade="unknown",
                          institution="unknown", images=images, label=None)
        where = "the given files"
    else:
        files = find_case_files(Path(case))
        where = str(case)
    missing = [m for m in modalities if m not in files.images]
    if missing:
        raise DataError(f"{where}: missing modalities the model needs: {', '.join(missing)} "
                        f"(model inputs: {', '.join(modalities)}; found: "
                        f"{', '.join(files.images) or 'none'})")
    return files


def predict_case(
    checkpoint: dict[str, Any],
    case_dir: Path | Mapping[str, Path],
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """Segment one case with a loaded checkpoint (``core.checkpoint.load_checkpoint``).

    ``case_dir``: a BraTS case folder (any supported naming) or ``{modality: file}``.
    Returns ``(mask uint8 (X, Y, Z) in {0, 1}, prob float32 (X, Y, Z) in [0, 1], affine
    4×4, header)`` in the original grid of the input files; 0 outside the crop.
    """
    from core.data.preprocess import preprocess_case, uncrop_to_original

    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint lacks {', '.join(missing)}; cannot predict with it")
    modalities = tuple(str(m) for m in checkpoint["modalities"])
    params = preprocess_params(checkpoint)
    files = case_files(case_dir, modalities)
    pre = preprocess_case(files, params, modalities=modalities, require_label=False)

    segmentor, cfg = build_segmentor(checkpoint)
    dev = resolve_device(device)
    segmentor.to(dev)

    prob_zhw = predict_volume(segmentor, pre.image, dev, batch_size=batch_size,
                              tta=cfg.train.tta)
    mask_zhw = postprocess(prob_zhw >= cfg.train.threshold,
                           checkpoint_postprocessing(checkpoint)).astype(np.uint8)

    prob = uncrop_to_original(prob_zhw.astype(np.float32), pre.info).astype(np.float32)
    mask = uncrop_to_original(mask_zhw, pre.info).astype(np.uint8)
    affine, header = _reference_geometry(files, modalities[0])
    return mask, prob, affine, header


def _reference_geometry(files: Any, modality: str) -> tuple[np.ndarray, Any]:
    """Affine and header of the case's first model input (the grid every input shares)."""
    import nibabel as nib

    path = Path(files.images[modality])
    if path.name.lower().endswith(".mha"):
        from core.data.brats import load_volume

        data, affine, _ = load_volume(path)
        header = nib.Nifti1Header()
        header.set_data_shape(data.shape)
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
        return affine, header
    img = nib.load(str(path))
    return np.asarray(img.affine, dtype=np.float64), img.header.copy()  # type: ignore[attr-defined]


def save_nifti(path: str | Path, volume: np.ndarray, affine: np.ndarray, header: Any) -> None:
    """Write ``volume`` (X, Y, Z) as NIfTI with ``affine``/``header``, atomically.

    The header's data type follows ``volume`` (uint8 masks, float32 probabilities) and
    any intensity scaling of the source images is dropped.
    """
    import nibabel as nib

    path = Path(path)
    header = header.copy() if header is not None else None
    if isinstance(header, nib.Nifti1Header) and not isinstance(header, nib.Nifti2Header):
        img: Any = nib.Nifti1Image(volume, affine, header)
    else:
        img = nib.Nifti1Image(volume, affine)
    img.set_data_dtype(volume.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0  # 0/0 = unset: viewers autoscale
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix) as tmp:  # nibabel picks the format from the extension
        nib.save(img, str(tmp))


def prob_path_for(mask_path: Path) -> Path:
    """``case.nii.gz`` → ``case_prob.nii.gz`` (beside the mask)."""
    name = mask_path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return mask_path.with_name(name[: -len(ext)] + "_prob" + ext)
    return mask_path.with_name(name + "_prob.nii.gz")


def predict_to_file(
    checkpoint: dict[str, Any],
    case_dir: Path | Mapping[str, Path],
    out: str | Path,
    save_prob: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """``predict_case`` and write the mask (and ``*_prob`` map); return a small summary."""
    out = Path(out)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise DataError(f"output {out} must end in .nii.gz or .nii")
    mask, prob, affine, header = predict_case(checkpoint, case_dir, device)
    save_nifti(out, mask, affine, header)
    summary: dict[str, Any] = {"mask": str(out), "voxels": int(mask.sum()),
                               "volume_ml": float(mask.sum() * _voxel_ml(header))}
    if save_prob:
        summary["prob"] = str(prob_path_for(out))
        save_nifti(summary["prob"], prob, affine, header)
    return summary


def _voxel_ml(header: Any) -> float:
    try:
        zooms = header.get_zooms()[:3]
        return float(np.prod(zooms)) / 1000.0
    except Exception:  # noqa: BLE001 - a header without zooms: report voxels only
        return float("nan")

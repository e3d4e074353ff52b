"""Slice-by-slice prediction of whole volumes and per-volume evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core import metrics
from core.postprocess import postprocess
from core.protocol import ALIGN, window_slices
from core.surface import hd95
from core.tta import predict_with


@torch.no_grad()
def predict_volume(
    segmentor: nn.Module,
    image: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    channels_last: bool = False,
    tta: str = "none",
) -> np.ndarray:
    """Probabilities for every voxel of every slice of a volume (averaged over the views of
    test-time augmentation ``tta``, ``core.tta``).

    ``image``: float ``(Z, C, H, W)`` in [0, 1], any H and W: slices are zero-padded to a
    multiple of 16 (zero is the preprocessed background) and the padding is stripped.
    Returns float32 ``(Z, H, W)`` in (0, 1). The segmentor is used in eval mode, in fp32.
    """
    was_training = segmentor.training
    segmentor.eval()
    z, _, h, w = image.shape
    pad_h, pad_w = (-h) % ALIGN, (-w) % ALIGN
    top, left = pad_h // 2, pad_w // 2
    out = np.empty((z, h, w), dtype=np.float32)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for start in range(0, z, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(image[start : start + batch_size]))
        x = x.to(device=device, dtype=torch.float32)
        if pad_h or pad_w:
            x = F.pad(x, (left, pad_w - left, top, pad_h - top))
        x = x.contiguous(memory_format=memory_format)
        prob = predict_with(tta, segmentor, x)[:, 0, top : top + h, left : left + w]
        out[start : start + batch_size] = prob.float().cpu().numpy()
    segmentor.train(was_training)
    return out


@dataclass(frozen=True)
class VolumeResult:
    case_id: str
    counts: metrics.Counts
    hd95: float | None = None
    """HD95 in mm inside the evaluation window (``core.surface.hd95``), when computed."""

    def row(self) -> dict[str, float | int | str]:
        c = self.counts
        row: dict[str, float | int | str] = {"case_id": self.case_id, "tp": c.tp, "fp": c.fp,
                                             "fn": c.fn, "tn": c.tn, **metrics.volume_metrics(c)}
        if self.hd95 is not None:
            row["hd95"] = self.hd95
        return row


Spacing = Callable[[str], tuple[float, float, float]]
"""case_id -> voxel size in mm of a stored ``(Z, H, W)`` volume."""


def stored_spacing(case_info: Mapping[str, Any]) -> tuple[float, float, float]:
    """(Z, H, W) voxel size in mm of a stored case from its manifest row's NIfTI ``zooms``
    (X, Y, Z); a store is written ``s[z, y, x]``. 1 mm when the row has none."""
    zooms = case_info.get("zooms") or (1.0, 1.0, 1.0)
    return (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def evaluate_volumes(
    segmentor: nn.Module,
    volumes: Iterable[tuple[str, np.ndarray, np.ndarray]],
    threshold: float = 0.5,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    channels_last: bool = False,
    spacing: Spacing | None = None,
    postprocessing: str = "none",
    tta: str = "none",
) -> list[VolumeResult]:
    """Per-volume counts for ``(case_id, image (Z,C,H,W), mask (Z,H,W))`` items.

    The whole slice is predicted and the whole volume post-processed
    (``core.postprocess``, as ``predict`` does); counts are taken inside the protocol's
    evaluation window (``core.protocol``), the same for every budget. With ``spacing``
    (final evaluation; validation skips it) HD95 in mm is computed in the same window.
    """
    return evaluate_volumes_modes(segmentor, volumes, (postprocessing,), threshold, device,
                                  batch_size, channels_last, spacing, tta)[postprocessing]


def evaluate_volumes_modes(
    segmentor: nn.Module,
    volumes: Iterable[tuple[str, np.ndarray, np.ndarray]],
    modes: tuple[str, ...],
    threshold: float = 0.5,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    channels_last: bool = False,
    spacing: Spacing | None = None,
    tta: str = "none",
) -> dict[str, list[VolumeResult]]:
    """``evaluate_volumes`` under several post-processing ``modes`` from one prediction
    per volume: ``{mode: [VolumeResult per volume]}``."""
    results: dict[str, list[VolumeResult]] = {mode: [] for mode in modes}
    for case_id, image, mask in volumes:
        prob = predict_volume(segmentor, image, device, batch_size, channels_last, tta)
        rows, cols = window_slices(mask.shape[1], mask.shape[2])
        truth = mask[:, rows, cols]
        for mode in modes:
            pred = postprocess(prob >= threshold, mode)[:, rows, cols]
            counts = metrics.confusion_counts(pred, truth)
            distance = hd95(pred, truth, spacing(case_id)) if spacing is not None else None
            results[mode].append(VolumeResult(case_id, counts, distance))
    return results


def mean_metrics(results: list[VolumeResult]) -> dict[str, float]:
    """Mean over volumes of each voxel-count metric under the empty-truth policy of every
    summary (``core.metrics``: tumour volumes only, specificity over all; validation and
    checkpoint selection included) + the count of volumes left out of each mean."""
    out: dict[str, float] = {}
    rows = [r.row() for r in results]
    for name in metrics.METRICS:
        values = metrics.policy_values(rows, name)
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if finite.size else float("nan")
        out[f"{name}_excluded"] = float(values.size - finite.size)
    return out


def modality_key(modalities: tuple[str, ...] | list[str]) -> str:
    """Metric-name component for a modality set: ``flair`` or ``flair-t1-t1c-t2``."""
    return "-".join(modalities)


def checkpoint_postprocessing(state: Mapping[str, Any]) -> str:
    """The post-processing a checkpoint's model is used with: chosen on validation and
    stored by ``fit`` (``train.postprocess: auto``), else its configured mode."""
    chosen = state.get("postprocess")
    if chosen:
        return str(chosen)
    mode = str(state["config"].get("train", {}).get("postprocess", "none"))
    return "none" if mode == "auto" else mode


def evaluate_checkpoint(
    state: dict,
    store: str,
    modalities: tuple[str, ...],
    split: str,
    device: torch.device | str = "cpu",
) -> list[VolumeResult]:
    """Evaluate a loaded checkpoint's segmentor on ``split`` fed with ``modalities``:
    counts and HD95 (with the store's voxel spacing) per volume.

    A unimodal model may be fed another modality (the cross-modality matrix); the
    channel count must match the model's.
    """
    from core.checkpoint import build_segmentor
    from core.data.dataset import iter_volumes
    from core.data.store import BratsStore
    from core.errors import CheckpointError

    segmentor, cfg = build_segmentor(state)
    if len(modalities) != int(state["in_channels"]):
        raise CheckpointError(
            f"model takes {state['in_channels']} channel(s) ({','.join(state['modalities'])}); "
            f"cannot evaluate it on {','.join(modalities)}"
        )
    segmentor.to(device)
    fold = None if cfg.data.fold < 0 else cfg.data.fold
    opened = BratsStore(store)
    volumes = iter_volumes(opened, split, modalities, cfg.data.region, fold=fold)
    return evaluate_volumes(segmentor, volumes, cfg.train.threshold, device,
                            spacing=lambda case_id: stored_spacing(opened.case_info(case_id)),
                            postprocessing=checkpoint_postprocessing(state), tta=cfg.train.tta)

"""Losses: multiscale L1 between critic features, and the soft dice loss."""

from __future__ import annotations

import torch


def multiscale_l1(
    features_pred: list[torch.Tensor], features_true: list[torch.Tensor], mode: str = "per_layer"
) -> torch.Tensor:
    """Mean absolute difference between critic feature lists.

    Each list holds tensors ``(B, C_l, H_l, W_l)`` (the critic input and every
    block's output). ``mode='per_layer'`` (paper) averages the per-layer means;
    ``mode='global'`` (reference code) takes one mean over the concatenation of
    all flattened features, so large early layers weigh more. Returns a scalar.
    """
    if len(features_pred) != len(features_true):
        raise ValueError("feature lists differ in length")
    # sums in fp32 whatever the autocast dtype: bf16 has 8 mantissa bits
    diffs = [(p.float() - t.float()).abs() for p, t in zip(features_pred, features_true, strict=True)]
    if mode == "per_layer":
        return torch.stack([d.mean() for d in diffs]).mean()
    if mode == "global":
        total = torch.stack([d.sum() for d in diffs]).sum()
        count = sum(d.numel() for d in diffs)
        return total / count
    raise ValueError(f"unknown l1 mode {mode!r}; valid: per_layer, global")


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft dice loss ``1 − (2Σpg + eps) / (Σp² + Σg² + eps)`` per sample, batch mean.

    ``pred`` probabilities and ``target`` {0,1} masks, both ``(B, 1, H, W)``. Scalar.
    """
    dims = tuple(range(1, pred.dim()))
    inter = (pred * target).sum(dims)
    denom = (pred * pred).sum(dims) + (target * target).sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()

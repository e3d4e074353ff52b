"""Test-time augmentation: what a model's volume prediction averages over.

- ``none``: one forward pass per slice (the paper).
- ``flip``: the mean of the slice's probabilities and those of its left-right mirror
  (mirrored back), as nnU-Net mirrors at inference. Brains are near-symmetric and tumours
  occur on either side; on real BraTS it evened out the `cpu` budget's under-segmentation
  (README, "Real data").

One setting (``train.tta``) serves validation, the study's test evaluation and
``predict``, so the three numbers are computed the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the study's driver imports this module (via the config) and never torch
    import torch

TTA_MODES: tuple[str, ...] = ("none", "flip")


def predict_with(mode: str, forward: Callable[[torch.Tensor], torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
    """``forward`` over ``x`` ``(B, C, H, W)`` under test-time augmentation ``mode``; the
    result has ``forward``'s shape ``(B, 1, H, W)``. The mirror is taken of the whole
    (padded) input and its output mirrored back, so both views stay aligned."""
    if mode == "none":
        return forward(x)
    if mode == "flip":
        return (forward(x) + forward(x.flip(-1)).flip(-1)) / 2
    raise ValueError(f"unknown test-time augmentation {mode!r}; valid: {', '.join(TTA_MODES)}")

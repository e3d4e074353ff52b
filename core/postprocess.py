"""Post-processing of a predicted volume mask, the same in validation, the study's test
evaluation and ``predict`` (one function, so their numbers agree).

- ``none``: the thresholded prediction (the paper).
- ``largest_component``: keep the largest 3-D connected component (face connectivity).
  A whole tumour is usually one connected region; on real BraTS the `cpu` budget's
  models also mark scattered false-positive regions (README, "Real data").

``train.postprocess: auto`` decides per model on the validation split, as nnU-Net decides
its own: the mode with the higher validation dice is stored in ``best.pt``.
"""

from __future__ import annotations

import numpy as np

POSTPROCESSING: tuple[str, ...] = ("none", "largest_component")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` bool ``(Z, H, W)`` → bool, only its largest face-connected component."""
    from scipy import ndimage  # here: the config (and the study's driver) imports this module

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == int(sizes.argmax())


def postprocess(mask: np.ndarray, mode: str) -> np.ndarray:
    """Apply post-processing ``mode`` (one of ``POSTPROCESSING``) to a bool ``(Z, H, W)`` mask."""
    if mode == "none":
        return mask
    if mode == "largest_component":
        return largest_component(mask)
    raise ValueError(f"unknown post-processing {mode!r}; valid: {', '.join(POSTPROCESSING)}")

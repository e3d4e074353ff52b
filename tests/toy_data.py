"""Tiny in-memory 2D phantoms for core tests: bright discs on noise, known masks."""

from __future__ import annotations

import numpy as np
import torch

from core.training_data import TrainData


def disc_phantoms(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, C, size, size)`` float32 in [0,1] and masks ``(n, size, size)`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, channels, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        r = rng.uniform(size * 0.12, size * 0.3)
        cy, cx = rng.uniform(r, size - r, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        masks[i] = disc
        base = rng.normal(0.3, 0.08, (channels, size, size))
        images[i] = np.clip(base + 0.45 * disc, 0, 1)
    return images, masks


class PhantomSlices:
    """Map-style dataset over phantom slices; crops are the whole image."""

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images[i]), torch.from_numpy(self.masks[i][None].astype(np.float32))

    def set_epoch(self, epoch: int) -> None:  # crops do not depend on the epoch here
        pass


def phantom_data(n_train: int = 64, size: int = 32, channels: int = 1, seed: int = 0) -> TrainData:
    """Training slices plus two validation 'volumes' of 8 slices each."""
    images, masks = disc_phantoms(n_train, size, channels, seed)
    vi, vm = disc_phantoms(16, size, channels, seed + 1)
    volumes = [("v0", vi[:8], vm[:8]), ("v1", vi[8:], vm[8:])]
    return TrainData(PhantomSlices(images, masks), lambda: volumes)

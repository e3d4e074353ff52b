"""Training batches cut on the training device from a split held there as float16.

A GPU step at batch 64 consumes ~10⁴ slices/s; a DataLoader that crops on the host and
copies every batch cannot keep up with several trials per GPU. Here the whole training
split (a BraTS-2019-sized split at 4 modalities is ~3 GB in float16) is uploaded once, the
host copy is dropped, and each batch is a gather on the device: the same slices and the
same crop origins as ``SliceDataset`` (tests check batch-for-batch equality on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from core.data.dataset import SliceDataset


class DeviceBatches:
    """A cached ``SliceDataset``'s slices on ``device``; yields cropped batches.

    Images are stored ``(N, C, H, W)`` float16 and masks ``(N, H, W)`` uint8, N = slices of
    the split. The dataset's own cache is released after the upload.
    """

    def __init__(self, dataset: SliceDataset, device: torch.device) -> None:
        images, masks = dataset.take_cache()
        self.dataset = dataset
        self.device = device
        self.images = torch.from_numpy(np.concatenate(images)).to(device)
        self.masks = torch.from_numpy(np.concatenate(masks)).to(device)
        self.crop = dataset.crop
        self._offsets = torch.arange(self.crop, device=device)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.masks.numel()

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """image float32 ``(B, C, crop, crop)``, mask float32 ``(B, 1, crop, crop)`` on the
        device, cropped where ``SliceDataset`` crops item i in the current epoch."""
        origins = torch.tensor([self.dataset.crop_origin(int(i)) for i in indices],
                               dtype=torch.long).to(self.device)
        idx = torch.as_tensor(list(indices), dtype=torch.long).to(self.device)
        rows = (origins[:, 0, None] + self._offsets)[:, :, None]   # (B, crop, 1)
        cols = (origins[:, 1, None] + self._offsets)[:, None, :]   # (B, 1, crop)
        n = idx[:, None, None]
        masks = self.masks[n, rows, cols][:, None].float()
        channels = torch.arange(self.images.shape[1], device=self.device)
        images = self.images[n[:, None], channels[None, :, None, None], rows[:, None],
                             cols[:, None]].float()
        return images, masks

    def batches(self, order: Sequence[int], batch_size: int,
                drop_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches in ``order`` (as a DataLoader with this sampler would)."""
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                return
            yield self.batch(chunk)

"""What the trainer trains on: a map-style slice dataset whose crops follow the epoch, the
seeded order of each epoch's slices, and the validation volumes, read from a prepared zarr
store (or given in memory by tests); plus the store facts a checkpoint records to stand
alone."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from core.config import ExperimentConfig
from core.errors import ConfigError


class EpochDataset(Protocol):
    """A map-style dataset of ``(image (C,H,W), mask (1,H,W))`` whose crops depend on the epoch."""

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class TrainData:
    train: EpochDataset
    val: Callable[[], Iterable[tuple[str, np.ndarray, np.ndarray]]]
    """Returns ``(case_id, image (Z,C,H,W) float32, mask (Z,H,W) uint8)`` per validation volume."""


def store_data(cfg: ExperimentConfig, split: str = "val") -> TrainData:
    """Training slices and validation volumes from the zarr store in ``cfg.data``."""
    from core.data.dataset import SliceDataset, iter_volumes

    d = cfg.data
    if not d.store:
        raise ConfigError("data.store: no store given (prepare one with `run_study.py prepare`)")
    fold = None if d.fold < 0 else d.fold
    train = SliceDataset(d.store, "train", d.modalities, d.train_crop, train=True,
                         region=d.region, seed=cfg.train.seed, cache=d.cache, fold=fold,
                         shared=d.shared_cache)

    def split_volumes() -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
        return iter_volumes(d.store, split, d.modalities, d.region, fold=fold)

    if d.cache:
        cached = list(split_volumes())
        return TrainData(train, lambda: cached)
    return TrainData(train, split_volumes)


DEVICE_SHARE = 0.5
"""Largest share of a GPU's free memory a trial's training split may take on the device
(the rest: networks, activations, and other trials packed with fractional GPUs)."""


def split_fits(split_bytes: int, free_bytes: int, share: float = DEVICE_SHARE) -> bool:
    """Whether a training split of ``split_bytes`` may move to a device with ``free_bytes``."""
    return split_bytes <= share * free_bytes


def device_batches_for(train_set: EpochDataset, cfg: ExperimentConfig, device: torch.device,
                       free_bytes: int | None = None, log: Callable[[str], None] = print) -> Any:
    """A ``DeviceBatches`` over ``train_set`` when ``data.on_device`` asks for one, else
    None (a DataLoader feeds the step). 'auto': on CUDA, for a cached store split that
    ``split_fits`` the device's free memory at the trial's start — so trials packed on one
    GPU (``--gpus-per-trial 0.25``) fall back to the host path, with one line, instead of
    running out of memory. ``free_bytes`` overrides the query (tests)."""
    from core.data.dataset import SliceDataset

    mode = cfg.data.on_device
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if not (isinstance(train_set, SliceDataset) and train_set.is_cached):
        if mode == "on":
            raise ConfigError("data.on_device: 'on' needs a store split loaded with data.cache: true")
        return None
    if mode == "auto":
        if free_bytes is None:
            free_bytes = int(torch.cuda.mem_get_info(device)[0])
        need = train_set.cached_bytes
        if not split_fits(need, free_bytes):
            log(f"data.on_device: the training split ({need / 2**30:.1f} GiB) would take more than "
                f"{DEVICE_SHARE:.0%} of the GPU's free {free_bytes / 2**30:.1f} GiB; batches come "
                "from the host instead")
            return None
    from core.data.device_batches import DeviceBatches

    return DeviceBatches(train_set, device)


def epoch_order(train_set: EpochDataset, cfg: ExperimentConfig, epoch: int) -> list[int]:
    """This epoch's training slices: ``epoch_indices``, with ``data.tumour_fraction`` of them
    (if > 0) drawn from slices that hold tumour (seeded, without repeats while they last)."""
    d = cfg.data
    order = epoch_indices(len(train_set), d.slices_per_epoch, cfg.train.seed, epoch)
    if d.tumour_fraction <= 0:
        return order
    tumour = list(getattr(train_set, "tumour_slices", lambda: [])())
    if not tumour:
        return order
    k = round(len(order) * d.tumour_fraction)
    g = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch + 7)
    perm = torch.randperm(len(tumour), generator=g).tolist()
    picks = [tumour[perm[i % len(tumour)]] for i in range(k)]
    mixed = picks + order[: len(order) - k]
    return [mixed[i] for i in torch.randperm(len(mixed), generator=g).tolist()]


def epoch_indices(n: int, per_epoch: int, seed: int, epoch: int) -> list[int]:
    """This epoch's slice order: a permutation of all ``n`` slices, or of a seeded subset."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return order[:per_epoch] if per_epoch and per_epoch < n else order

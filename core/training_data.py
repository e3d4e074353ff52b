"""What the trainer trains on: a map-style slice dataset whose crops follow the epoch, and
the validation volumes, read from a prepared zarr store (or given in memory by tests);
plus the store facts a checkpoint records to stand alone."""

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
                         region=d.region, seed=cfg.train.seed, cache=d.cache, fold=fold)

    def split_volumes() -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
        return iter_volumes(d.store, split, d.modalities, d.region, fold=fold)

    if d.cache:
        cached = list(split_volumes())
        return TrainData(train, lambda: cached)
    return TrainData(train, split_volumes)


def store_facts(location: str) -> dict[str, Any]:
    """What a checkpoint needs from its store to stand alone: preprocessing (so ``predict``
    reproduces the input), store id, split sizes and the evaluation window."""
    if not location:
        return {}
    from core.data.store import BratsStore
    from core.protocol import EVAL_WINDOW

    store = BratsStore(location)
    m = store.manifest
    splits = {s: len(store.case_ids(s)) for s in ("train", "val", "test")}
    return {"store_id": m.get("store_id", ""), "preprocessing": m.get("preprocessing", {}),
            "store_splits": splits, "eval_window": EVAL_WINDOW}

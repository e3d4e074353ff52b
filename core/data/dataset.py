"""Slices and volumes from a prepared store for training and evaluation.

``SliceDataset`` yields one axial slice at a time: image float32 (C, crop, crop) in [0, 1]
and mask float32 (1, crop, crop) in {0, 1}. Training takes a random crop that is a pure
function of (seed, epoch, index), so runs are exactly reproducible with any number of
DataLoader workers; evaluation takes the centre crop (the same rule ``uncrop_to_original``
uses to put predictions back). ``iter_volumes`` yields whole cases for per-volume metrics.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.brats import check_names
from core.data.preprocess import centre_offset, region_mask
from core.data.store import BratsStore
from core.errors import DataError
from core.vocabulary import REGIONS

_CACHE_WARN_BYTES = 4 << 30


def _open(store: str | os.PathLike[str] | BratsStore) -> BratsStore:
    return store if isinstance(store, BratsStore) else BratsStore(store)


def _check_crop(store: BratsStore, crop: int) -> tuple[int, int]:
    h, w = store.slice_shape()
    if crop < 1 or crop > h or crop > w:
        raise DataError(
            f"crop {crop} does not fit the stored slices of {h}x{w} (H x W) in "
            f"{store.location}; use a crop <= {min(h, w)} or prepare a larger store"
        )
    return h, w


class SliceDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """All slices of all cases of one split (empty slices included, as in the paper).

    Args:
        store: store path, fsspec URL or an open BratsStore.
        split: "train", "val" or "test" (with ``fold`` k: k-fold train/val).
        modalities: channel names in the wanted order, e.g. ("flair",) or all four.
        crop: square crop side (<= stored slice size).
        train: random crop (True) or centre crop (False).
        region: "wt", "tc" or "et".
        seed: seed of the random crops.
        cache: load the split into memory once (stored dtype, float16) -- for stores that
            fit in RAM; False reads each slice from the store (~0.3 ms a slice locally),
            which is opened lazily in each process (fork/spawn safe).
        shared: with ``cache``, map the node's one shared copy of the split
            (``core.data.shared_cache``) instead of reading a private one, where it fits.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | BratsStore,
        split: str,
        modalities: Sequence[str],
        crop: int,
        train: bool,
        region: str = "wt",
        seed: int = 0,
        cache: bool = True,
        fold: int | None = None,
        shared: bool = False,
    ) -> None:
        opened = _open(store)
        check_names("region", [region], REGIONS)
        self.channels = opened.channel_index(modalities)
        self.height, self.width = _check_crop(opened, crop)
        self.location, self.split, self.modalities = opened.location, split, tuple(modalities)
        self.crop, self.train, self.region, self.seed = int(crop), train, region, int(seed)
        self.epoch = 0
        self.case_ids = opened.case_ids(split, fold)
        counts = [opened.num_slices(c) for c in self.case_ids]
        # index i -> (position in case_ids, slice z)
        self._case = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
        self._z = (
            np.concatenate([np.arange(n) for n in counts]).astype(np.int64)
            if counts
            else np.zeros(0, np.int64)
        )
        self._releases = [opened.case_info(c)["release"] for c in self.case_ids]
        self._store: BratsStore | None = opened
        self._pid = os.getpid()
        self._images: list[np.ndarray] | None = None
        self._masks: list[np.ndarray] | None = None
        self._tumour: list[int] | None = None
        self.shared = False
        """True when the cache maps the node's shared copy (read-only pages)."""
        if cache:
            self._load_cache(opened, shared)

    def _load_cache(self, store: BratsStore, shared: bool) -> None:
        if shared:
            from core.data.shared_cache import load_split

            found = load_split(store, self.case_ids, self.modalities, self.region)
            if found is not None:
                self._images, self._masks = found
                self.shared = True
                return
        nbytes = len(self) * len(self.channels) * self.height * self.width * 2
        if nbytes > _CACHE_WARN_BYTES:
            warnings.warn(
                f"caching split {self.split!r} needs ~{nbytes / 2**30:.1f} GiB of RAM; "
                f"pass cache=False to read slices from the store instead",
                stacklevel=3,
            )
        self._images = [store.read_image(c, self.modalities, dtype=None) for c in self.case_ids]
        self._masks = [store.read_mask(c, self.region) for c in self.case_ids]

    @property
    def is_cached(self) -> bool:
        return self._images is not None

    @property
    def cached_bytes(self) -> int:
        """Bytes of the cached split (images and masks; 0 when not cached)."""
        if self._images is None or self._masks is None:
            return 0
        return sum(a.nbytes for a in self._images) + sum(m.nbytes for m in self._masks)

    def take_cache(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Hand the cached split over (images per case ``(Z, C, H, W)``, masks ``(Z, H, W)``)
        and drop this dataset's references, so the caller's copy is the only one (e.g. on a
        GPU); the tumour-slice index is kept. Items are read from the store afterwards."""
        if self._images is None or self._masks is None:
            raise RuntimeError("take_cache needs a dataset built with cache=True")
        self.tumour_slices()
        images, masks = self._images, self._masks
        self._images = self._masks = None
        return images, masks

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # each worker process opens its own handle
        return state

    def _get_store(self) -> BratsStore:
        # A forked worker must not reuse the parent's open store: reopen per process.
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = BratsStore(self.location), os.getpid()
        return self._store

    def tumour_slices(self) -> list[int]:
        """Indices of the slices whose full stored mask holds tumour (read once, cached)."""
        if self._tumour is None:
            if self._masks is not None:
                flags = np.concatenate([m.reshape(len(m), -1).any(axis=1) for m in self._masks])
            else:
                store = self._get_store()
                flags = np.concatenate([
                    store.read_mask(c, self.region).reshape(store.num_slices(c), -1).any(axis=1)
                    for c in self.case_ids]) if self.case_ids else np.zeros(0, bool)
            self._tumour = np.flatnonzero(flags).tolist()
        return self._tumour

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops of ``epoch``. Call before creating the epoch's DataLoader
        iterator (workers copy the dataset then; with persistent_workers=True they keep the
        epoch they started with)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self._case.shape[0])

    def crop_origin(self, i: int) -> tuple[int, int]:
        """(top, left) of item ``i``'s crop in the stored slice for the current epoch."""
        if not self.train:
            return centre_offset(self.height, self.crop), centre_offset(self.width, self.crop)
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        top = int(rng.integers(0, self.height - self.crop + 1))
        left = int(rng.integers(0, self.width - self.crop + 1))
        return top, left

    def _slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Full stored slice i: image (C, H, W) stored dtype, mask uint8 (H, W)."""
        k, z = int(self._case[i]), int(self._z[i])
        if self._images is not None and self._masks is not None:
            return self._images[k][z], self._masks[k][z]
        store = self._get_store()
        cid = self.case_ids[k]
        image = store.read_image(cid, self.modalities, z, dtype=None)
        mask = region_mask(store.read_labels(cid, z), self.region, self._releases[k])
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """image float32 (C, crop, crop) in [0, 1]; mask float32 (1, crop, crop) in {0, 1}."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} slices")
        i = i % len(self)
        image, mask = self._slice(i)
        top, left = self.crop_origin(i)
        rows, cols = slice(top, top + self.crop), slice(left, left + self.crop)
        # torch converts float16 -> float32 ~10x faster than numpy; copy=True so a caller
        # can never write into the cache
        img = torch.from_numpy(image)[:, rows, cols].to(torch.float32, copy=True)
        msk = torch.from_numpy(mask)[None, rows, cols].to(torch.float32, copy=True)
        return img, msk


def iter_volumes(
    store: str | os.PathLike[str] | BratsStore,
    split: str,
    modalities: Sequence[str],
    region: str = "wt",
    fold: int | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (case_id, image float32 (Z, C, H, W), mask uint8 (Z, H, W)) per case of
    ``split``: whole stored slices (scoring windows them, see ``core.protocol``)."""
    opened = _open(store)
    check_names("region", [region], REGIONS)
    opened.channel_index(modalities)
    for cid in opened.case_ids(split, fold):
        image = opened.read_image(cid, modalities)
        mask = opened.read_mask(cid, region)
        yield cid, np.ascontiguousarray(image), np.ascontiguousarray(mask)

"""One host copy of a cached training split for every trial on a node.

Each trial process used to read its own copy of the split into RAM (a BraTS-2019-sized
store is ~3 GB as float16: N trials on a node, N copies). Here the first trial that needs
a case writes it once as a ``.npy`` file under a shared-memory folder (``/dev/shm`` on
Linux), and every trial maps that file: the pages are the kernel's, shared by
all processes that map them, and a trial's crop reads them without a copy.

The folder is named by the store's content id, so a file never outlives the data it was
cut from. One trial writes at a time (a lock file in the folder; the others wait, then map
what it wrote), and a file appears under its final name only once complete (written to a
temporary name, then renamed), so a killed writer leaves nothing half-written. Where the
folder lacks room for the split, nothing is written and the caller keeps a private copy.

``SEGAN_SHARED_CACHE`` names another folder, or ``off`` to keep private copies.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.data.store import BratsStore
from core.errors import DataError

ENV = "SEGAN_SHARED_CACHE"
PREFIX = "segan-cache-"
HEADROOM = 1.25
"""Room the folder must have beyond the split's bytes (other users of shared memory)."""


def shared_root() -> Path | None:
    """The folder shared by this node's trials, or None (off, or no shared memory here);
    a folder named by ``SEGAN_SHARED_CACHE`` that cannot be written is an error."""
    named = os.environ.get(ENV, "").strip()
    if named.lower() in ("off", "0", "false", "no"):
        return None
    if named and not (Path(named).is_dir() and os.access(named, os.W_OK)):
        raise DataError(f"{ENV}={named}: not a writable folder (name one, or 'off' to give "
                        "each trial its own copy of the training split)")
    root = Path(named) if named else Path("/dev/shm")
    return root if root.is_dir() and os.access(root, os.W_OK) else None


def store_folder(store_id: str, root: Path | None = None) -> Path | None:
    root = root or shared_root()
    return None if root is None else root / f"{PREFIX}{store_id}"


def load_split(store: BratsStore, case_ids: Sequence[str], modalities: Sequence[str],
               region: str) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Shared maps of every case's image ``(Z, C, H, W)`` (stored dtype, channels in
    ``modalities`` order) and ``region`` mask ``(Z, H, W)``, written on first use; None
    when no shared folder is usable or it lacks room (the caller reads a private copy)."""
    folder = store_folder(str(store.manifest["store_id"]))
    if folder is None:
        return None
    mods = "-".join(modalities)
    wanted = [(folder / f"{c}.{mods}.npy", folder / f"{c}.{region}.mask.npy") for c in case_ids]
    missing = [c for c, (img, mask) in zip(case_ids, wanted, strict=True)
               if not (img.exists() and mask.exists())]
    if missing and not _has_room(folder.parent, store, missing, len(modalities)):
        return None
    folder.mkdir(exist_ok=True)
    if missing:
        # one writer at a time: trials that start together would otherwise each write (and
        # map) a copy of their own, and share nothing
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for case, (img, mask) in zip(case_ids, wanted, strict=True):
                if not img.exists():
                    _write(img, store.read_image(case, modalities, dtype=None))
                if not mask.exists():
                    _write(mask, store.read_mask(case, region))
        _release_heap()  # the writer's decode buffers would otherwise stay in its heap
    images, masks = [], []
    for img, mask in wanted:
        # copy-on-write maps: reads share the kernel's pages; torch accepts them as
        # writable arrays, and a write (none is made) would only touch a private page
        images.append(np.load(img, mmap_mode="c"))
        masks.append(np.load(mask, mmap_mode="c"))
    return images, masks


def _has_room(root: Path, store: BratsStore, cases: Sequence[str], channels: int) -> bool:
    h, w = store.slice_shape()
    itemsize = np.dtype(store.manifest["layout"]["image_dtype"]).itemsize
    need = sum(store.num_slices(c) for c in cases) * h * w * (channels * itemsize + 1)
    return shutil.disk_usage(root).free > need * HEADROOM


def _write(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _release_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps large freed buffers otherwise)."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def remove(store_id: str) -> None:
    """Drop this node's shared copy of a store (trials that still map it keep their pages
    until they end)."""
    folder = store_folder(store_id)
    if folder is not None and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)

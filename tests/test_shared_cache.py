"""The trials of a node share one host copy of a cached training split (files mapped from
shared memory), read the same slices as a private copy, and fall back to one when the
shared folder lacks room or is switched off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import shared_cache
from core.data.dataset import SliceDataset
from core.errors import DataError

MODS = ("flair", "t1")
REPO = Path(__file__).resolve().parents[1]


def _dataset(store: Path, shared: bool, modalities=MODS) -> SliceDataset:
    return SliceDataset(store, "train", modalities, 48, train=True, seed=3, shared=shared)


def test_shared_split_reads_what_a_private_copy_reads(synthetic_store, tmp_path, monkeypatch):
    monkeypatch.setenv(shared_cache.ENV, str(tmp_path))
    shared, private = _dataset(synthetic_store, True), _dataset(synthetic_store, False)
    assert shared.shared and not private.shared
    for i in (0, 7, len(shared) // 2, len(shared) - 1):
        for a, b in zip(shared[i], private[i], strict=True):
            assert torch.equal(a, b)
    folder = next(tmp_path.glob(f"{shared_cache.PREFIX}*"))
    files = sorted(folder.glob("*.npy"))
    assert len(files) == 2 * len(shared.case_ids)  # an image and a mask per case
    assert all(isinstance(a, np.memmap) for a in shared._images or [])
    assert shared.cached_bytes == private.cached_bytes


def test_a_second_process_maps_the_files_the_first_wrote(synthetic_store, tmp_path, monkeypatch):
    monkeypatch.setenv(shared_cache.ENV, str(tmp_path))
    first = _dataset(synthetic_store, True)
    folder = next(tmp_path.glob(f"{shared_cache.PREFIX}*"))
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.npy")}
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from core.data.dataset import SliceDataset\n"
            f"ds = SliceDataset({str(synthetic_store)!r}, 'train', {MODS!r}, 48, train=True, "
            "shared=True)\n"
            "print(ds.shared, ds._images[0].filename)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"SEGAN_SHARED_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    flag, mapped = out.stdout.split()
    assert flag == "True" and Path(mapped).parent == folder
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.npy")}
    assert after == stamps  # mapped, not written again
    other = _dataset(synthetic_store, True, modalities=("t1", "flair"))  # another channel order
    assert torch.equal(other[5][0], first[5][0].flip(0))


def test_no_room_or_switched_off_keeps_a_private_copy(synthetic_store, tmp_path, monkeypatch):
    monkeypatch.setenv(shared_cache.ENV, str(tmp_path))
    monkeypatch.setattr(shared_cache, "HEADROOM", 1e12)  # the split "needs" more than the disk
    ds = _dataset(synthetic_store, True)
    assert not ds.shared and ds.is_cached and not list(tmp_path.iterdir())
    monkeypatch.setattr(shared_cache, "HEADROOM", 1.25)
    monkeypatch.setenv(shared_cache.ENV, "off")
    assert not _dataset(synthetic_store, True).shared
    monkeypatch.setenv(shared_cache.ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match="SEGAN_SHARED_CACHE=.*missing: not a writable folder"):
        _dataset(synthetic_store, True)


def test_remove_drops_the_node_copy_of_a_store(synthetic_store, tmp_path, monkeypatch):
    monkeypatch.setenv(shared_cache.ENV, str(tmp_path))
    ds = _dataset(synthetic_store, True)
    folder = next(tmp_path.glob(f"{shared_cache.PREFIX}*"))
    shared_cache.remove(folder.name[len(shared_cache.PREFIX):])
    assert not folder.exists()
    assert ds[3][0].shape == (2, 48, 48)  # a live map keeps its pages


def test_a_trial_waits_for_the_one_writing_the_copy(synthetic_store, tmp_path):
    """Trials that start together must not each write (and map) a copy of their own: while
    another holds the folder's lock a trial writes nothing, then maps what is there."""
    import fcntl
    import time

    from core.data.store import BratsStore

    folder = tmp_path / f"{shared_cache.PREFIX}{BratsStore(synthetic_store).manifest['store_id']}"
    folder.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from core.data.dataset import SliceDataset\n"
            f"ds = SliceDataset({str(synthetic_store)!r}, 'train', {MODS!r}, 48, train=True, "
            "shared=True)\n"
            "print(ds.shared)")
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another trial" is writing
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                env={"SEGAN_SHARED_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
        time.sleep(8.0)  # ample for the process to start and reach the cache
        assert proc.poll() is None and not list(folder.glob("*.npy"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == "True"
    assert len(list(folder.glob("*.npy"))) == 2 * len(_dataset(synthetic_store, False).case_ids)

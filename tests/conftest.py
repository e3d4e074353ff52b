"""Shared pytest fixtures (append new fixtures; keep each small)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Trials share cached splits through files in /dev/shm (core/data/shared_cache.py): the
# suite, its subprocesses and Ray workers use a folder of their own, removed at the end.
_SHARED_CACHE = tempfile.mkdtemp(prefix="segan-tests-shm-",
                                 dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
os.environ["SEGAN_SHARED_CACHE"] = _SHARED_CACHE
# The per-user cache (study/tracking_store.py: the empty MLflow store) likewise.
_USER_CACHE = tempfile.mkdtemp(prefix="segan-tests-cache-")
os.environ["SEGAN_CACHE_DIR"] = _USER_CACHE


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SHARED_CACHE, ignore_errors=True)
    shutil.rmtree(_USER_CACHE, ignore_errors=True)

# ---------------------------------------------------------------- data fixtures
# Real BraTS samples live beside the repository (../shared/data/brats-samples), never in it.
BRATS_SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats-samples"


@pytest.fixture(scope="session")
def brats_samples() -> Path:
    """Folder of the three real BraTS sample cases (2018 and 2023 naming); skip if absent."""
    if not BRATS_SAMPLES.is_dir():
        pytest.skip(f"real BraTS samples not found at {BRATS_SAMPLES}")
    return BRATS_SAMPLES


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic store (24 cases, crop 80x80x32, 16/4/4 split), built once."""
    from core.data.synthetic import ensure_synthetic_store

    return ensure_synthetic_store(tmp_path_factory.mktemp("synthetic-data"))


@pytest.fixture(scope="session")
def synthetic_nifti(synthetic_store: Path) -> Path:
    """Root of the synthetic cases as NIfTI files (BraTS 2018 layout) behind synthetic_store."""
    from core.data.synthetic import synthetic_raw_dir

    return synthetic_raw_dir(synthetic_store.parent)


# ---------------------------------------------------------------- study fixtures
@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole suite (starting Ray costs seconds and ~0.6 GB)."""
    import ray

    from study.ray_cluster import LOCAL_SYSTEM_CONFIG

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="ERROR", _system_config=LOCAL_SYSTEM_CONFIG)
    yield ray
    ray.shutdown()


BRATS_DEV = BRATS_SAMPLES.parent / "brats-dev"


@pytest.fixture(scope="session")
def brats_dev() -> Path:
    """Sixteen more real BraTS 2018 cases (../shared/data/brats-dev); skip only if absent."""
    if not BRATS_DEV.is_dir():
        pytest.skip(f"real BraTS dev cases not found at {BRATS_DEV}")
    return BRATS_DEV

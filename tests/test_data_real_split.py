"""`prepare` on the 16 real BraTS 2018 dev cases with the defaults: a held-out test split,
patients recorded, every split named in the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data.prepare import DEFAULT_TEST_FRACTION, prepare
from core.data.preprocess import PreprocessParams
from core.data.store import BratsStore


@pytest.fixture(scope="module")
def dev_store(brats_dev: Path, tmp_path_factory: pytest.TempPathFactory) -> BratsStore:
    out = tmp_path_factory.mktemp("dev") / "dev.zarr"
    # a small crop keeps this fast; the split does not depend on it
    prepare(brats_dev, out, PreprocessParams(crop=(48, 48, 16)), workers=2, log=lambda _: None)
    return BratsStore(out)


def test_default_prepare_holds_out_a_test_split(dev_store: BratsStore) -> None:
    m = dev_store.manifest
    n = len(m["cases"])
    assert n == 16 and m["splits"]["test_fraction"] == DEFAULT_TEST_FRACTION
    counts = {s: len(dev_store.case_ids(s)) for s in ("train", "val", "test")}
    assert counts["test"] == round(n * DEFAULT_TEST_FRACTION) == 2
    assert counts["val"] >= 1 and sum(counts.values()) == n
    assert m["splits"]["group"] == "patient"
    assert all(r["patient"] == r["case_id"] for r in m["cases"])  # 2018 names: one scan each

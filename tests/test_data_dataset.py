"""SliceDataset and iter_volumes on the synthetic store: shapes, determinism, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.data.dataset import SliceDataset, iter_volumes
from core.data.store import BratsStore
from core.errors import DataError


def test_length_shapes_and_ranges(synthetic_store: Path) -> None:
    store = BratsStore(synthetic_store)
    ds = SliceDataset(synthetic_store, "train", ["flair", "t1c"], crop=64, train=True)
    assert len(ds) == sum(store.num_slices(c) for c in store.case_ids("train")) == 16 * 32
    image, mask = ds[7]
    assert image.shape == (2, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert len(SliceDataset(synthetic_store, "test", ["t2"], 64, train=False)) == 4 * 32


def test_random_crops_are_a_function_of_seed_epoch_index(synthetic_store: Path) -> None:
    a = SliceDataset(synthetic_store, "train", ["flair"], crop=48, train=True, seed=5)
    b = SliceDataset(synthetic_store, "train", ["flair"], crop=48, train=True, seed=5, cache=False)
    idx = [0, 33, 200, 511]
    first = [a[i][0] for i in idx]
    for i, img in zip(idx, first, strict=True):
        assert torch.equal(b[i][0], img)  # same crop with or without the cache
    origins = [a.crop_origin(i) for i in idx]
    a.set_epoch(1)
    assert [a.crop_origin(i) for i in idx] != origins
    a.set_epoch(0)
    assert [a.crop_origin(i) for i in idx] == origins
    c = SliceDataset(synthetic_store, "train", ["flair"], crop=48, train=True, seed=6)
    assert [c.crop_origin(i) for i in idx] != origins


def test_eval_crop_is_centred_and_iter_volumes_gives_whole_slices(synthetic_store: Path) -> None:
    ds = SliceDataset(synthetic_store, "val", ["t2", "flair"], crop=64, train=False)
    assert {ds.crop_origin(i) for i in (0, 5, 100)} == {(8, 8)}  # (80 - 64) // 2
    volumes = list(iter_volumes(synthetic_store, "val", ["t2", "flair"]))
    assert [v[0] for v in volumes] == ds.case_ids
    cid, image, mask = volumes[1]
    assert image.shape == (32, 2, 80, 80) and image.dtype == np.float32
    assert mask.shape == (32, 80, 80) and mask.dtype == np.uint8
    item_image, item_mask = ds[32 + 10]  # slice 10 of the second val case, centre 64²
    np.testing.assert_array_equal(item_image.numpy(), image[10, :, 8:72, 8:72])
    np.testing.assert_array_equal(item_mask.numpy()[0], mask[10, 8:72, 8:72])
    full = BratsStore(synthetic_store).read_image(cid, ["flair"])
    np.testing.assert_array_equal(image[:, 1], full[:, 0])


def test_dataloader_two_workers_uncached(synthetic_store: Path) -> None:
    ds = SliceDataset(synthetic_store, "val", ["flair", "t1", "t1c", "t2"], 64, True, cache=False)
    ds.set_epoch(3)
    loader = DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b[0]) for b in batches) == len(ds)
    images = torch.cat([b[0] for b in batches])
    cached = SliceDataset(synthetic_store, "val", ["flair", "t1", "t1c", "t2"], 64, True)
    cached.set_epoch(3)
    for i in (0, 17, len(ds) - 1):
        assert torch.equal(images[i], cached[i][0])


def test_bad_arguments(synthetic_store: Path) -> None:
    with pytest.raises(ValueError, match="unknown modality 'FLAIR'; valid: flair, t1, t1c, t2"):
        SliceDataset(synthetic_store, "train", ["FLAIR"], 64, True)
    with pytest.raises(ValueError, match="unknown region 'whole'; valid: wt, tc, et"):
        SliceDataset(synthetic_store, "train", ["flair"], 64, True, region="whole")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        SliceDataset(synthetic_store, "validation", ["flair"], 64, True)
    with pytest.raises(DataError, match="crop 160 does not fit the stored slices of 80x80"):
        SliceDataset(synthetic_store, "train", ["flair"], 160, True)
    with pytest.raises(DataError, match="no store"):
        SliceDataset(synthetic_store.parent / "nothing.zarr", "train", ["flair"], 64, True)


def test_regions_on_synthetic(synthetic_store: Path) -> None:
    wt = SliceDataset(synthetic_store, "train", ["t1c"], 80, False, region="wt")
    et = SliceDataset(synthetic_store, "train", ["t1c"], 80, False, region="et")
    i = int(np.argmax([wt[k][1].sum().item() for k in range(0, len(wt), 7)])) * 7
    assert 0 < et[i][1].sum() < wt[i][1].sum()


def test_fold_selects_validation_cases(tmp_path: Path, synthetic_nifti: Path) -> None:
    """data.fold k: fold k validates, the other non-test cases train; test is untouched."""
    from core.config import load_config
    from core.data.prepare import prepare
    from core.training_data import store_data

    out = tmp_path / "folds.zarr"
    prepare(synthetic_nifti, out, folds=3, test_fraction=0.15, log=lambda _: None)
    store = BratsStore(out)
    seen_val: set[str] = set()
    for k in range(3):
        cfg = load_config("smoke", overrides={"data.store": str(out), "data.fold": k})
        data = store_data(cfg)
        val_ids = {cid for cid, _, _ in data.val()}
        assert val_ids == set(store.case_ids("val", fold=k))
        assert not val_ids & set(data.train.case_ids) and not val_ids & set(store.case_ids("test"))
        seen_val |= val_ids
    assert seen_val | set(store.case_ids("test")) == set(store.case_ids())


def test_tumour_fraction_draws_that_share_from_tumour_slices(synthetic_store: Path) -> None:
    from core.config import load_config
    from core.training_data import epoch_order

    ds = SliceDataset(synthetic_store, "train", ["flair"], 64, True)
    tumour = set(ds.tumour_slices())
    assert tumour == {i for i in range(len(ds)) if ds._slice(i)[1].any()}
    assert 0 < len(tumour) < len(ds)
    for fraction in (0.0, 0.5, 1.0):
        cfg = load_config("demo", overrides={"data.tumour_fraction": fraction})
        order = epoch_order(ds, cfg, epoch=3)
        assert len(order) == cfg.data.slices_per_epoch
        share = sum(i in tumour for i in order) / len(order)
        if fraction == 1.0:
            assert share == 1.0
        else:  # the uniform part brings tumour slices at their natural rate too
            natural = len(tumour) / len(ds)
            assert share >= fraction + (1 - fraction) * natural - 0.12
        assert order == epoch_order(ds, cfg, epoch=3)  # seeded

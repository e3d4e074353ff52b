"""prepare -> store -> read back, against independent nibabel values; CLI; no-op reruns."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.data import commands
from core.data.brats import find_case_files
from core.data.prepare import prepare
from core.data.preprocess import PreprocessParams, preprocess_case
from core.data.store import BratsStore
from core.errors import DataError
from tests.test_data_bad_input import make_case

CROP = (96, 96, 24)
IDS = ["BraTS-GLI-00000-000", "Brats18_2013_11_1", "Brats18_CBICA_ABM_1"]


@pytest.fixture(scope="module")
def real_store(brats_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "real.zarr"
    prepare(brats_samples, out, PreprocessParams(crop=CROP), workers=2, log=lambda _: None)
    return out


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _case_dir(samples: Path, case_id: str) -> Path:
    return next(p for p in samples.glob(f"*/{case_id}") if p.is_dir())


def test_manifest_matches_sources(real_store: Path, brats_samples: Path) -> None:
    store = BratsStore(real_store)
    m = store.manifest
    assert store.case_ids() == IDS
    assert m["preprocessing"] == {"crop": list(CROP), "low_pct": 2.0, "high_pct": 98.0}
    assert m["code_version"] and len(m["store_id"]) == 16
    assert store.modalities == ("flair", "t1", "t1c", "t2")
    # the default holds out a test patient; training and selection keep one each
    assert {s: len(store.case_ids(s)) for s in ("train", "val", "test")} == \
        {"train": 1, "val": 1, "test": 1}
    assert sorted(store.case_ids("train") + store.case_ids("val") + store.case_ids("test")) == IDS
    assert [row["patient"] for row in m["cases"]] == ["BraTS-GLI-00000", *IDS[1:]]
    x0, y0, z0 = (240 - 96) // 2, (240 - 96) // 2, (155 - 24) // 2
    for cid in IDS:
        row = store.case_info(cid)
        seg_path = next(_case_dir(brats_samples, cid).glob("*seg.nii.gz"))
        seg = np.rint(np.asarray(nib.load(seg_path).get_fdata()))
        inside = seg[x0 : x0 + 96, y0 : y0 + 96, z0 : z0 + 24]
        assert row["wt_voxels"] == int((inside > 0).sum()) > 0
        assert row["shape"] == [24, 4, 96, 96] and row["num_slices"] == 24
        assert row["sources"]["seg"]["sha256"] == hashlib.sha256(seg_path.read_bytes()).hexdigest()
        assert row["release"] == ("2023" if cid.startswith("BraTS-") else "2018")
        assert int(store.read_mask(cid).sum()) == row["wt_voxels"]


def test_read_back_equals_preprocessing(real_store: Path, brats_samples: Path) -> None:
    store = BratsStore(real_store)
    cid = "Brats18_CBICA_ABM_1"
    pre = preprocess_case(find_case_files(_case_dir(brats_samples, cid)), PreprocessParams(CROP))
    image = store.read_image(cid, store.modalities)
    assert image.dtype == np.float32 and image.shape == (24, 4, 96, 96)
    assert np.abs(image - pre.image).max() < 1e-3  # float16 storage of [0, 1] values
    swapped = store.read_image(cid, ["t2", "flair"])
    np.testing.assert_array_equal(swapped, image[:, [3, 0]])
    one = store.read_image(cid, ["t1c"], z=5)
    assert one.shape == (1, 96, 96)
    np.testing.assert_array_equal(one[0], image[5, 2])
    np.testing.assert_array_equal(store.read_labels(cid), pre.labels)
    assert store.read_mask(cid, "wt", z=slice(2, 4)).shape == (2, 96, 96)


def test_fast_slice_reads_equal_zarr_reads(real_store: Path) -> None:
    fast, slow = BratsStore(real_store), BratsStore(real_store)
    slow._local = None  # force zarr's own read path
    for cid in IDS:
        empty = int(np.argmin(slow.read_mask(cid).sum(axis=(1, 2))))  # no chunk file on disk
        for z in (0, 7, empty, -1):
            np.testing.assert_array_equal(
                fast.read_image(cid, ["t1", "flair"], z), slow.read_image(cid, ["t1", "flair"], z)
            )
            np.testing.assert_array_equal(fast.read_labels(cid, z), slow.read_labels(cid, z))


def test_regions_per_release(real_store: Path) -> None:
    store = BratsStore(real_store)
    labels = store.read_labels("BraTS-GLI-00000-000")
    np.testing.assert_array_equal(store.read_mask("BraTS-GLI-00000-000", "et"), labels == 3)
    np.testing.assert_array_equal(
        store.read_mask("Brats18_2013_11_1", "tc"),
        np.isin(store.read_labels("Brats18_2013_11_1"), [1, 4]),
    )


def test_fsspec_url_and_errors(real_store: Path, tmp_path: Path) -> None:
    store = BratsStore(real_store.as_uri())  # file:// URL through fsspec
    assert store.case_ids() == IDS
    assert store.read_image(IDS[0], ["flair"], z=0).shape == (1, 96, 96)
    with pytest.raises(DataError, match="no store at"):
        BratsStore(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="unknown split 'training'; valid: train, val, test"):
        store.case_ids("training")
    with pytest.raises(DataError, match="unknown modality 'dwi'"):
        store.read_image(IDS[0], ["dwi"])
    with pytest.raises(DataError, match="unknown case id 'nope'"):
        store.case_info("nope")


def test_rerun_is_noop_force_rebuilds_same_id(real_store: Path, brats_samples: Path) -> None:
    before = BratsStore(real_store).manifest
    stamp = (real_store / "zarr.json").stat().st_mtime_ns
    lines: list[str] = []
    result = prepare(brats_samples, real_store, PreprocessParams(crop=CROP), log=lines.append)
    assert result.up_to_date and "nothing to do" in lines[-1]
    assert (real_store / "zarr.json").stat().st_mtime_ns == stamp
    result = prepare(
        brats_samples, real_store, PreprocessParams(crop=CROP), force=True, log=lines.append
    )
    assert result.written == 3 and not result.up_to_date
    assert BratsStore(real_store).manifest["store_id"] == before["store_id"]


def test_cli_prepare_inspect_folds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "brats"
    for i in range(6):
        make_case(root, f"Brats18_TCIA0{i % 2}_00{i}_1", grade="HGG" if i % 3 else "LGG")
    out = tmp_path / "tiny.zarr"
    argv = ["prepare", "--brats-root", str(root), "--out", str(out), "--crop", "12,12,6"]
    assert _cli([*argv, "--folds", "3", "--test-fraction", "0.2", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "[6/6]" in text and "wrote 6 cases" in text
    store = BratsStore(out)
    assert len(store.case_ids("test")) == 1
    for k in range(3):
        val, train = store.case_ids("val", fold=k), store.case_ids("train", fold=k)
        assert len(val) + len(train) == 5 and not set(val) & set(train)
    assert _cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Brats18_TCIA00_000_1" in text and "folds 3" in text and "(6, 4, 12, 12)" in text
    assert _cli(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == store.manifest
    with pytest.raises(SystemExit):
        _cli([*argv[:-1], "12,12"])
    assert _cli([*argv, "--folds", "3", "--test-fraction", "0.2", "--workers", "1"]) == 0
    assert "nothing to do" in capsys.readouterr().out

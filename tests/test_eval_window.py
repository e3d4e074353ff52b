"""The evaluation window is the protocol's, and prediction covers the whole stored slice.

On a real BraTS case prepared with the default crop (180×180×128): a tumour that lies
outside the central 64² (the old CPU budget's window) is predicted by ``predict`` in the
original grid and counted by the study's scoring (centre 160² of 180²).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import load_config
from core.data.brats import find_case_files, load_volume
from core.data.dataset import iter_volumes
from core.data.prepare import prepare
from core.data.store import BratsStore
from core.evaluation.cases import predict_case
from core.evaluation.volumes import evaluate_volumes
from core.model import build_networks
from core.protocol import EVAL_WINDOW, window_slices

CASE = "Brats18_CBICA_ABM_1"


def test_window_is_centred_and_never_larger_than_the_slice() -> None:
    assert window_slices(180, 180) == (slice(10, 170), slice(10, 170))
    assert window_slices(80, 72) == (slice(0, 80), slice(0, 72))
    assert window_slices(200, 161) == (slice(20, 180), slice(0, 160))
    assert EVAL_WINDOW == 160


@pytest.fixture(scope="module")
def real_store(brats_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("window") / "real.zarr"
    prepare(brats_samples / "brats2018", out, test_fraction=0.0, val_fraction=0.5,
            log=lambda _: None)
    return out


def _everywhere_model(tmp: Path, store: Path) -> dict[str, Any]:
    """A real segmentor whose output bias makes it say "tumour" at every voxel."""
    cfg = load_config("smoke", overrides={"data.modalities": ["flair"]})
    nets = build_networks(1, cfg.model)
    with torch.no_grad():
        nets.segmentor.out.bias.fill_(50.0)
        nets.segmentor.out.weight.zero_()
    manifest = BratsStore(store).manifest
    save_checkpoint(tmp / "all.pt", {
        "config": cfg.to_dict(), "in_channels": 1, "modalities": ["flair"],
        "preprocessing": manifest["preprocessing"], "segmentor": nets.segmentor.state_dict(),
        "critic": nets.critic.state_dict(), "epoch": 0, "step": 0})
    return load_checkpoint(tmp / "all.pt")


def test_off_centre_tumour_is_predicted_in_the_original_grid(
        real_store: Path, brats_samples: Path, tmp_path: Path) -> None:
    state = _everywhere_model(tmp_path, real_store)
    case = find_case_files(brats_samples / "brats2018" / CASE)
    assert case.label is not None
    truth = load_volume(case.label)[0] > 0
    mask, _, _, _ = predict_case(state, brats_samples / "brats2018" / CASE)
    # the prepared crop 180×180×128 of 240×240×155 is x, y in [30, 210), z in [13, 141)
    assert mask[30:210, 30:210, 13:141].all() and mask.sum() == 180 * 180 * 128
    central = np.zeros_like(truth)
    central[88:152, 88:152, :] = True  # the old 64² window
    off_centre = truth & ~central
    assert off_centre.sum() > 1000  # this real tumour reaches outside the central 64²
    assert mask[off_centre].mean() > 0.99


def test_study_scoring_counts_tumour_outside_the_central_64(real_store: Path,
                                                            tmp_path: Path) -> None:
    state = _everywhere_model(tmp_path, real_store)
    from core.checkpoint import build_segmentor

    segmentor, _ = build_segmentor(state)
    volumes = [v for v in iter_volumes(real_store, "train", ["flair"]) if v[0] == CASE]
    volumes += [v for v in iter_volumes(real_store, "val", ["flair"]) if v[0] == CASE]
    (cid, image, truth), = volumes
    assert image.shape[2:] == (180, 180)
    (result,) = evaluate_volumes(segmentor, [(cid, image, truth)])
    rows, cols = window_slices(180, 180)
    in_window = int(truth[:, rows, cols].sum())
    in_central_64 = int(truth[:, 58:122, 58:122].sum())
    assert result.counts.tp + result.counts.fn == in_window > in_central_64
    assert result.counts.tp == in_window  # every tumour voxel of the window predicted
    assert result.counts.tp + result.counts.fp + result.counts.fn + result.counts.tn == 128 * 160 * 160

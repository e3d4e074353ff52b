"""Freezing strategies: frozen parameters and BN statistics stay bit-identical."""

from __future__ import annotations

import pytest
import torch

from core.config import load_config
from core.freezing import STRATEGIES
from core.trainer import fit
from tests.toy_data import phantom_data

TRANSFER_STRATEGIES = [s for s in STRATEGIES if s != "scratch"]


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    cfg = load_config("smoke", overrides={"data.modalities": ["flair"], "train.max_epochs": 1})
    return fit(cfg, tmp_path_factory.mktemp("src"), data_source=phantom_data()).best_path


@pytest.mark.parametrize("name", TRANSFER_STRATEGIES)
def test_frozen_groups_do_not_change_and_trainable_ones_do(name, source_checkpoint, tmp_path):
    strategy = STRATEGIES[name]
    cfg = load_config("smoke", overrides={
        "data.modalities": ["flair"], "train.max_epochs": 2,
        "transfer.source": str(source_checkpoint), "transfer.freeze": name,
        "train.bn_recalibration": 16,  # re-averaging BN statistics must spare frozen layers
    })
    src = torch.load(source_checkpoint, weights_only=True)
    result = fit(cfg, tmp_path, data_source=phantom_data(seed=5))
    out = torch.load(result.last_path, weights_only=True)
    changed, frozen = [], []
    for net in ("segmentor", "critic"):
        for key, before in src[net].items():
            if key.endswith("num_batches_tracked"):
                continue
            group = f"{net}.{key.split('.')[0]}"
            same = torch.equal(before, out[net][key])
            if group in strategy.trainable:
                changed.append((key, not same))
            else:
                frozen.append((key, same))
    assert frozen or name == "full"
    assert all(same for _, same in frozen), [k for k, s in frozen if not s]
    # every trainable weight (incl. BN running stats) moved
    assert all(moved for _, moved in changed), [k for k, m in changed if not m]


def test_scratch_starts_fresh_and_transfers_start_from_the_source(source_checkpoint, tmp_path):
    from core.checkpoint import load_checkpoint, weights_digest

    src = load_checkpoint(source_checkpoint)
    source_digest = weights_digest(src["segmentor"], src["critic"])
    for name, from_source in (("scratch", False), ("full", True), ("s_din", True)):
        cfg = load_config("smoke", overrides={
            "data.modalities": ["flair"], "train.max_epochs": 1,
            "transfer.source": str(source_checkpoint), "transfer.freeze": name})
        result = fit(cfg, tmp_path / name, data_source=phantom_data(seed=5))
        assert (result.init_digest == source_digest) == from_source, name

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


def test_scratch_ignores_sources_and_every_strategy_is_described():
    assert not STRATEGIES["scratch"].loads_source
    for s in STRATEGIES.values():
        assert s.description
    assert {"scratch", "full", "s_din", "s_only", "decoder_only"} <= set(STRATEGIES)

"""Averaged weights and BatchNorm statistics: hand-computed values, resume, best.pt."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.averaging import WeightAverage, recalibrate_batchnorm
from core.checkpoint import load_checkpoint
from core.freezing import get_strategy
from core.trainer import fit
from tests.test_trainer import tiny_cfg
from tests.toy_data import phantom_data


def test_moving_average_follows_the_formula():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    avg = WeightAverage(net, decay=0.9)
    for value in (2.0, 4.0):
        with torch.no_grad():
            net.weight.fill_(value)
        avg.update(net)
    # 0.9·(0.9·1 + 0.1·2) + 0.1·4 = 0.9·1.1 + 0.4 = 1.39
    assert avg.model.weight.item() == pytest.approx(1.39)
    assert not avg.model.weight.requires_grad
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, decay=1.0)


class _Segmentor(nn.Module):
    """A BatchNorm under the segmentor's group name, so strategies apply to it."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.BatchNorm2d(1, momentum=0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc1(x)


def test_recalibration_is_the_plain_mean_of_batch_statistics_and_spares_frozen_layers():
    batches = [torch.full((2, 1, 2, 2), 1.0), torch.full((2, 1, 2, 2), 3.0),
               torch.tensor([0.0, 8.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()]
    seg = _Segmentor()
    recalibrate_batchnorm(seg, nn.Identity(), get_strategy("scratch"), batches)
    # batch means 1, 3, 4 → 8/3; unbiased batch variances 0, 0, 64·8/7 (values 0×4, 8×4)
    assert seg.enc1.running_mean.item() == pytest.approx(8 / 3)
    assert seg.enc1.running_var.item() == pytest.approx((0 + 0 + 16 * 8 / 7) / 3)
    assert seg.enc1.momentum == 0.9  # restored for training

    frozen = _Segmentor()
    recalibrate_batchnorm(frozen, nn.Identity(), get_strategy("decoder_only"), batches)
    assert frozen.enc1.running_mean.item() == 0.0  # encoder frozen: statistics untouched


def test_averaged_weights_are_what_best_pt_holds_and_resume_is_exact(tmp_path):
    over = {"train.ema_decay": 0.9, "train.bn_recalibration": 16, "train.postprocess": "auto"}
    cfg1 = tiny_cfg(**over, **{"train.max_epochs": 1})
    one = fit(cfg1, tmp_path / "one", data_source=phantom_data())
    best, last = load_checkpoint(one.best_path), load_checkpoint(one.last_path)
    assert one.best_epoch == 1
    weights = [k for k in last["segmentor"] if "running" not in k and "num_batches" not in k]
    for k in weights:  # best.pt = the average; last.pt keeps raw weights for training on
        assert torch.equal(best["segmentor"][k], last["segmentor_average"][k]), k
    assert any(not torch.equal(best["segmentor"][k], last["segmentor"][k]) for k in weights)
    assert "segmentor_average" not in best
    # the post-processing chosen on validation travels with the model
    chosen = best["postprocess"]
    assert best["metrics"]["val/dice"] == best["metrics"][f"val/dice_{chosen}"]

    cfg3 = tiny_cfg(**over, **{"train.max_epochs": 3})
    full = fit(cfg3, tmp_path / "full", data_source=phantom_data())
    resumed = fit(cfg3, tmp_path / "one", data_source=phantom_data())
    a, b = load_checkpoint(full.last_path), load_checkpoint(resumed.last_path)
    for k in a["segmentor_average"]:
        assert torch.equal(a["segmentor_average"][k], b["segmentor_average"][k]), k
    assert [h["val/dice"] for h in a["history"]] == [h["val/dice"] for h in b["history"]]

"""Losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from core.losses import dice_loss, multiscale_l1


def test_dice_loss_by_hand():
    pred = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])   # (1, 1, 2, 2)
    true = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # 2Σpg = 2·1.5 = 3; Σp² + Σg² = 1.25 + 2 = 3.25
    assert dice_loss(pred, true, eps=0).item() == pytest.approx(1 - 3 / 3.25)


def test_dice_loss_is_per_sample_then_averaged():
    pred = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    true = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    # sample 0: loss 0; sample 1: 1 - eps/(2+eps) ≈ 1 → mean ≈ 0.5 (a pooled dice would give 1 - 2/4)
    assert dice_loss(pred, true, eps=1e-6).item() == pytest.approx(0.5, abs=1e-5)


def test_dice_loss_of_two_empty_masks_is_zero():
    z = torch.zeros(1, 1, 4, 4)
    assert dice_loss(z, z).item() == pytest.approx(0.0)


def test_multiscale_l1_modes_by_hand():
    a = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    b = [torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 3.0)]
    # per layer: mean(1,1,1,1)=1 and 3 → (1 + 3) / 2 = 2 ; global: (4·1 + 3) / 5 = 1.4
    assert multiscale_l1(a, b, "per_layer").item() == pytest.approx(2.0)
    assert multiscale_l1(a, b, "global").item() == pytest.approx(1.4)
    with pytest.raises(ValueError, match="unknown l1 mode"):
        multiscale_l1(a, b, "median")

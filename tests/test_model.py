"""Networks: the reference parameter counts, shapes, width multiplier, init."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from core.model import build_networks, count_parameters


@pytest.mark.parametrize(("bias", "seg", "critic"), [(False, 4_308_225, 661_312), (True, 4_309_569, 661_696)])
def test_reference_parameter_counts(bias, seg, critic):
    nets = build_networks(4, ModelConfig(conv_bias=bias))
    assert count_parameters(nets.segmentor) == seg
    assert count_parameters(nets.critic) == critic


def test_multiply_critic_has_one_channel_fewer():
    cat = build_networks(4, ModelConfig(critic_input="concat")).critic
    mul = build_networks(4, ModelConfig(critic_input="multiply")).critic
    assert count_parameters(cat) - count_parameters(mul) == 64 * 16  # one input channel of block1


@pytest.mark.parametrize("channels", [1, 4])
def test_shapes_and_ranges(channels):
    torch.manual_seed(channels)
    nets = build_networks(channels, ModelConfig(width=0.125))
    x = torch.rand(3, channels, 48, 64)
    y = nets.segmentor(x)
    assert y.shape == (3, 1, 48, 64)
    assert y.min().item() >= 0 and y.max().item() <= 1  # sigmoid output (float32 may round to 1)
    feats = nets.critic(x, y)
    assert [f.shape[1] for f in feats] == [channels + 1, 8, 16, 32]
    assert feats[-1].shape[-2:] == (6, 8)


def test_input_size_not_divisible_by_16_is_rejected():
    nets = build_networks(1, ModelConfig(width=0.125))
    with pytest.raises(ValueError, match="divisible by 16"):
        nets.segmentor(torch.rand(1, 1, 40, 40))


def test_init_matches_reference_std():
    torch.manual_seed(0)
    seg = build_networks(4, ModelConfig()).segmentor
    w = seg.enc4.conv.weight  # 4x4 kernel, 512 outputs: std sqrt(2/(16·512))
    assert w.std().item() == pytest.approx((2 / (16 * 512)) ** 0.5, rel=0.02)

"""Test-time augmentation: the mirrored view is aligned with the original one whatever the
padding, averaged as stated, and configured by one checked value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.config import TrainConfig
from core.errors import ConfigError
from core.evaluation.volumes import predict_volume


class FirstChannel(nn.Module):
    """A mirror-equivariant "segmentor": the first input channel as probability."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class ShiftRight(nn.Module):
    """A segmentor that is not mirror-equivariant: the first channel moved one column right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x[:, :1], shifts=1, dims=-1)


def _volume(width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((3, 2, 20, width), dtype=np.float32)  # (Z, C, H, W), W not /16


@pytest.mark.parametrize("width", [20, 21, 32])
def test_flip_keeps_the_views_aligned_through_the_padding(width):
    image = _volume(width)
    out = predict_volume(FirstChannel(), image, tta="flip")
    np.testing.assert_allclose(out, image[:, 0], atol=1e-6)  # an equivariant model: unchanged


def test_flip_averages_the_mirrored_prediction_mirrored_back():
    image = np.zeros((1, 1, 16, 16), np.float32)
    image[0, 0, 5, 8] = 1.0
    plain = predict_volume(ShiftRight(), image)
    flipped = predict_volume(ShiftRight(), image, tta="flip")
    assert plain[0, 5, 9] == 1.0 and plain.sum() == 1.0
    # the mirrored view shifts left once mirrored back: half a voxel on each side
    assert flipped[0, 5, 9] == 0.5 and flipped[0, 5, 7] == 0.5 and flipped.sum() == 1.0


def test_tta_is_a_checked_config_value():
    assert TrainConfig().tta == "none"  # the paper
    assert TrainConfig(tta="flip").tta == "flip"
    with pytest.raises(ConfigError, match="train.tta"):
        TrainConfig(tta="rotate")

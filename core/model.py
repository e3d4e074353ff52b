"""SegAN / SegAN-CAT networks: a U-Net-like segmentor and a multiscale critic.

Shapes: images are ``(B, C, H, W)`` float tensors with values in [0, 1]; H and W
must be divisible by 16 (four stride-2 stages). The segmentor returns
probabilities ``(B, 1, H, W)`` in (0, 1) (sigmoid applied). The critic returns
the list of feature maps that the multiscale L1 loss compares.

Parameter names are stable (``enc1 … enc4``, ``dec1 … dec3``, ``out``;
``block1 … block3``): freezing strategies and transfer loading refer to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from core.config import ModelConfig

ENCODER_FILTERS = (64, 128, 256, 512)
DECODER_FILTERS = (256, 128, 64)
CRITIC_FILTERS = (64, 128, 256)


def scaled(filters: int, width: float) -> int:
    """Filter count after the width multiplier (at least 1)."""
    return max(1, int(round(filters * width)))


def _init_conv(conv: nn.Conv2d) -> None:
    """Reference init: N(0, sqrt(2 / (k² · f_out))), biases zero."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / (k * conv.out_channels)))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class DownBlock(nn.Module):
    """4×4 stride-2 'same' conv (+ BN) + LeakyReLU: (B, Cin, H, W) → (B, Cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int, batch_norm: bool, cfg: ModelConfig) -> None:
        super().__init__()
        # a conv followed by BN has no bias, as in the reference parameter counts
        self.conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=cfg.conv_bias or not batch_norm)
        self.bn = (
            nn.BatchNorm2d(cout, eps=cfg.bn_eps, momentum=cfg.bn_momentum) if batch_norm else None
        )
        self.slope = cfg.leaky_slope
        _init_conv(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.leaky_relu(x, self.slope)


class UpBlock(nn.Module):
    """Bilinear ×2, 3×3 conv, BN, ReLU: (B, Cin, H, W) → (B, Cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=cfg.conv_bias)
        self.bn = nn.BatchNorm2d(cout, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        _init_conv(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(x)))


class Segmentor(nn.Module):
    """U-Net-like segmentor S; skips *add* the matching encoder output.

    Input ``(B, C, H, W)``, H, W divisible by 16. Output ``(B, 1, H, W)`` probabilities.
    """

    def __init__(self, in_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        enc = [scaled(f, cfg.width) for f in ENCODER_FILTERS]
        dec = [scaled(f, cfg.width) for f in DECODER_FILTERS]
        self.in_channels = in_channels
        self.enc1 = DownBlock(in_channels, enc[0], batch_norm=False, cfg=cfg)
        self.enc2 = DownBlock(enc[0], enc[1], batch_norm=True, cfg=cfg)
        self.enc3 = DownBlock(enc[1], enc[2], batch_norm=True, cfg=cfg)
        self.enc4 = DownBlock(enc[2], enc[3], batch_norm=True, cfg=cfg)
        self.dec1 = UpBlock(enc[3], dec[0], cfg)  # + enc3
        self.dec2 = UpBlock(dec[0], dec[1], cfg)  # + enc2
        self.dec3 = UpBlock(dec[1], dec[2], cfg)  # + enc1
        self.out = nn.Conv2d(dec[2], 1, 3, padding=1, bias=True)
        _init_conv(self.out)
        if (dec[0], dec[1], dec[2]) != (enc[2], enc[1], enc[0]):
            raise ValueError(f"width {cfg.width} gives decoder/encoder sizes that cannot be added")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"segmentor input H, W must be divisible by 16, got {tuple(x.shape)}")
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        d = self.dec1(e4) + e3
        d = self.dec2(d) + e2
        d = self.dec3(d) + e1
        d = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(d))


class Critic(nn.Module):
    """Multiscale critic D.

    ``input_mode='concat'`` (SegAN-CAT): input is image ⊕ mask, ``(B, C+1, H, W)``.
    ``input_mode='multiply'`` (SegAN): input is image × mask per channel, ``(B, C, H, W)``.
    ``forward(image (B,C,H,W), mask (B,1,H,W))`` returns ``[input, block1, block2, block3]``
    feature maps; the multiscale L1 compares these lists.
    """

    def __init__(self, in_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_mode = cfg.critic_input
        cin = in_channels + 1 if self.input_mode == "concat" else in_channels
        f = [scaled(c, cfg.width) for c in CRITIC_FILTERS]
        self.block1 = DownBlock(cin, f[0], batch_norm=False, cfg=cfg)
        self.block2 = DownBlock(f[0], f[1], batch_norm=True, cfg=cfg)
        self.block3 = DownBlock(f[1], f[2], batch_norm=True, cfg=cfg)

    def critic_input(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The only difference between SegAN and SegAN-CAT critics."""
        if self.input_mode == "concat":
            return torch.cat([image, mask], dim=1)
        return image * mask

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.critic_input(image, mask)
        x1 = self.block1(x0)
        x2 = self.block2(x1)
        x3 = self.block3(x2)
        return [x0, x1, x2, x3]

    def clip_kernels(self, limit: float) -> None:
        """Clip conv kernels (not BN, not biases) to [-limit, limit] after each update."""
        with torch.no_grad():
            for block in (self.block1, self.block2, self.block3):
                block.conv.weight.clamp_(-limit, limit)


@dataclass(frozen=True)
class Networks:
    segmentor: Segmentor
    critic: Critic


def build_networks(in_channels: int, cfg: ModelConfig) -> Networks:
    """Both networks for ``in_channels`` image channels (1 unimodal, 4 multimodal)."""
    return Networks(Segmentor(in_channels, cfg), Critic(in_channels, cfg))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def layer_table(module: nn.Module) -> list[tuple[str, str, int]]:
    """(name, shape, count) for every parameter, in registration order."""
    return [(n, "×".join(map(str, p.shape)), p.numel()) for n, p in module.named_parameters()]

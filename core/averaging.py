"""The segmentor that validation, ``best.pt`` and ``predict`` see: averaged weights and
averaged BatchNorm statistics.

Adversarial training moves the segmentor's weights a lot from step to step, and BatchNorm
running statistics with the paper's momentum follow the last few batches. Both make the
model evaluated at an epoch's end a noisy sample: on real BraTS, unseen-case dice swung by
±0.15 between consecutive epochs, so "best by validation" chose noise.

- ``WeightAverage`` keeps an exponential moving average of the segmentor's parameters
  (``train.ema_decay``; 0 = off, the paper: the weights as trained).
- ``recalibrate_batchnorm`` re-estimates BatchNorm running statistics as a plain average
  over training slices (``train.bn_recalibration``; 0 = off).

Training itself is unchanged by either: the step always updates the raw weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from core.freezing import Strategy, set_train_mode


class WeightAverage:
    """Exponential moving average of a network's parameters, updated after every step.

    ``model`` is a frozen copy of the network whose parameters follow
    ``avg ← decay·avg + (1 − decay)·current``; its buffers (BatchNorm statistics) are copied
    from the network at ``sync_buffers`` time, or re-estimated by ``recalibrate_batchnorm``.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(network)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        averaged: list[torch.Tensor] = [p for p in self.model.parameters() if p.is_floating_point()]
        current: list[torch.Tensor] = [p.detach() for p in network.parameters() if p.is_floating_point()]
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay)

    @torch.no_grad()
    def sync_buffers(self, network: nn.Module) -> None:
        """Copy the network's buffers (running statistics) into the averaged model."""
        for mine, theirs in zip(self.model.buffers(), network.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)


@torch.no_grad()
def recalibrate_batchnorm(segmentor: nn.Module, critic: nn.Module, strategy: Strategy,
                          batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate the segmentor's BatchNorm running statistics from ``batches``.

    ``batches``: image tensors ``(B, C, H, W)`` on the segmentor's device and memory format.
    Runs in train mode, in fp32 as validation does, without gradients, and takes the plain
    (cumulative) average over all batches. Frozen BatchNorm layers (eval mode under the
    transfer ``strategy``) keep their statistics.
    """
    set_train_mode(segmentor, critic, strategy)
    layers = [m for m in segmentor.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = the plain mean over batches
    for images in batches:
        segmentor(images)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum

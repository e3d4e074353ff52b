"""Named freezing strategies for transfer learning, as data.

Each strategy says whether a source checkpoint is loaded and which parameter
groups train. Groups are module-name prefixes of ``Segmentor`` / ``Critic``
(``segmentor.enc1`` … ``critic.block3``).

Frozen BatchNorm layers are kept in eval mode during training, so their
running statistics do not move either: a frozen layer is exactly the source's
layer, and a test checks it bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the study's driver reads STRATEGIES (grid axis values) and never needs torch
    from torch import nn

SEGMENTOR_ENCODER = ("segmentor.enc1", "segmentor.enc2", "segmentor.enc3", "segmentor.enc4")
SEGMENTOR_DECODER = ("segmentor.dec1", "segmentor.dec2", "segmentor.dec3", "segmentor.out")
CRITIC_INPUT = ("critic.block1",)
CRITIC_REST = ("critic.block2", "critic.block3")
ALL_GROUPS = SEGMENTOR_ENCODER + SEGMENTOR_DECODER + CRITIC_INPUT + CRITIC_REST


@dataclass(frozen=True)
class Strategy:
    name: str
    loads_source: bool
    trainable: tuple[str, ...]
    description: str


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("scratch", False, ALL_GROUPS, "no transfer: random init, everything trains"),
        Strategy("full", True, ALL_GROUPS, "(S, D): source weights, everything trains"),
        Strategy("s_din", True, SEGMENTOR_ENCODER + SEGMENTOR_DECODER + CRITIC_INPUT,
                 "(S, Din): segmentor and the critic's input layer train"),
        Strategy("s_only", True, SEGMENTOR_ENCODER + SEGMENTOR_DECODER,
                 "(S): critic frozen (the reference code's second mode)"),
        Strategy("decoder_only", True, SEGMENTOR_DECODER + CRITIC_INPUT + CRITIC_REST,
                 "segmentor encoder frozen; decoder and critic train"),
    )
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise KeyError(f"unknown freezing strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def _is_trainable(qualified_name: str, trainable: tuple[str, ...]) -> bool:
    return any(qualified_name == g or qualified_name.startswith(g + ".") for g in trainable)


def apply_strategy(segmentor: nn.Module, critic: nn.Module, strategy: Strategy) -> None:
    """Set ``requires_grad`` on every parameter according to the strategy."""
    for prefix, net in (("segmentor", segmentor), ("critic", critic)):
        for name, param in net.named_parameters():
            param.requires_grad_(_is_trainable(f"{prefix}.{name}", strategy.trainable))


def set_train_mode(segmentor: nn.Module, critic: nn.Module, strategy: Strategy) -> None:
    """Train mode for trainable groups; frozen groups' BN stay in eval mode."""
    from torch.nn.modules.batchnorm import _BatchNorm

    for prefix, net in (("segmentor", segmentor), ("critic", critic)):
        net.train()
        for name, module in net.named_modules():
            if isinstance(module, _BatchNorm) and not _is_trainable(
                f"{prefix}.{name}", strategy.trainable
            ):
                module.eval()

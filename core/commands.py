"""`describe-model`: layer table and parameter counts of a variant."""

from __future__ import annotations

import argparse

from core.config import load_config
from core.errors import ConfigError
from core.model import build_networks, count_parameters, layer_table
from core.vocabulary import MODALITIES, VARIANTS


def variant_overrides(name: str) -> dict[str, object]:
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    return dict(VARIANTS[name])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe-model", help="print the networks' layer tables and parameter counts")
    p.add_argument("--variant", default="segan-cat", help=f"one of {', '.join(VARIANTS)}")
    p.add_argument("--modalities", default=",".join(MODALITIES),
                   help="comma-separated input modalities (default: all four)")
    p.add_argument("--width", type=float, default=None, help="width multiplier (default: budget's)")
    p.add_argument("--budget", default=None, help="budget overlay (smoke, cpu, paper)")
    p.set_defaults(func=describe_model)


def describe_model(args: argparse.Namespace) -> int:
    overrides = variant_overrides(args.variant)
    overrides["data.modalities"] = args.modalities
    if args.width is not None:
        overrides["model.width"] = args.width
    cfg = load_config(args.budget, overrides=overrides)
    nets = build_networks(len(cfg.data.modalities), cfg.model)
    print(f"variant {args.variant}: modalities {','.join(cfg.data.modalities)}, width {cfg.model.width}, "
          f"critic input {cfg.model.critic_input}")
    for title, net in (("segmentor", nets.segmentor), ("critic", nets.critic)):
        print(f"\n{title}")
        print(f"  {'parameter':32s} {'shape':>16s} {'count':>10s}")
        for name, shape, count in layer_table(net):
            print(f"  {name:32s} {shape:>16s} {count:>10,d}")
        print(f"  {'total trainable':32s} {'':>16s} {count_parameters(net):>10,d}")
    return 0

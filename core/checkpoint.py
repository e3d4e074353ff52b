"""Self-describing checkpoints: weights, optimisers, progress, config, provenance.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, dicts,
numbers, strings), so it loads with ``weights_only=True`` and rebuilds its
networks without any class names:

    format, code_version, config (resolved ExperimentConfig as a dict),
    in_channels, modalities, preprocessing (the store's parameters), store_id,
    epoch, step, best_score, best_epoch, history, metrics,
    segmentor, critic (state dicts), opt_s, opt_d (optimiser state dicts), rng
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.atomic import atomic_path
from core.config import ExperimentConfig, from_dict
from core.errors import CheckpointError
from core.model import Segmentor

FORMAT = "segan-study-checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return state


def checkpoint_config(state: dict[str, Any]) -> ExperimentConfig:
    return from_dict(state["config"])


def build_segmentor(state: dict[str, Any]) -> tuple[Segmentor, ExperimentConfig]:
    """Rebuild the trained segmentor (eval mode) from a loaded checkpoint alone."""
    cfg = checkpoint_config(state)
    net = Segmentor(int(state["in_channels"]), cfg.model)
    load_matching(net, state["segmentor"], "segmentor")
    return net.eval(), cfg


def load_matching(module: nn.Module, source: dict[str, torch.Tensor], what: str) -> None:
    """Load ``source`` into ``module`` by name and shape; list every mismatch if any."""
    target = module.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shape = sorted(
        f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(v.shape)}"
        for k, v in target.items()
        if k in source and tuple(source[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shape:
        parts = []
        if shape:
            parts.append("shape mismatch: " + "; ".join(shape[:6]) + (" …" if len(shape) > 6 else ""))
        if missing:
            parts.append("missing: " + ", ".join(missing[:6]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:6]))
        raise CheckpointError(f"{what} weights do not match the model ({' | '.join(parts)})")
    module.load_state_dict(source, strict=True)


def weights_digest(*parts: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 (16 hex) over parameters and buffers (modules or state dicts), in name order.

    Equal digests mean bit-identical weights: used to prove a transfer starts
    from exactly its source's best checkpoint.
    """
    h = hashlib.sha256()
    for part in parts:
        state = part.state_dict() if isinstance(part, nn.Module) else part
        for name, tensor in sorted(state.items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

"""Self-describing checkpoints: weights, optimisers, progress, config, provenance.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, dicts,
numbers, strings), so it loads with ``weights_only=True`` and rebuilds its
networks without any class names:

    format, code_version, config (resolved ExperimentConfig as a dict),
    in_channels, modalities, preprocessing (the store's parameters), store_id,
    epoch, step, best_score, best_epoch, history, metrics,
    segmentor, critic (state dicts), opt_s, opt_d (optimiser state dicts), rng

A trial folder keeps ``last.pt`` (the resume point), ``last.prev.pt`` (the resume point
before it, rotated on every save of ``last.pt``) and ``best.pt``. ``load_resume_checkpoint``
falls back through them when ``last.pt`` cannot be read.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.atomic import atomic_path, keep_previous
from core.config import ExperimentConfig, from_dict
from core.errors import CheckpointError
from core.model import Segmentor

FORMAT = "segan-study-checkpoint/1"
LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"
CORRUPT_SUFFIX = ".corrupt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file.

    Saving a ``last.pt`` first keeps the one it replaces as ``last.prev.pt`` (a fallback
    if the new one is ever unreadable); at every moment both are whole files."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
        if path.name == LAST:
            keep_previous(path, path.with_name(PREVIOUS))


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


def load_resume_checkpoint(out_dir: str | Path, extra: Mapping[str, Path] | None = None
                           ) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint to resume ``out_dir`` from, and a one-line note when it is not a
    plain ``last.pt`` ("" when ``last.pt`` was readable or there is nothing to resume).

    An unreadable or missing ``last.pt`` falls back to the newest readable of
    ``last.prev.pt`` and ``extra`` (label -> path, e.g. Tune's copy), then ``best.pt``
    (its epoch: later epochs are retrained); the choice is copied to ``last.pt`` and a bad
    ``last.pt`` is kept beside it as ``last.pt.corrupt``. With none readable, (None, note):
    the training starts over.
    """
    out = Path(out_dir)
    last = out / LAST
    try:
        return load_checkpoint(last), ""
    except CheckpointError as exc:
        problem = "missing" if not last.exists() else f"unreadable ({_reason(exc)})"
    candidates = {PREVIOUS: out / PREVIOUS, **(extra or {})}
    readable = [(label, path, ckpt) for label, path in candidates.items()
                if (ckpt := _try_load(path)) is not None]
    if not readable and (best := _try_load(out / BEST)) is not None:
        readable = [(f"{BEST} (its best validation epoch; later epochs are retrained)",
                     out / BEST, best)]
    if not readable:
        if problem == "missing" and not any(p.exists() for p in (*candidates.values(), out / BEST)):
            return None, ""  # a fresh start
        _set_aside(last)
        return None, f"{LAST} {problem} and no readable fallback in {out}: the cell starts over"
    label, path, ckpt = max(readable, key=lambda item: int(item[2].get("epoch", 0)))
    _set_aside(last)
    with atomic_path(last) as tmp:
        shutil.copyfile(path, tmp)
    kept = f"; the bad file is kept as {LAST}{CORRUPT_SUFFIX}" if problem != "missing" else ""
    return ckpt, f"{LAST} {problem}: resumed from {label}, epoch {int(ckpt.get('epoch', 0))}{kept}"


def _try_load(path: Path) -> dict[str, Any] | None:
    try:
        return load_checkpoint(path) if path.is_file() else None
    except CheckpointError:
        return None


def _reason(exc: Exception) -> str:
    text = str(exc).split(": ", 1)[-1]
    return text[:120]


def _set_aside(path: Path) -> None:
    if path.exists():
        path.replace(path.with_name(path.name + CORRUPT_SUFFIX))


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

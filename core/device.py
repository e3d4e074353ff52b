"""Device choice shared by training, evaluation and prediction."""

from __future__ import annotations

import torch

from core.errors import ConfigError


def resolve_device(name: str | torch.device, key: str = "device") -> torch.device:
    """'auto' → CUDA when available, else CPU. CUDA without a GPU is an error naming ``key``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {name!r} requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"{key}: unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)

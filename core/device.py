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


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of CPUs whose bf16 matmuls are fast (AMX tiles, AVX-512 BF16)."""


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def autocast_dtype(mode: str, device: torch.device, *, flags: frozenset[str] | None = None,
                   cuda_bf16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of the training step, or None for plain fp32.

    ``mode`` is ``train.amp``: 'off'; 'bf16'; 'fp16' (CUDA only: CPUs have no fast fp16);
    'auto' = bf16 on a CPU with AMX/AVX-512 BF16 (detected, never assumed; elsewhere bf16
    is emulated and slower than fp32), bf16 on a CUDA GPU that supports it, fp16 on an
    older GPU. ``flags`` and ``cuda_bf16`` override detection (tests).
    """
    if mode == "off":
        return None
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        if mode == "fp16" or not cuda_bf16:
            return torch.float16
        return torch.bfloat16
    if device.type != "cpu":
        return None
    if mode == "fp16":
        raise ConfigError("train.amp: 'fp16' needs a CUDA device; use 'bf16', 'auto' or 'off' on CPU")
    if mode == "bf16":
        return torch.bfloat16
    has_bf16 = bool(set(CPU_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    return torch.bfloat16 if has_bf16 else None


def configure_backends(device: torch.device) -> bool:
    """Turn on cuDNN autotuning for a CUDA device (the step's shapes are fixed: crop and
    batch never change within a trial, so tuned kernels are reused). Returns whether set."""
    if device.type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True


def memory_report(device: torch.device) -> dict[str, float]:
    """``{"sys/gpu_peak_mib": …}``: peak memory held by tensors on a CUDA device since the
    last call (then reset, so each epoch reports its own peak); empty on other devices."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return {"sys/gpu_peak_mib": peak}

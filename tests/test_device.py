"""Precision and device decisions: GPU-only branches checked by their decision logic on CPU."""

from __future__ import annotations

import pytest
import torch

from core.device import autocast_dtype, cpu_flags, resolve_device
from core.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AMX = frozenset({"avx512f", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16"})
PLAIN = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(("mode", "device", "flags", "cuda_bf16", "expected"), [
    ("auto", CPU, AMX, None, torch.bfloat16),
    ("auto", CPU, AVX512_BF16, None, torch.bfloat16),
    ("auto", CPU, PLAIN, None, None),              # emulated bf16 is slower than fp32
    ("bf16", CPU, PLAIN, None, torch.bfloat16),    # asked for explicitly
    ("off", CPU, AMX, None, None),
    ("auto", CUDA, PLAIN, True, torch.bfloat16),   # Ampere and newer
    ("auto", CUDA, PLAIN, False, torch.float16),   # older GPUs: fp16 with loss scaling
    ("fp16", CUDA, PLAIN, True, torch.float16),
    ("off", CUDA, PLAIN, True, None),
])
def test_autocast_dtype(mode, device, flags, cuda_bf16, expected):
    assert autocast_dtype(mode, device, flags=flags, cuda_bf16=cuda_bf16) == expected


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="train.amp: 'fp16' needs a CUDA device"):
        autocast_dtype("fp16", CPU, flags=AMX)


def test_this_machine_is_detected_not_assumed():
    flags = cpu_flags()
    has = bool(flags & {"amx_bf16", "avx512_bf16"})
    assert (autocast_dtype("auto", CPU) == torch.bfloat16) == has


def test_cuda_request_without_a_gpu_names_the_key():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested but no CUDA device"):
        resolve_device("cuda", "train.device")
    assert resolve_device("auto") == CPU

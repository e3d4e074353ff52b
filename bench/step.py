"""Training-step throughput and trainer overhead (a benchmark, not a test).

For each size and precision: slices/s of ``core.trainer.train_step``, and the ratio of
its step time to a minimal hand-written PyTorch loop doing the same math on the same
model and batch (one forward, S and D gradients, RMSprop, critic clipping) under the
same autocast, timed interleaved in one process. Target: ratio ≤ 1.03. The ``bf16``
rows run only where ``core.device.autocast_dtype`` finds AMX/AVX-512 BF16 (or with
``--force-bf16``); ``speed-up`` is bf16 slices/s over fp32 slices/s of the same size.

    python bench/step.py [--sizes tiny,cpu,real,full] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config  # noqa: E402
from core.device import CPU_BF16_FLAGS, autocast_dtype, cpu_flags  # noqa: E402
from core.losses import dice_loss, multiscale_l1  # noqa: E402
from core.trainer import autocast_and_scalers, build_state, train_step  # noqa: E402

SIZES = {  # name: (width, crop, batch)
    "tiny": (0.125, 32, 8),
    "demo": (0.25, 64, 16),
    "real": (0.5, 160, 16),
    "full": (1.0, 160, 8),
}


def minimal_step(state, cfg, image, mask, dtype) -> None:  # type: ignore[no-untyped-def]
    """The same SegAN-CAT step written as plainly as possible."""
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        pred = state.segmentor(image)
        l1 = multiscale_l1(state.critic(image, pred), state.critic(image, mask), cfg.loss.l1_mode)
        loss_s = l1 + cfg.loss.dice_weight * dice_loss(pred.float(), mask)
    s_params = list(state.segmentor.parameters())
    d_params = list(state.critic.parameters())
    loss_s.backward(inputs=s_params, retain_graph=True)
    (-l1).backward(inputs=d_params)
    state.opt_s.step()
    state.opt_d.step()
    state.opt_s.zero_grad(set_to_none=True)
    state.opt_d.zero_grad(set_to_none=True)
    with torch.no_grad():
        for block in (state.critic.block1, state.critic.block2, state.critic.block3):
            block.conv.weight.clamp_(-cfg.optim.critic_clip, cfg.optim.critic_clip)


def bench(name: str, steps: int, channels_last: bool, amp: str) -> dict[str, float]:
    width, crop, batch = SIZES[name]
    cfg = load_config(overrides={"model.width": width, "data.train_crop": crop,
                                 "data.batch_size": batch, "train.channels_last": channels_last,
                                 "train.device": "cpu", "train.amp": amp})
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    image = torch.rand(batch, 4, crop, crop).contiguous(memory_format=fmt)
    mask = (torch.rand(batch, 1, crop, crop) > 0.7).float().contiguous(memory_format=fmt)
    device = torch.device("cpu")
    autocast, scalers = autocast_and_scalers(cfg, device)
    dtype = autocast_dtype(amp, device)

    trainer_state = build_state(cfg, torch.device("cpu"))
    minimal_state = build_state(cfg, torch.device("cpu"))
    for _ in range(3):  # warm-up both
        train_step(trainer_state, cfg, image, mask, scalers, autocast)
        minimal_step(minimal_state, cfg, image, mask, dtype)
    t_trainer, t_minimal = [], []
    def run_trainer() -> float:
        t0 = time.perf_counter()
        train_step(trainer_state, cfg, image, mask, scalers, autocast)
        return time.perf_counter() - t0

    def run_minimal() -> float:
        t0 = time.perf_counter()
        minimal_step(minimal_state, cfg, image, mask, dtype)
        return time.perf_counter() - t0

    for i in range(steps):  # interleaved, alternating who goes first: load drift and cache
        if i % 2:           # effects hit both alike
            t_trainer.append(run_trainer())
            t_minimal.append(run_minimal())
        else:
            t_minimal.append(run_minimal())
            t_trainer.append(run_trainer())
    trainer, minimal = statistics.median(t_trainer), statistics.median(t_minimal)
    return {"slices_per_s": batch / trainer, "step_s": trainer, "minimal_step_s": minimal,
            "ratio": trainer / minimal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,demo,real,full")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layouts", default="channels_last", help="channels_last,contiguous")
    parser.add_argument("--force-bf16", action="store_true", help="bf16 rows without AMX/AVX-512 BF16")
    args = parser.parse_args()
    bf16 = sorted(cpu_flags() & set(CPU_BF16_FLAGS))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16 flags: {', '.join(bf16) or 'none'}")
    modes = ["off"] + (["bf16"] if bf16 or args.force_bf16 else [])
    print(f"{'size':6s} {'width':>5s} {'crop':>5s} {'batch':>5s} {'layout':>13s} {'amp':>5s} "
          f"{'slices/s':>9s} {'step s':>8s} {'minimal s':>9s} {'ratio':>6s} {'speed-up':>8s}")
    for name in args.sizes.split(","):
        width, crop, batch = SIZES[name]
        for layout in args.layouts.split(","):
            fp32 = None
            for amp in modes:
                r = bench(name, max(5, args.steps // (4 if name == "full" else 1)),
                          layout == "channels_last", amp)
                fp32 = fp32 or r["slices_per_s"]
                print(f"{name:6s} {width:5.3g} {crop:5d} {batch:5d} {layout:>13s} {amp:>5s} "
                      f"{r['slices_per_s']:9.1f} {r['step_s']:8.4f} {r['minimal_step_s']:9.4f} "
                      f"{r['ratio']:6.3f} {r['slices_per_s'] / fp32:8.2f}", flush=True)


if __name__ == "__main__":
    main()

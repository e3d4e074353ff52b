"""Training-step throughput and trainer overhead (a benchmark, not a test).

For each size: slices/s of ``core.trainer.train_step``, and the ratio of its step
time to a minimal hand-written PyTorch loop doing the same math on the same model
and batch (one forward, S and D gradients, RMSprop, critic clipping), timed
interleaved in one process. Target: ratio ≤ 1.03.

    python bench/step.py [--sizes tiny,cpu,full] [--steps 20]
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
from core.losses import dice_loss, multiscale_l1  # noqa: E402
from core.trainer import build_state, train_step  # noqa: E402

SIZES = {  # name: (width, crop, batch)
    "tiny": (0.125, 32, 8),
    "cpu": (0.25, 64, 16),
    "full": (1.0, 160, 8),
}


def minimal_step(state, cfg, image, mask) -> None:  # type: ignore[no-untyped-def]
    """The same SegAN-CAT step written as plainly as possible."""
    pred = state.segmentor(image)
    l1 = multiscale_l1(state.critic(image, pred), state.critic(image, mask), cfg.loss.l1_mode)
    loss_s = l1 + cfg.loss.dice_weight * dice_loss(pred, mask)
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


def bench(name: str, steps: int, channels_last: bool) -> dict[str, float]:
    width, crop, batch = SIZES[name]
    cfg = load_config(overrides={"model.width": width, "data.train_crop": crop, "data.eval_crop": crop,
                                 "data.batch_size": batch, "train.channels_last": channels_last,
                                 "train.device": "cpu"})
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    image = torch.rand(batch, 4, crop, crop).contiguous(memory_format=fmt)
    mask = (torch.rand(batch, 1, crop, crop) > 0.7).float().contiguous(memory_format=fmt)
    scalers = (torch.amp.GradScaler("cuda", enabled=False),) * 2

    def autocast():  # type: ignore[no-untyped-def]
        return torch.autocast("cpu", enabled=False)

    trainer_state = build_state(cfg, torch.device("cpu"))
    minimal_state = build_state(cfg, torch.device("cpu"))
    for _ in range(3):  # warm-up both
        train_step(trainer_state, cfg, image, mask, scalers, autocast)
        minimal_step(minimal_state, cfg, image, mask)
    t_trainer, t_minimal = [], []
    def run_trainer() -> float:
        t0 = time.perf_counter()
        train_step(trainer_state, cfg, image, mask, scalers, autocast)
        return time.perf_counter() - t0

    def run_minimal() -> float:
        t0 = time.perf_counter()
        minimal_step(minimal_state, cfg, image, mask)
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
    parser.add_argument("--sizes", default="tiny,cpu,full")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':6s} {'width':>5s} {'crop':>5s} {'batch':>5s} {'layout':>13s} "
          f"{'slices/s':>9s} {'step s':>8s} {'minimal s':>9s} {'ratio':>6s}")
    for name in args.sizes.split(","):
        width, crop, batch = SIZES[name]
        for channels_last in (False, True):
            r = bench(name, max(5, args.steps // (4 if name == "full" else 1)), channels_last)
            layout = "channels_last" if channels_last else "contiguous"
            print(f"{name:6s} {width:5.3g} {crop:5d} {batch:5d} {layout:>13s} {r['slices_per_s']:9.1f} "
                  f"{r['step_s']:8.4f} {r['minimal_step_s']:9.4f} {r['ratio']:6.3f}", flush=True)


if __name__ == "__main__":
    main()

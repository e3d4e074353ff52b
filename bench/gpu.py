"""Several trials on one device: slices/s and achieved TFLOP/s of the real training path
(a benchmark, not a test).

Each trial is a separate process, as Ray runs them: it holds its training split on the
device (``core.data.device_batches``, as ``data.on_device`` does on CUDA), cuts batches
there and runs ``core.trainer.train_step`` under the trainer's autocast for ``--seconds``
after warm-up. The FLOPs of one step are counted by ``torch.utils.flop_counter`` on the
model itself (18.66 GFLOP per slice at the paper's full size, width 1, 4 channels, 160²),
so TFLOP/s = FLOPs per step × steps/s. Peak device memory per trial is printed on CUDA.

    python bench/gpu.py                               # CUDA if present, else a tiny CPU run
    python bench/gpu.py --trials 1,2,4 --size full --data /data/brats19.zarr
    python bench/gpu.py --device cpu --size tiny      # the same code path, on CPU

Sizes: see ``bench/step.py`` SIZES; crops larger than the store's slices are refused.
No figures for GPUs are claimed here until measured on one (README, Benchmarks).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.step import SIZES  # noqa: E402
from core.config import load_config  # noqa: E402
from core.data.dataset import SliceDataset  # noqa: E402
from core.data.device_batches import DeviceBatches  # noqa: E402
from core.device import memory_report, resolve_device  # noqa: E402
from core.trainer import autocast_and_scalers, build_state, train_step  # noqa: E402


def step_flops(state, cfg, image, mask, scalers, autocast) -> int:  # type: ignore[no-untyped-def]
    """FLOPs of one training step (forward and backward of both networks), counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(state, cfg, image, mask, scalers, autocast)
    return int(counter.get_total_flops())


def run_trial(store: str, size: str, device_name: str, seconds: float, queue: mp.Queue) -> None:
    width, crop, batch = SIZES[size]
    device = resolve_device(device_name)
    cfg = load_config("smoke", overrides={
        "data.store": store, "model.width": width, "data.train_crop": crop,
        "data.batch_size": batch, "train.device": device_name})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dataset = SliceDataset(store, "train", cfg.data.modalities, crop, train=True, seed=0)
    feed = DeviceBatches(dataset, device)
    state = build_state(cfg, device)
    autocast, scalers = autocast_and_scalers(cfg, device)
    memory_format = torch.channels_last
    order = torch.randperm(len(feed)).tolist()

    def batches():  # endless: the split, epoch after epoch
        while True:
            yield from feed.batches(order, batch, drop_last=True)

    source = batches()

    def step() -> None:
        image, mask = next(source)
        train_step(state, cfg, image.contiguous(memory_format=memory_format),
                   mask.contiguous(memory_format=memory_format), scalers, autocast)

    image, mask = feed.batch(order[:batch])
    flops = step_flops(state, cfg, image.contiguous(memory_format=memory_format),
                       mask.contiguous(memory_format=memory_format), scalers, autocast)
    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    memory_report(device)  # reset the peak: report the steady state
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    sync()
    elapsed = time.perf_counter() - start
    queue.put({"slices_s": steps * batch / elapsed, "tflops": flops * steps / elapsed / 1e12,
               "gflop_per_slice": flops / batch / 1e9, "data_mib": feed.nbytes / 2**20,
               **memory_report(device)})


def measure(store: str, size: str, device: str, trials: int, seconds: float) -> list[dict]:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn is what Ray does too
    queue = ctx.Queue()
    procs = [ctx.Process(target=run_trial, args=(store, size, device, seconds, queue))
             for _ in range(trials)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:N")
    ap.add_argument("--size", default=None, help=f"one of {', '.join(SIZES)} "
                    "(default: full on CUDA, tiny on CPU)")
    ap.add_argument("--trials", default=None, help="concurrent trials per device, e.g. 1,2,4 "
                    "(default 1,2,4 on CUDA, 1,2 on CPU)")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per trial")
    ap.add_argument("--data", default=None, help="store (default: the synthetic store)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.size or ("full" if cuda else "tiny")
    counts = [int(t) for t in (args.trials or ("1,2,4" if cuda else "1,2")).split(",")]
    store = args.data
    if store is None:
        from core.data.synthetic import ensure_synthetic_store
        store = str(ensure_synthetic_store(REPO / "data" / "synthetic"))
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(f"device {device} ({name}); size {size} {SIZES[size]} (width, crop, batch); "
          f"{args.seconds:.0f} s per trial", flush=True)
    print(f"{'trials':>6} {'slices/s total':>15} {'per trial':>10} {'TFLOP/s':>8} "
          f"{'GFLOP/slice':>12} {'split MiB':>10} {'peak MiB':>9}")
    for n in counts:
        rows = measure(str(store), size, str(device), n, args.seconds)
        total = sum(r["slices_s"] for r in rows)
        peak = max((r.get("sys/gpu_peak_mib", float("nan")) for r in rows), default=float("nan"))
        print(f"{n:>6} {total:>15.1f} {total / n:>10.1f} {sum(r['tflops'] for r in rows):>8.3f} "
              f"{rows[0]['gflop_per_slice']:>12.3f} {rows[0]['data_mib']:>10.1f} {peak:>9.0f}",
              flush=True)
        print("  " + json.dumps({"trials": n, "per_trial": rows}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

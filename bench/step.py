"""Training-step throughput: trainer overhead, bf16, torch.compile and the TensorFlow step.

For each size, every column below is timed in one process, interleaved step by step
(one step of each in turn, the order rotated every round), so load drift and cache
effects hit all of them alike; the figures are medians over ``--steps`` rounds after
warm-up:

* ``trainer``: slices/s of ``core.trainer.train_step`` per precision (``off`` = fp32,
  ``bf16`` = CPU autocast), and ``vs minimal``: its step time over a minimal
  hand-written PyTorch loop doing the same math on the same model and batch (one
  forward, S and D gradients, RMSprop, critic clipping) under the same autocast.
  Target: ≤ 1.03. The ``bf16`` rows run only where ``core.device.autocast_dtype`` finds
  AMX/AVX-512 BF16 (or with ``--force-bf16``).
* ``compile`` (``--compile``, on by default; ``--no-compile`` skips it): the minimal
  step with its forward and losses (segmentor, both critic passes, L1, dice, under the
  same autocast) in one ``torch.compile``d function (static shapes); backward by
  AOTAutograd in ONE pass (D's gradient of −L1 is minus D's gradient of the S loss; two
  backward calls would run the whole compiled backward twice); RMSprop and clipping
  eager. ``compile s`` is the first step's time less a steady step: the cold compile cost (Inductor's cache is a fresh temporary folder unless
  ``--compile-cache keep``). After the table, one line per size and precision says
  whether compiling pays on a ``--trial-seconds`` trial (720 = the ``cpu`` budget):
  seconds saved = trial × (1 − eager/compiled slices/s), against the compile seconds.
* ``tf``: the same SegAN-CAT step written independently in TensorFlow 2 / Keras
  (``bench/step_tf.py``: same architectures, width, channels, crop and batch; RMSprop,
  global multiscale L1 + dice, critic clipping; one ``tf.function``, NHWC, fp32 unless
  ``--tf-amp``), run in a separate interpreter that has TensorFlow and driven step by
  step from here. ``vs TF`` = slices/s over the TF fp32 step's of the same size.

``vs fp32`` is slices/s over the eager fp32 trainer's of the same size.

TensorFlow lives in a one-off venv, never in the project's (it pins its own numpy,
protobuf, keras)::

    python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu
    python bench/step.py --tf-python /work/tfvenv/bin/python      # or TF_PYTHON=/work/tfvenv/bin/python

Without ``--tf-python`` or ``TF_PYTHON`` the TF column is skipped with one line saying
how to enable it. ``--threads N`` sets torch's threads and TF's intra- and inter-op
threads alike; on a machine that something else keeps busy use ``--threads 1`` (as a
study trial runs: ``--cpus-per-trial 1``): OpenMP threads waiting for a taken core slow
PyTorch several-fold while TF's thread pool barely notices, which is no fair ratio.

    python bench/step.py [--sizes tiny,demo,real,full] [--steps 20] [--no-compile]
        [--tf-python PATH] [--tf-amp off,bf16] [--threads N] [--trial-seconds 720]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config  # noqa: E402
from core.device import CPU_BF16_FLAGS, autocast_dtype, cpu_flags  # noqa: E402
from core.losses import dice_loss, multiscale_l1  # noqa: E402
from core.model import count_parameters  # noqa: E402
from core.trainer import autocast_and_scalers, build_state, train_step  # noqa: E402

SIZES = {  # name: (width, crop, batch)
    "tiny": (0.125, 32, 8),
    "demo": (0.25, 64, 16),
    "real": (0.5, 160, 16),
    "full": (1.0, 160, 8),
}
CHANNELS = 4
STEP_TF = Path(__file__).resolve().with_name("step_tf.py")
TF_HINT = ("TF column skipped: pass --tf-python PATH or set TF_PYTHON to a Python with TensorFlow "
           "(one-off venv: python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu)")

Runner = Callable[[], float]
"""One training step; returns its wall time in seconds."""


def _clip(state, cfg) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        for block in (state.critic.block1, state.critic.block2, state.critic.block3):
            block.conv.weight.clamp_(-cfg.optim.critic_clip, cfg.optim.critic_clip)


def _update(state, cfg, loss_s, l1) -> None:  # type: ignore[no-untyped-def]
    s_params = list(state.segmentor.parameters())
    d_params = list(state.critic.parameters())
    loss_s.backward(inputs=s_params, retain_graph=True)
    (-l1).backward(inputs=d_params)
    state.opt_s.step()
    state.opt_d.step()
    state.opt_s.zero_grad(set_to_none=True)
    state.opt_d.zero_grad(set_to_none=True)
    _clip(state, cfg)


def forward_losses(state, cfg, image, mask, dtype):  # type: ignore[no-untyped-def]
    """The step's forward: (loss_s, l1) under the autocast of ``dtype`` (None = fp32)."""
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        pred = state.segmentor(image)
        l1 = multiscale_l1(state.critic(image, pred), state.critic(image, mask), cfg.loss.l1_mode)
        loss_s = l1 + cfg.loss.dice_weight * dice_loss(pred.float(), mask, cfg.loss.dice_eps)
    return loss_s, l1


def minimal_step(state, cfg, image, mask, dtype) -> None:  # type: ignore[no-untyped-def]
    """The same SegAN-CAT step written as plainly as possible."""
    loss_s, l1 = forward_losses(state, cfg, image, mask, dtype)
    _update(state, cfg, loss_s, l1)


def _timed(fn: Callable[[], object]) -> Runner:
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


def _config(name: str, channels_last: bool, amp: str):  # type: ignore[no-untyped-def]
    width, crop, batch = SIZES[name]
    return load_config(overrides={"model.width": width, "data.train_crop": crop,
                                  "data.batch_size": batch, "train.channels_last": channels_last,
                                  "train.device": "cpu", "train.amp": amp})


def torch_runners(name: str, channels_last: bool, amp: str, compile_: bool,
                  image: torch.Tensor, mask: torch.Tensor) -> dict[str, Runner]:
    """``trainer``, ``minimal`` and (with ``compile_``) ``compile`` steps for one precision."""
    cfg = _config(name, channels_last, amp)
    device = torch.device("cpu")
    autocast, scalers = autocast_and_scalers(cfg, device)
    dtype = autocast_dtype(amp, device)
    trainer_state, minimal_state = build_state(cfg, device), build_state(cfg, device)
    runners = {
        "trainer": _timed(lambda: train_step(trainer_state, cfg, image, mask, scalers, autocast)),
        "minimal": _timed(lambda: minimal_step(minimal_state, cfg, image, mask, dtype)),
    }
    if compile_:
        compiled_state = build_state(cfg, device)
        losses = torch.compile(lambda x, y: forward_losses(compiled_state, cfg, x, y, dtype),
                               dynamic=False)

        s_params = list(compiled_state.segmentor.parameters())
        d_params = list(compiled_state.critic.parameters())

        def compiled_step() -> None:
            # ONE backward: AOTAutograd's compiled backward computes every input's gradient
            # whatever ``inputs=`` asks, so the two backward calls of the eager step would run
            # it twice. d(loss_s)/dD = dL1/dD (the dice term does not depend on D), so D's
            # gradient of −L1 is minus D's gradient of loss_s: the same update, one pass.
            loss_s, _ = losses(image, mask)
            grads = torch.autograd.grad(loss_s, s_params + d_params)
            for p, g in zip(s_params, grads[:len(s_params)], strict=True):
                p.grad = g
            for p, g in zip(d_params, grads[len(s_params):], strict=True):
                p.grad = -g
            compiled_state.opt_s.step()
            compiled_state.opt_d.step()
            compiled_state.opt_s.zero_grad(set_to_none=True)
            compiled_state.opt_d.zero_grad(set_to_none=True)
            _clip(compiled_state, cfg)
        runners["compile"] = _timed(compiled_step)
    return runners


class TFWorker:
    """``bench/step_tf.py --serve`` in another interpreter: one timed TF step on request."""

    def __init__(self, python: str, width: float, crop: int, batch: int, amp: str,
                 threads: int) -> None:
        cmd = [python, str(STEP_TF), "--serve", "--width", str(width), "--crop", str(crop),
               "--batch", str(batch), "--channels", str(CHANNELS), "--amp", amp,
               "--threads", str(threads)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        self.info = self._read()
        if "skipped" in self.info:
            self.close()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.proc.wait()
        return {"skipped": f"bench/step_tf.py exited with code {self.proc.returncode} "
                           "before it was ready"}

    def step(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("1\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "step_s" not in reply:
            raise RuntimeError(f"TF worker: {reply}")
        return float(reply["step_s"][0])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("0\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def interleaved(runners: dict[str, Runner], steps: int) -> dict[str, list[float]]:
    """``steps`` rounds of one step of each runner, the order rotated every round."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(steps):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(runners[n]())
    return times


def bench_size(name: str, layout: str, modes: list[str], steps: int, compile_: bool,
               tf_python: str | None, tf_amps: list[str], threads: int) -> tuple[dict, list[str]]:
    """Every column of one size and layout, timed interleaved. Returns (results, notes)."""
    width, crop, batch = SIZES[name]
    channels_last = layout == "channels_last"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    image = torch.rand(batch, CHANNELS, crop, crop).contiguous(memory_format=fmt)
    mask = (torch.rand(batch, 1, crop, crop) > 0.7).float().contiguous(memory_format=fmt)
    notes: list[str] = []
    runners: dict[str, Runner] = {}
    first: dict[str, float] = {}
    for amp in modes:
        for col, run in torch_runners(name, channels_last, amp, compile_, image, mask).items():
            key = f"{col}/{amp}"
            first[key] = run()  # compile happens here, for the compiled column
            for _ in range(2):
                run()
            runners[key] = run
    workers: list[TFWorker] = []
    try:
        for amp in tf_amps if tf_python else []:
            w = TFWorker(tf_python, width, crop, batch, amp, threads)  # type: ignore[arg-type]
            if "skipped" in w.info:
                notes.append(f"TF column skipped: {w.info['skipped']}")
                break
            seg = count_parameters(build_state(_config(name, True, "off"), torch.device("cpu")).segmentor)
            if w.info["params_segmentor"] != seg:
                notes.append(f"warning: TF segmentor has {w.info['params_segmentor']} parameters, "
                             f"PyTorch {seg}")
            workers.append(w)
            runners[f"tf/{amp}"] = w.step
            first[f"tf/{amp}"] = w.info["first_step_s"]
            notes.append(f"tf/{amp}: TensorFlow {w.info['tf_version']}, Keras {w.info['keras_version']}, "
                         f"{w.info['params_segmentor']:,} + {w.info['params_critic']:,} parameters, "
                         f"first step (trace) {w.info['first_step_s']:.1f} s")
        times = interleaved(runners, steps)
    finally:
        for w in workers:
            w.close()
    results = {}
    for key, ts in times.items():
        median = statistics.median(ts)
        results[key] = {"step_s": median, "slices_per_s": batch / median,
                        "first_s": first[key], "extra_s": max(0.0, first[key] - median)}
    return results, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,demo,real,full")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed rounds per size (a quarter, at least 5, for 'full')")
    parser.add_argument("--layouts", default="channels_last", help="channels_last,contiguous")
    parser.add_argument("--force-bf16", action="store_true", help="bf16 rows without AMX/AVX-512 BF16")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="the torch.compile column (default on)")
    parser.add_argument("--compile-cache", choices=("fresh", "keep"), default="fresh",
                        help="fresh: Inductor cache in a new temporary folder (cold compile cost)")
    parser.add_argument("--trial-seconds", type=float, default=720.0,
                        help="trial length for the compile pay-off line (720 = cpu budget)")
    parser.add_argument("--tf-python", default=os.environ.get("TF_PYTHON"),
                        help="a Python with TensorFlow for the TF column (default: $TF_PYTHON)")
    parser.add_argument("--tf-amp", default="off", help="TF precisions: off, or off,bf16")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for torch and TF (0 = torch's default)")
    args = parser.parse_args()
    if args.compile and args.compile_cache == "fresh":
        cache = tempfile.mkdtemp(prefix="step_inductor_")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    # one compiled function per size and precision: static shapes, no recompile limit
    torch._dynamo.config.cache_size_limit = 64
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    bf16 = sorted(cpu_flags() & set(CPU_BF16_FLAGS))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {threads} threads (torch and TF), "
          f"bf16 flags: {', '.join(bf16) or 'none'}, load average {load:.1f}")
    if threads > 1 and load > 0.5:
        print(f"note: the machine is busy (load {load:.1f}); OpenMP threads that wait for a busy "
              "core slow torch far more than TF: compare with --threads 1 on a shared machine")
    if not args.tf_python:
        print(TF_HINT)
    modes = ["off"] + (["bf16"] if bf16 or args.force_bf16 else [])
    tf_amps = [a for a in args.tf_amp.split(",") if a]
    header = (f"{'size':6s} {'width':>5s} {'crop':>5s} {'batch':>5s} {'layout':>13s} {'column':>8s} "
              f"{'amp':>5s} {'slices/s':>9s} {'step s':>8s} {'vs minimal':>10s} {'vs fp32':>7s} "
              f"{'vs TF':>6s} {'compile s':>9s}")
    print(header, flush=True)
    payoff: list[str] = []
    notes: list[str] = []
    for name in args.sizes.split(","):
        width, crop, batch = SIZES[name]
        for layout in args.layouts.split(","):
            steps = max(5, args.steps // (4 if name == "full" else 1))
            res, size_notes = bench_size(name, layout, modes, steps, args.compile,
                                         args.tf_python, tf_amps, threads)
            notes += [f"{name}: {n}" for n in size_notes]
            fp32 = res["trainer/off"]["slices_per_s"]
            tf = res.get("tf/off", {}).get("slices_per_s")
            for key, r in res.items():
                if key.startswith("minimal/"):
                    continue
                col, amp = key.split("/")
                vs_min = (f"{r['step_s'] / res[f'minimal/{amp}']['step_s']:10.3f}"
                          if col == "trainer" else f"{'':10s}")
                vs_tf = f"{r['slices_per_s'] / tf:6.2f}" if tf else f"{'-':>6s}"
                comp = f"{r['extra_s']:9.1f}" if col == "compile" else f"{'':9s}"
                print(f"{name:6s} {width:5.3g} {crop:5d} {batch:5d} {layout:>13s} {col:>8s} "
                      f"{amp:>5s} {r['slices_per_s']:9.1f} {r['step_s']:8.4f} {vs_min} "
                      f"{r['slices_per_s'] / fp32:7.2f} {vs_tf} {comp}", flush=True)
                if col == "compile":
                    eager = res[f"trainer/{amp}"]["slices_per_s"]
                    saved = args.trial_seconds * (1 - eager / r["slices_per_s"])
                    cost = r["extra_s"]
                    verdict = "pays" if saved > cost else "does not pay"
                    payoff.append(f"{name} {amp}: compiled/eager {r['slices_per_s'] / eager:.2f}×; "
                                  f"a {args.trial_seconds:.0f} s trial saves {saved:.0f} s of eager "
                                  f"steps vs {cost:.0f} s to compile: {verdict}")
    for line in notes:
        print(line)
    if payoff:
        print(f"torch.compile pay-off (cold compile, Inductor cache: {args.compile_cache}):")
        for line in payoff:
            print("  " + line)


if __name__ == "__main__":
    main()

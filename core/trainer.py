"""SegAN / SegAN-CAT training loop: the two-network step, validation, checkpoints.

``fit(cfg, out_dir)`` trains from scratch, from a transfer source, or resumes
from ``out_dir/last.pt``; it keeps ``out_dir/best.pt`` (best validation mean
per-volume dice). Progress leaves through ``callback(report)`` once per epoch;
a callback may raise ``StopTraining`` to end cleanly.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.averaging import WeightAverage
from core.checkpoint import (
    load_checkpoint,
    load_matching,
    load_resume_checkpoint,
    save_checkpoint,
    weights_digest,
)
from core.config import ExperimentConfig
from core.data.store_facts import store_facts
from core.device import autocast_dtype, configure_backends, memory_report, resolve_device
from core.errors import ConfigError
from core.freezing import Strategy, apply_strategy, get_strategy, set_train_mode
from core.losses import dice_loss, multiscale_l1
from core.model import Critic, Segmentor, build_networks
from core.training_data import (
    TrainData,
    device_batches_for,
    epoch_order,
    store_data,
)
from core.validation import prepare_evaluated, validate
from core.version import code_version


class StopTraining(Exception):
    """Raised by a callback to stop after the current epoch (checkpoints are kept)."""


Callback = Callable[[dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Everything that changes during training (what a checkpoint stores)."""

    segmentor: Segmentor
    critic: Critic
    opt_s: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    strategy: Strategy
    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    init_digest: str = ""
    seconds: float = 0.0
    """Training wall time over every invocation (resume continues the time budget)."""
    average: WeightAverage | None = None
    """Moving average of the segmentor's weights (``train.ema_decay`` > 0), else None."""
    step_modules: tuple[Callable[..., Any], Callable[..., Any]] | None = None
    """Compiled segmentor and critic the training step calls (``train.compile``); they
    share the parameters of ``segmentor`` and ``critic``, which checkpoints store."""

    @property
    def evaluated(self) -> Segmentor:
        """The segmentor validation, ``best.pt`` and ``predict`` use."""
        return self.average.model if self.average is not None else self.segmentor  # type: ignore[return-value]


@dataclass(frozen=True)
class FitResult:
    best_path: Path
    last_path: Path
    best_score: float
    best_epoch: int
    epochs: int
    steps: int
    stopped: str
    """Why training ended: max_epochs, patience, max_steps, max_seconds, callback."""
    init_digest: str
    history: list[dict[str, float]]


def _rmsprop(params: list[torch.nn.Parameter], lr: float, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    # an optimiser with no parameters is legal here: a fully frozen critic never steps
    return torch.optim.RMSprop(params or [torch.nn.Parameter(torch.zeros(1))], lr=lr,
                               alpha=cfg.optim.rho, eps=cfg.optim.eps)


def build_state(cfg: ExperimentConfig, device: torch.device) -> TrainState:
    """Networks (with transfer weights when the strategy loads a source) and optimisers."""
    nets = build_networks(len(cfg.data.modalities), cfg.model)
    strategy = get_strategy(cfg.transfer.freeze)
    source = None
    if strategy.loads_source:
        source = load_checkpoint(cfg.transfer.source)
        load_matching(nets.segmentor, source["segmentor"], f"segmentor from {cfg.transfer.source}")
        load_matching(nets.critic, source["critic"], f"critic from {cfg.transfer.source}")
    apply_strategy(nets.segmentor, nets.critic, strategy)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    seg = nets.segmentor.to(device).to(memory_format=memory_format)  # type: ignore[call-overload]
    crit = nets.critic.to(device).to(memory_format=memory_format)  # type: ignore[call-overload]
    opt_s = _rmsprop([p for p in seg.parameters() if p.requires_grad], cfg.optim.lr_s, cfg)
    opt_d = _rmsprop([p for p in crit.parameters() if p.requires_grad], cfg.optim.lr_d, cfg)
    if source is not None and cfg.transfer.carry_optimizer:
        _carry_segmentor_optimizer(opt_s, source, strategy, cfg.transfer.source)
    average = WeightAverage(seg, cfg.train.ema_decay) if cfg.train.ema_decay else None
    return TrainState(seg, crit, opt_s, opt_d, strategy, init_digest=weights_digest(seg, crit),
                      average=average)


def _carry_segmentor_optimizer(opt_s: torch.optim.Optimizer, source: dict[str, Any],
                               strategy: Strategy, where: str) -> None:
    """Reference behaviour: the segmentor's RMSprop state carries over, the critic's does not.

    Only possible when the same segmentor parameters train in source and target.
    """
    src = get_strategy(source["config"]["transfer"]["freeze"])
    seg_groups = [g for g in strategy.trainable if g.startswith("segmentor.")]
    if seg_groups != [g for g in src.trainable if g.startswith("segmentor.")]:
        raise ConfigError(
            f"transfer.carry_optimizer: {where} trained segmentor groups that differ from "
            f"strategy {strategy.name!r}; use carry_optimizer: false"
        )
    opt_s.load_state_dict(source["opt_s"])


def train_step(state: TrainState, cfg: ExperimentConfig, image: torch.Tensor, mask: torch.Tensor,
               scalers: tuple[Any, Any], autocast: Any) -> dict[str, float]:
    """One SegAN step: S minimises L1 + w·dice, D minimises −L1, same forward pass.

    ``image (B, C, H, W)``, ``mask (B, 1, H, W)`` float on the training device.
    """
    s_params = [p for p in state.segmentor.parameters() if p.requires_grad]
    d_params = [p for p in state.critic.parameters() if p.requires_grad]
    segmentor, critic = state.step_modules or (state.segmentor, state.critic)
    with autocast():
        pred = segmentor(image)
        l1 = multiscale_l1(critic(image, pred), critic(image, mask), cfg.loss.l1_mode)
        dice = dice_loss(pred.float(), mask, cfg.loss.dice_eps)
        loss_s = l1 + cfg.loss.dice_weight * dice
        loss_d = -l1
    scaler_s, scaler_d = scalers
    grads_s = torch.autograd.grad(scaler_s.scale(loss_s), s_params, retain_graph=bool(d_params))
    grads_d = torch.autograd.grad(scaler_d.scale(loss_d), d_params) if d_params else ()
    for params, grads, opt, scaler in ((s_params, grads_s, state.opt_s, scaler_s),
                                       (d_params, grads_d, state.opt_d, scaler_d)):
        if not params:
            continue
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    if d_params:
        state.critic.clip_kernels(cfg.optim.critic_clip)
    if state.average is not None:
        state.average.update(state.segmentor)
    state.step += 1
    return {"train/loss_s": loss_s.item(), "train/loss_d": loss_d.item(),
            "train/l1": l1.item(), "train/dice_loss": dice.item()}


def _checkpoint_state(state: TrainState, cfg: ExperimentConfig, extra: dict[str, Any],
                      for_use: bool = False) -> dict[str, Any]:
    """A checkpoint of ``state``. ``for_use`` (best.pt): ``segmentor`` holds the evaluated
    weights (the average when there is one); otherwise (last.pt) the raw weights that
    training continues from, with the average beside them as ``segmentor_average``."""
    average = {} if for_use or state.average is None else {
        "segmentor_average": state.average.state_dict()}
    segmentor = state.evaluated if for_use else state.segmentor
    return {
        "code_version": code_version(),
        "config": cfg.to_dict(),
        "in_channels": len(cfg.data.modalities),
        "modalities": list(cfg.data.modalities),
        "epoch": state.epoch,
        "step": state.step,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "init_digest": state.init_digest,
        "seconds": state.seconds,
        "segmentor": segmentor.state_dict(),
        **average,
        "critic": state.critic.state_dict(),
        "opt_s": state.opt_s.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        **extra,
    }


def restore_state(state: TrainState, ckpt: dict[str, Any]) -> None:
    """Continue exactly where ``ckpt`` (a ``last.pt``) stopped."""
    load_matching(state.segmentor, ckpt["segmentor"], "segmentor (resume)")
    load_matching(state.critic, ckpt["critic"], "critic (resume)")
    if state.average is not None:
        state.average.load_state_dict(ckpt.get("segmentor_average", state.segmentor.state_dict()))
    state.opt_s.load_state_dict(ckpt["opt_s"])
    state.opt_d.load_state_dict(ckpt["opt_d"])
    state.epoch, state.step = int(ckpt["epoch"]), int(ckpt["step"])
    state.best_score, state.best_epoch = float(ckpt["best_score"]), int(ckpt["best_epoch"])
    state.history = list(ckpt["history"])
    state.init_digest = str(ckpt.get("init_digest", ""))
    state.seconds = float(ckpt.get("seconds", 0.0))
    torch.set_rng_state(ckpt["rng"]["torch"])


def autocast_and_scalers(cfg: ExperimentConfig, device: torch.device) -> tuple[Callable[[], Any], tuple[Any, Any]]:
    """Autocast context and grad scalers of the step (``core.device.autocast_dtype``).

    Scalers only for fp16 (CUDA); bf16 has fp32's range and needs none.
    """
    dtype = autocast_dtype(cfg.train.amp, device)
    need_scaler = dtype == torch.float16
    scalers = (torch.amp.GradScaler("cuda", enabled=need_scaler),
               torch.amp.GradScaler("cuda", enabled=need_scaler))

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                              enabled=dtype is not None)

    return autocast, scalers


def fit(cfg: ExperimentConfig, out_dir: str | Path, callback: Callback | None = None,
        resume: bool = True,
        data_source: TrainData | None = None,
        provenance: dict[str, str] | None = None) -> FitResult:
    """Train per ``cfg``; resume from ``out_dir/last.pt`` when present and ``resume``.

    ``provenance`` (e.g. the study's budget and cell name) is recorded in every checkpoint
    beside the store facts and the resolved config.

    Data comes from the zarr store named by ``cfg.data.store`` unless a
    ``data_source`` is given (tests use small in-memory sets).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    device = resolve_device(cfg.train.device, "train.device")
    configure_backends(device)
    seed_everything(cfg.train.seed)
    state = build_state(cfg, device)
    if resume and (resumed := load_resume_checkpoint(out)[0]) is not None:
        restore_state(state, resumed)  # last.pt, else the newest readable fallback
    if cfg.train.compile:
        state.step_modules = (torch.compile(state.segmentor), torch.compile(state.critic))
    extra = {**store_facts(cfg.data.store), "provenance": dict(provenance or {})}
    data = cfg.data
    source = data_source or store_data(cfg)
    train_set = source.train
    feed = device_batches_for(train_set, cfg, device)  # None: a DataLoader on the host
    autocast, scalers = autocast_and_scalers(cfg, device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    stopped = "max_epochs"
    while state.epoch < cfg.train.max_epochs:
        epoch_start = time.monotonic()
        lr_factor = set_learning_rates(state, cfg)
        set_train_mode(state.segmentor, state.critic, state.strategy)
        train_set.set_epoch(state.epoch)
        order = epoch_order(train_set, cfg, state.epoch)
        drop_last = len(train_set) > data.batch_size
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
            feed.batches(order, data.batch_size, drop_last) if feed is not None else DataLoader(
                train_set,  # type: ignore[arg-type]
                batch_size=data.batch_size, sampler=order, drop_last=drop_last,
                num_workers=data.num_workers,
                pin_memory=device.type == "cuda",  # lets non_blocking copies overlap compute
            ))
        sums: dict[str, float] = {}
        n = 0
        for image, mask in batches:
            image = image.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            mask = mask.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            for k, v in train_step(state, cfg, image, mask, scalers, autocast).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        state.epoch += 1
        report: dict[str, Any] = {k: v / max(n, 1) for k, v in sums.items()}
        train_s = time.monotonic() - epoch_start
        report.update(epoch=state.epoch, step=state.step, **{"time/epoch_s": train_s,
                                                             "train/lr_factor": lr_factor},
                      **memory_report(device))
        if state.epoch % cfg.train.val_every == 0 or state.epoch == cfg.train.max_epochs:
            val_start = time.monotonic()
            prepare_evaluated(state, cfg, train_set, device, feed)
            val, chosen = validate(state, cfg, source, device)
            report.update(val)
            report["time/val_s"] = time.monotonic() - val_start
            if math.isfinite(val["val/dice"]) and val["val/dice"] > state.best_score:
                state.best_score, state.best_epoch = val["val/dice"], state.epoch
                save_checkpoint(best_path, _checkpoint_state(
                    state, cfg, {**extra, "metrics": report, "postprocess": chosen}, for_use=True))
        state.seconds += time.monotonic() - epoch_start  # the time cap counts validation too
        report["val/best_dice"] = state.best_score
        report["time/trial_s"] = state.seconds  # across resumes, as the time cap counts
        state.history.append({k: float(v) for k, v in report.items()})
        save_checkpoint(last_path, _checkpoint_state(state, cfg, {**extra, "metrics": report}))
        stop = _stop_reason(cfg, state)
        try:
            if callback is not None:
                callback({**report, "checkpoint": str(last_path), "best_checkpoint": str(best_path)})
        except StopTraining:
            stop = stop or "callback"
        if stop:
            stopped = stop
            break
    if not best_path.exists():  # no finite validation dice ever: keep the last weights as best
        prepare_evaluated(state, cfg, train_set, device, feed)
        save_checkpoint(best_path, _checkpoint_state(state, cfg, {**extra, "metrics": {}},
                                                     for_use=True))
    return FitResult(best_path, last_path, state.best_score, state.best_epoch, state.epoch,
                     state.step, stopped, state.init_digest, state.history)


def training_progress(cfg: ExperimentConfig, state: TrainState) -> float:
    """Fraction of the budget used, in [0, 1]: epochs of ``max_epochs`` or seconds of
    ``max_seconds``, whichever is further (a time-capped run decays on its clock)."""
    t = cfg.train
    done = state.epoch / t.max_epochs
    if t.max_seconds:
        done = max(done, state.seconds / t.max_seconds)
    return min(1.0, done)


def set_learning_rates(state: TrainState, cfg: ExperimentConfig) -> float:
    """Set this epoch's learning rates; returns the factor applied to ``optim.lr_*``.

    'constant' (the paper) or 'cosine': from 1 down to ``optim.lr_floor`` over the budget,
    so adversarial training settles instead of swinging to the last epoch.
    """
    o = cfg.optim
    factor = 1.0
    if o.lr_schedule == "cosine":
        progress = training_progress(cfg, state)
        factor = o.lr_floor + (1 - o.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))
    for opt, lr in ((state.opt_s, o.lr_s), (state.opt_d, o.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr * factor
    return factor


def _stop_reason(cfg: ExperimentConfig, state: TrainState) -> str:
    t = cfg.train
    if t.patience and state.best_epoch >= 0 and state.epoch - state.best_epoch >= t.patience:
        return "patience"
    if t.max_steps and state.step >= t.max_steps:
        return "max_steps"
    if t.max_seconds and state.seconds >= t.max_seconds:
        return "max_seconds"
    return ""

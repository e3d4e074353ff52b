"""What validation sees and scores: the evaluated segmentor (averaged weights, BatchNorm
statistics re-averaged over training slices) and its validation dice under the
post-processing the model will be used with."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from core.averaging import recalibrate_batchnorm
from core.config import ExperimentConfig
from core.evaluation import volumes
from core.postprocess import POSTPROCESSING
from core.training_data import EpochDataset, TrainData, epoch_indices

if TYPE_CHECKING:
    from core.trainer import TrainState


def prepare_evaluated(state: TrainState, cfg: ExperimentConfig, train_set: EpochDataset,
                      device: torch.device, feed: Any = None) -> None:
    """Give the evaluated segmentor the BatchNorm statistics it is validated and saved with:
    re-averaged over ``train.bn_recalibration`` training slices (a seeded subset of this
    epoch's crops), else the raw network's running statistics."""
    evaluated = state.evaluated
    if cfg.train.bn_recalibration:
        order = epoch_indices(len(train_set), cfg.train.bn_recalibration, cfg.train.seed + 1,
                              state.epoch)
        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        batch = cfg.data.batch_size

        def images(chunk: list[int]) -> torch.Tensor:
            if feed is not None:  # the split lives on the device (``data.on_device``)
                return feed.batch(chunk)[0]
            return torch.stack([train_set[i][0] for i in chunk]).to(device)

        batches = (images(order[start:start + batch]).contiguous(memory_format=memory_format)
                   for start in range(0, len(order), batch))
        recalibrate_batchnorm(evaluated, state.critic, state.strategy, batches)
    elif state.average is not None:
        state.average.sync_buffers(state.segmentor)


def validate(state: TrainState, cfg: ExperimentConfig, source: TrainData,
             device: torch.device) -> tuple[dict[str, float], str]:
    """``val/…`` means of the evaluated segmentor on the validation volumes, and the
    post-processing they were scored with: ``train.postprocess``, or under 'auto' the mode
    with the higher validation dice (ties: none), each mode's dice also reported."""
    auto = cfg.train.postprocess == "auto"
    modes = POSTPROCESSING if auto else (cfg.train.postprocess,)
    by_mode = volumes.evaluate_volumes_modes(state.evaluated, source.val(), modes,
                                             cfg.train.threshold, device,
                                             channels_last=cfg.train.channels_last,
                                             tta=cfg.train.tta)
    means = {mode: volumes.mean_metrics(results) for mode, results in by_mode.items()}

    def score(mode: str) -> tuple[float, bool]:
        dice = means[mode]["dice"]
        return (dice if math.isfinite(dice) else -math.inf, mode == "none")

    chosen = max(modes, key=score)
    report = {f"val/{k}": v for k, v in means[chosen].items()}
    if auto:
        report.update({f"val/dice_{mode}": means[mode]["dice"] for mode in modes})
    return report, chosen

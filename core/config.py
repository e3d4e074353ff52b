"""Typed, frozen experiment configuration: the paper's values are the defaults here.

These dataclasses are the one source of every default (the paper's values, segan-cat.md).
A config is built from layers merged onto them in order: a budget overlay
(``configs/train/<budget>.yaml``: smoke, demo, cpu, paper), optional overlay files (e.g.
the HPO winner) and dotted overrides from a grid cell or ``--set``. Unknown keys are
rejected with their full path and the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.nested import merge, read_yaml, unflatten
from core.postprocess import POSTPROCESSING
from core.tta import TTA_MODES
from core.vocabulary import MODALITIES, REGIONS

AMP_MODES = ("auto", "bf16", "fp16", "off")
ON_DEVICE_MODES = ("auto", "on", "off")
LR_SCHEDULES = ("constant", "cosine")
EXECUTION_KEYS = ("data.cache", "data.shared_cache", "data.num_workers", "data.on_device",
                  "train.compile")
"""Settings of how a cell runs, not of what it learns: left out of a cell's identity
(``study.grids.trial_hash``), so a study resumes across machines and code versions that
add such settings."""
RETIRED_KEYS = {
    "data.eval_crop": "the evaluation window belongs to the protocol (core/protocol.py), "
                      "not to a config",
}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class ModelConfig:
    critic_input: str = "concat"
    """'concat' (SegAN-CAT: image ⊕ mask) or 'multiply' (SegAN: image × mask)."""
    width: float = 1.0
    """Filter-count multiplier; 1.0 is the paper's 64…512 (≈4.3 M segmentor params)."""
    bn_momentum: float = 0.9
    """PyTorch convention (weight of the new batch). Reference Keras code: 0.1 → 0.9 here."""
    bn_eps: float = 1e-5
    leaky_slope: float = 0.3
    conv_bias: bool = False
    """Bias on convs followed by BN (reference: none)."""

    def __post_init__(self) -> None:
        _check(self.critic_input in ("concat", "multiply"), "model.critic_input",
               f"must be 'concat' or 'multiply', got {self.critic_input!r}")
        _check(self.width > 0, "model.width", f"must be > 0, got {self.width}")
        _check(0 < self.bn_momentum <= 1, "model.bn_momentum", "must be in (0, 1]")
        _check(self.bn_eps > 0, "model.bn_eps", "must be > 0")


@dataclass(frozen=True)
class LossConfig:
    l1_mode: str = "global"
    """'global' (the authors' code: one mean over all critic features, so each layer weighs
    by its size, as in the paper's Eq. 1) or 'per_layer' (mean of per-layer means)."""
    dice_weight: float = 1.0
    """Weight of the dice term in the segmentor loss; 0 gives the SegAN baseline."""
    dice_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check(self.l1_mode in ("per_layer", "global"), "loss.l1_mode",
               f"must be 'per_layer' or 'global', got {self.l1_mode!r}")
        _check(self.dice_weight >= 0, "loss.dice_weight", f"must be >= 0, got {self.dice_weight}")
        _check(self.dice_eps > 0, "loss.dice_eps", "must be > 0")


@dataclass(frozen=True)
class OptimConfig:
    lr_s: float = 2e-5
    lr_d: float = 2e-5
    rho: float = 0.9
    """RMSprop smoothing constant (PyTorch ``alpha``)."""
    eps: float = 1e-7
    critic_clip: float = 0.05
    """Critic conv kernels are clipped to ±this after every critic update."""
    lr_schedule: str = "constant"
    """'constant' (the paper) or 'cosine' (decay to ``lr_floor``·lr over the epoch or
    time budget, whichever ends first; see ``core.trainer.set_learning_rates``)."""
    lr_floor: float = 0.05
    """Final learning-rate factor of the cosine schedule."""

    def __post_init__(self) -> None:
        _check(self.lr_s > 0, "optim.lr_s", f"must be > 0, got {self.lr_s}")
        _check(self.lr_d > 0, "optim.lr_d", f"must be > 0, got {self.lr_d}")
        _check(0 <= self.rho < 1, "optim.rho", f"must be in [0, 1), got {self.rho}")
        _check(self.critic_clip > 0, "optim.critic_clip", "must be > 0")
        _check(self.lr_schedule in LR_SCHEDULES, "optim.lr_schedule",
               f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        _check(0 <= self.lr_floor <= 1, "optim.lr_floor", f"must be in [0, 1], got {self.lr_floor}")


@dataclass(frozen=True)
class DataConfig:
    store: str = ""
    """Path or URL of the zarr store; empty means the study's synthetic default."""
    modalities: tuple[str, ...] = MODALITIES
    """Input channels in order: 4 for multimodal, 1 for unimodal models."""
    region: str = "wt"
    train_crop: int = 160
    """Side of the random training crops; evaluation is fixed by ``core.protocol``."""
    batch_size: int = 64
    slices_per_epoch: int = 0
    """0 = every training slice each epoch; N = a seeded random subset of N slices."""
    num_workers: int = 0
    cache: bool = True
    """Load the split into memory (small stores) instead of reading zarr per slice."""
    shared_cache: bool = True
    """With ``cache``: the trials of a node map one shared copy of the training split
    (``core.data.shared_cache``, in /dev/shm) instead of one private copy each."""
    on_device: str = "auto"
    """Hold the cached training split on the training device as float16 and cut batches
    there (``core.data.device_batches``): 'auto' (on CUDA), 'on' or 'off'."""
    tumour_fraction: float = 0.0
    """Share of each epoch's training slices drawn from slices that hold tumour (0 = every
    slice alike, the paper; BraTS crops are roughly half tumour-free slices)."""
    fold: int = -1
    """-1: the store's train/val split; k: cross-validation fold k of a store prepared with
    ``--folds K`` (fold k validates, the other non-test cases train; test is unchanged)."""

    def __post_init__(self) -> None:
        _check(len(self.modalities) > 0, "data.modalities", "needs at least one modality")
        for m in self.modalities:
            _check(m in MODALITIES, "data.modalities",
                   f"unknown modality {m!r}{_suggest(m, MODALITIES)}; valid: {', '.join(MODALITIES)}")
        _check(len(set(self.modalities)) == len(self.modalities), "data.modalities", "duplicates")
        _check(self.region in REGIONS, "data.region", f"must be one of {REGIONS}, got {self.region!r}")
        _check(self.train_crop > 0 and self.train_crop % 16 == 0, "data.train_crop",
               f"must be a positive multiple of 16, got {self.train_crop}")
        _check(self.batch_size > 0, "data.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.slices_per_epoch >= 0, "data.slices_per_epoch", "must be >= 0")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(0 <= self.tumour_fraction <= 1, "data.tumour_fraction", "must be in [0, 1]")
        _check(self.on_device in ON_DEVICE_MODES, "data.on_device",
               f"must be one of {', '.join(ON_DEVICE_MODES)}, got {self.on_device!r}")
        _check(self.fold >= -1, "data.fold", f"must be -1 (no folds) or a fold index, got {self.fold}")


@dataclass(frozen=True)
class TrainConfig:
    max_epochs: int = 2000
    patience: int = 300
    """Early stopping: epochs without a better validation dice (0 = off)."""
    max_steps: int = 0
    """Cap on optimisation steps (0 = none); checked at epoch ends."""
    max_seconds: float = 0.0
    """Wall-time cap in seconds (0 = none); checked at epoch ends."""
    seed: int = 1234567890
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'."""
    amp: str = "auto"
    """Mixed precision of the training step: 'auto' (bf16 on CPUs with AMX/AVX-512 BF16 and
    on CUDA GPUs that have it, fp16 + loss scaling on older GPUs, else fp32), 'bf16',
    'fp16' (CUDA only) or 'off'. See ``core.device.autocast_dtype``."""
    channels_last: bool = True
    threshold: float = 0.5
    val_every: int = 1
    bn_recalibration: int = 0
    """Training slices over which the segmentor's BatchNorm statistics are re-averaged
    before each validation (0 = off, the paper: running statistics as trained)."""
    ema_decay: float = 0.0
    """Validation, ``best.pt`` and ``predict`` use an exponential moving average of the
    segmentor's weights with this decay per step (0 = off, the paper: the weights as
    trained); ``core.averaging``."""
    postprocess: str = "none"
    """Post-processing of predicted volumes (``core.postprocess``): 'none' (the paper),
    'largest_component', or 'auto' (the one with the higher validation dice, per model;
    stored in ``best.pt`` and used by the study's test evaluation and ``predict``)."""
    tta: str = "none"
    """Test-time augmentation of every volume prediction (``core.tta``): 'none' (the
    paper) or 'flip' (mean with the left-right mirror); validation, the study's test
    evaluation and ``predict`` alike."""
    compile: bool = False
    """``torch.compile`` the segmentor and critic for the training step: an option for
    GPUs; on CPUs it measured slower than eager at every real size (bench/step.py)."""

    def __post_init__(self) -> None:
        _check(self.max_epochs > 0, "train.max_epochs", f"must be > 0, got {self.max_epochs}")
        _check(self.patience >= 0, "train.patience", "must be >= 0")
        _check(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        _check(self.max_seconds >= 0, "train.max_seconds", "must be >= 0")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "train.device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _check(self.amp in AMP_MODES, "train.amp",
               f"must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        _check(0 < self.threshold < 1, "train.threshold", "must be in (0, 1)")
        _check(self.val_every > 0, "train.val_every", "must be > 0")
        _check(self.bn_recalibration >= 0, "train.bn_recalibration", "must be >= 0")
        _check(self.postprocess in (*POSTPROCESSING, "auto"), "train.postprocess",
               f"must be one of {', '.join((*POSTPROCESSING, 'auto'))}, got {self.postprocess!r}")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.tta in TTA_MODES, "train.tta",
               f"must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")


@dataclass(frozen=True)
class TransferConfig:
    source: str = ""
    """Source checkpoint (absolute path) to start from; empty = from scratch."""
    freeze: str = "scratch"
    """Freezing strategy name from core/freezing.py."""
    carry_optimizer: bool = False
    """Carry the source's optimiser state (reference code: segmentor's only)."""
    max_epochs: int = 300
    """Epoch budget of transfer-grid cells and their from-scratch baseline (paper: 300)."""
    max_seconds: float = 0.0
    """Wall-time cap of transfer-grid cells and their baseline (0 = ``train.max_seconds``)."""

    def __post_init__(self) -> None:
        from core.freezing import STRATEGIES

        _check(self.freeze in STRATEGIES, "transfer.freeze",
               f"unknown strategy {self.freeze!r}{_suggest(self.freeze, STRATEGIES)}; "
               f"valid: {', '.join(STRATEGIES)}")
        _check(self.max_epochs > 0, "transfer.max_epochs", "must be > 0")
        _check(self.max_seconds >= 0, "transfer.max_seconds", "must be >= 0")
        _check(self.freeze == "scratch" or bool(self.source), "transfer.source",
               f"strategy {self.freeze!r} needs a source checkpoint")


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def replace(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with dotted overrides applied, e.g. ``{"train.seed": 3}``."""
        return from_dict(merge(self.to_dict(), unflatten(overrides)))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the field type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(str(v) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # YAML reads 2e-5 as a string
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in RETIRED_KEYS:
            raise ConfigError(f"config key {path!r} no longer exists: {RETIRED_KEYS[path]}")
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_suggest(key, names)}")
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{path}.")
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Strictly build a config; unknown keys and bad types raise ConfigError."""
    return _build(ExperimentConfig, data, "")


AUTO_BUDGETS = {"synthetic": "demo", "real": "cpu"}
"""What ``budget: auto`` means: a fast demo on the embedded synthetic store; the CPU
recipe measured on real BraTS (bench/real_data.py) on any prepared real store."""


def resolve_budget(budget: str | None, synthetic: bool) -> tuple[str, str]:
    """(budget name, why) for a requested budget (None/'auto' = chosen by the store)."""
    if budget and budget != "auto":
        budget_path(budget)
        return budget, "given"
    kind = "synthetic" if synthetic else "real"
    return AUTO_BUDGETS[kind], f"auto: {kind} store"


def budget_path(budget: str) -> Path:
    path = CONFIG_DIR / "train" / f"{budget}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in (CONFIG_DIR / "train").glob("*.yaml"))
        raise ConfigError(f"unknown budget {budget!r}{_suggest(budget, options)}; valid: {', '.join(options)}")
    return path


def load_config(
    budget: str | None = None,
    overlays: typing.Sequence[Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """Defaults (this module) ← budget overlay ← overlay files ← dotted overrides, strictly."""
    layers: list[Path] = []
    if budget:
        layers.append(budget_path(budget))
    layers.extend(Path(p) for p in overlays)
    data: dict[str, Any] = {}
    for path in layers:
        layer = read_yaml(path)
        try:
            from_dict(merge(from_dict({}).to_dict(), layer))  # validate each layer on its own
        except ConfigError as exc:
            raise ConfigError(f"{path.name}: {exc}") from None
        data = merge(data, layer)
    return from_dict(merge(data, unflatten(overrides or {})))

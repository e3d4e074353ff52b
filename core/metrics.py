"""Per-volume segmentation metrics and confidence intervals.

Counts are summed over every slice of a volume before any ratio is taken (the
paper's per-volume dice, not a mean of per-slice dice).

Undefined values: a metric whose denominator is zero is NaN and is left out of
means, and ``summarize`` reports how many volumes were excluded:
- dice = 2TP / (2TP + FP + FN): NaN only when truth and prediction are both empty;
- precision = TP / (TP + FP): NaN when the prediction is empty;
- sensitivity = TP / (TP + FN): NaN when the truth is empty;
- specificity = TN / (TN + FP): NaN when the volume has no negative voxel.
A missed tumour (empty prediction, non-empty truth) therefore scores dice 0 and
sensitivity 0, never silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from core.vocabulary import STUDY_METRICS


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def confusion_counts(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> Counts:
    """Voxel counts of a prediction against a truth of the same shape (any ndim).

    ``pred`` holds probabilities (thresholded with ``>= threshold``) or a binary
    mask; ``truth`` is binary (non-zero = positive).
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    p = pred >= threshold if pred.dtype.kind == "f" else pred.astype(bool)
    t = truth.astype(bool)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return Counts(tp, fp, fn, int(p.size - tp - fp - fn))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def dice(c: Counts) -> float:
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def precision(c: Counts) -> float:
    return _ratio(c.tp, c.tp + c.fp)


def sensitivity(c: Counts) -> float:
    return _ratio(c.tp, c.tp + c.fn)


def specificity(c: Counts) -> float:
    return _ratio(c.tn, c.tn + c.fp)


_FUNCTIONS = {"dice": dice, "precision": precision, "sensitivity": sensitivity,
              "specificity": specificity}
METRICS = {name: _FUNCTIONS[name] for name in STUDY_METRICS}
"""What trials log (``core.vocabulary.STUDY_METRICS``) by name."""


def volume_metrics(c: Counts) -> dict[str, float]:
    """dice, precision, sensitivity, specificity for one volume's counts."""
    return {"dice": dice(c), "precision": precision(c), "sensitivity": sensitivity(c),
            "specificity": specificity(c)}


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of finite ``values`` (1-D)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]))
    if np.all(v == v[0]):  # no spread: scipy warns on a degenerate resample distribution
        return (float(v[0]), float(v[0]))
    from scipy import stats

    res = stats.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level,
                          method="percentile", vectorized=True, axis=-1,
                          rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


@dataclass(frozen=True)
class Summary:
    mean: float
    ci_low: float
    ci_high: float
    n: int
    """Volumes that entered the mean."""
    n_excluded: int
    """Volumes whose value was undefined (NaN) by the empty-mask rule."""

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(values: list[float] | np.ndarray, seed: int = 0, n_boot: int = 2000) -> Summary:
    """Mean over volumes with a 95% bootstrap CI; NaNs excluded and counted."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    mean = float(finite.mean()) if finite.size else math.nan
    lo, hi = bootstrap_ci(finite, n_boot=n_boot, seed=seed)
    return Summary(mean, lo, hi, int(finite.size), int(v.size - finite.size))


def paired_difference(
    a: np.ndarray, b: np.ndarray, seed: int = 0, n_boot: int = 2000
) -> Summary:
    """Mean of ``a − b`` over volumes where both are defined, with a bootstrap CI."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    return summarize(a - b, seed=seed, n_boot=n_boot)

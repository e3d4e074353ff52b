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

Empty-truth policy of every summary over volumes (trial metrics and the report):
**dice, precision, sensitivity and HD95 are averaged over the volumes whose truth is
non-empty** (in the evaluation window), so every model of a comparison is scored on the
same volumes, and on them dice is always defined (a missed tumour scores 0). Tumour-free
volumes are counted apart, with how many of them the model predicted tumour on
(false-positive volumes); specificity is averaged over every volume.
(``policy_values``, ``tumour_free``.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.vocabulary import STUDY_METRICS, VOLUME_METRICS


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
METRICS = {name: _FUNCTIONS[name] for name in VOLUME_METRICS}
"""The voxel-count metrics (``core.vocabulary.VOLUME_METRICS``) by name."""
SCORED_ON_EVERY_VOLUME = frozenset({"specificity"})
"""Metrics the empty-truth policy averages over tumour-free volumes too (module docstring)."""


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


# -- the empty-truth policy ------------------------------------------------------
def truth_present(row: Mapping[str, Any]) -> bool:
    """Whether a per-volume row (``tp``, ``fn`` …) has a non-empty truth (tp + fn > 0)."""
    return int(row["tp"]) + int(row["fn"]) > 0


def _value(x: Any) -> float:
    """A logged per-volume value as a float: numbers as they are, strict JSON's "inf" /
    "-inf" strings as ±inf (HD95 with one empty mask), anything else (null) as NaN."""
    if isinstance(x, str) and x in ("inf", "-inf"):
        return float(x)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def policy_values(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    """(len(rows),) float64 values of metric ``name`` under the empty-truth policy.

    Tumour-free rows are NaN for every metric except ``SCORED_ON_EVERY_VOLUME``; a
    missing or null value is NaN; ``inf`` (HD95 with one empty mask) is kept.
    """
    out = np.array([_value(r.get(name)) for r in rows], dtype=float).reshape(len(rows))
    if name not in SCORED_ON_EVERY_VOLUME:
        present = np.array([truth_present(r) for r in rows], dtype=bool).reshape(len(rows))
        out[~present] = math.nan
    return out


def tumour_free(rows: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(tumour-free volumes, those of them with a false positive: ``fp > 0``)."""
    free = [r for r in rows if not truth_present(r)]
    return len(free), sum(int(r["fp"]) > 0 for r in free)


def policy_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """What a trial logs for one evaluation set, under the empty-truth policy.

    Per study metric (``core.vocabulary.STUDY_METRICS``): ``<m>``, ``<m>_ci_low``,
    ``<m>_ci_high`` (mean, 95% bootstrap CI over volumes, NaN/inf left out); ``n_volumes``
    and ``n_excluded`` (volumes with a finite / undefined dice among tumour volumes);
    ``hd95_n_inf`` (tumour volumes with no predicted voxel); ``n_tumour_free`` and
    ``n_false_positive`` (tumour-free volumes, and those with a predicted voxel).
    """
    out: dict[str, float] = {}
    free, false_positive = tumour_free(rows)
    for name in STUDY_METRICS:
        values = policy_values(rows, name)
        s = summarize(values)
        out.update({name: s.mean, f"{name}_ci_low": s.ci_low, f"{name}_ci_high": s.ci_high})
        if name == "dice":
            out.update(n_volumes=s.n, n_excluded=s.n_excluded - free)
        if name == "hd95":
            out["hd95_n_inf"] = int(np.isinf(values).sum())
    out.update(n_tumour_free=free, n_false_positive=false_positive)
    return out


# -- intervals over seeds and volumes --------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A mean over training seeds and test volumes with its 95% interval."""

    mean: float
    low: float
    high: float
    se: float
    """Bootstrap standard error of ``mean``."""
    df: float
    """Degrees of freedom of the t quantile (Welch–Satterthwaite, see ``hierarchical_interval``)."""
    p_value: float
    """Two-sided p of ``mean == 0`` from the same t (meaningful for differences)."""
    n_seeds: int
    n_volumes: int


def _seed_means(values: np.ndarray) -> np.ndarray:
    """(..., S, V) → (..., S) mean over finite volumes; NaN for a seed with none."""
    finite = np.isfinite(values)
    n = finite.sum(axis=-1)
    total = np.where(finite, values, 0.0).sum(axis=-1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _grand_mean(values: np.ndarray) -> np.ndarray:
    """(..., S, V) → (...): mean over seeds of the per-seed means (seeds with none skipped)."""
    m = _seed_means(values)
    ok = np.isfinite(m)
    return np.where(ok.any(axis=-1), np.where(ok, m, 0.0).sum(axis=-1)
                    / np.maximum(ok.sum(axis=-1), 1), np.nan)


def _satterthwaite_df(values: np.ndarray) -> float:
    """Degrees of freedom of seed (S − 1) and volume (V − 1) variance components combined."""
    s, v = values.shape
    seed_var = float(np.var(_seed_means(values), ddof=1)) / s if s > 1 else 0.0
    vol_var = float(np.var(_seed_means(values.T), ddof=1)) / v if v > 1 else 0.0
    if seed_var + vol_var == 0:
        return math.inf
    parts = (seed_var**2 / (s - 1) if s > 1 else 0.0) + (vol_var**2 / (v - 1) if v > 1 else 0.0)
    return (seed_var + vol_var) ** 2 / parts


def _inflated(values: np.ndarray, mean: float) -> np.ndarray:
    """(S, V) values with seed and volume deviations from ``mean`` scaled by √(S/(S−1)) and
    √(V/(V−1)): a bootstrap of n values has (n−1)/n of the true variance of their mean,
    which matters with 3 seeds (Davison & Hinkley 1997, §3.8)."""
    s, v = values.shape
    seed_dev = _seed_means(values) - mean
    vol_dev = _seed_means(values.T) - mean
    k_seed = math.sqrt(s / (s - 1)) - 1 if s > 1 else 0.0
    k_vol = math.sqrt(v / (v - 1)) - 1 if v > 1 else 0.0
    return values + k_seed * seed_dev[:, None] + k_vol * vol_dev[None, :]


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) grand means of resampled seeds × resampled volumes (vectorised, in blocks)."""
    rng = np.random.default_rng(seed)
    s, v = values.shape
    out = []
    block = max(1, 2_000_000 // max(s * v, 1))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        si = rng.integers(0, s, (b, s))
        vi = rng.integers(0, v, (b, v))  # one volume draw per replicate, shared by its seeds
        out.append(_grand_mean(values[si[:, :, None], vi[:, None, :]]))
    stats = np.concatenate(out)
    return stats[np.isfinite(stats)]


def hierarchical_interval(values: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0, bounds: tuple[float, float] = (-math.inf, math.inf)
                          ) -> Interval | None:
    """Mean over seeds and volumes with a hierarchical bootstrap interval.

    ``values``: (S seeds, V volumes) float, NaN or inf = not scored (left out). The mean is
    the mean over seeds of each seed's mean over its volumes. Each bootstrap replicate
    resamples the seeds with replacement, then the volumes with replacement — one volume
    draw shared by the replicate's seeds, since every seed was scored on the same test
    volumes (drawing volumes independently per seed would treat a hard volume as S
    independent ones and shrink the interval). Seed and volume deviations are first
    inflated (``_inflated``) so the bootstrap variance is not biased low. The interval is
    mean ± t × bootstrap SE with Welch–Satterthwaite degrees of freedom from the seed
    (S − 1) and volume (V − 1) variance components: with 3 seeds a percentile interval
    would undercover when the seed variance dominates. One seed: volumes only (df V − 1).
    Clipped to ``bounds``.
    Returns None when no value is finite.
    """
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return None
    a = np.where(np.isfinite(a), a, np.nan).reshape(a.shape[0] if a.ndim == 2 else 1, -1)
    a = a[np.isfinite(a).any(axis=1)][:, np.isfinite(a).any(axis=0)]
    if a.size == 0:
        return None
    mean = float(_grand_mean(a))
    boot = _bootstrap_means(_inflated(a, mean), n_boot, seed)
    se = float(np.std(boot, ddof=1)) if boot.size > 1 else 0.0
    df = _satterthwaite_df(a)
    if se > 0:
        half = float(stats.t.ppf(0.5 + level / 2, df)) * se
        p = float(2 * stats.t.sf(abs(mean) / se, df))
    else:
        half, p = 0.0, 1.0 if mean == 0 else 0.0
    low, high = max(mean - half, bounds[0]), min(mean + half, bounds[1])
    return Interval(mean, low, high, se, df, p, int(a.shape[0]), int(a.shape[1]))

"""The hierarchical interval (seeds, then volumes): hand-checkable cases and its coverage on
synthetic tables of known seed and volume variance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.metrics import bootstrap_ci, hierarchical_interval
from study.report_stats import holm

TRUE_MEAN = 0.7


def table(rng: np.random.Generator, seeds: int, volumes: int, seed_sd: float, volume_sd: float,
          noise_sd: float) -> np.ndarray:
    """(seeds, volumes) dice-like values: mean + seed effect + volume effect + noise. Every
    seed is scored on the same volumes (crossed), as in a study."""
    return (TRUE_MEAN + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, volume_sd, (1, volumes))
            + rng.normal(0, noise_sd, (seeds, volumes)))


def coverage(seed_sd: float, volume_sd: float, draws: int = 300, seeds: int = 3,
             volumes: int = 30) -> tuple[float, float]:
    """(share of hierarchical intervals holding the true mean, same for the old interval:
    a bootstrap over volumes of seed-averaged values)."""
    rng = np.random.default_rng(2026)
    hits = old = 0
    for draw in range(draws):
        y = table(rng, seeds, volumes, seed_sd, volume_sd, 0.03)
        iv = hierarchical_interval(y, n_boot=300, seed=draw)
        assert iv is not None
        hits += iv.low <= TRUE_MEAN <= iv.high
        lo, hi = bootstrap_ci(y.mean(axis=0), n_boot=300, seed=draw)
        old += lo <= TRUE_MEAN <= hi
    return hits / draws, old / draws


@pytest.mark.parametrize(("seed_sd", "volume_sd"), [(0.08, 0.05), (0.02, 0.15)],
                         ids=["seed-variance-dominates", "volume-variance-dominates"])
def test_coverage_is_about_95_percent_with_three_seeds(seed_sd: float, volume_sd: float) -> None:
    covered, old = coverage(seed_sd, volume_sd)
    assert 0.91 <= covered <= 0.99, covered
    if seed_sd > volume_sd:  # the old volumes-only interval ignored training noise
        assert old < 0.6, old


def test_one_seed_is_a_volume_interval() -> None:
    values = np.array([[0.2, 0.4, 0.6, 0.8]])
    iv = hierarchical_interval(values, n_boot=2000)
    assert iv is not None and (iv.n_seeds, iv.n_volumes, iv.df) == (1, 4, 3)
    assert iv.mean == pytest.approx(0.5)
    # SE of a mean of 4 values with sd 0.258: 0.129; the bootstrap estimate is within 10 %
    assert iv.se == pytest.approx(np.std(values, ddof=1) / 2, rel=0.1)
    assert iv.low < 0.5 < iv.high and iv.low == pytest.approx(0.5 - (iv.high - 0.5))


def test_nan_volumes_and_seeds_are_left_out_and_bounds_clip() -> None:
    values = np.array([[0.9, math.nan, 1.0], [0.95, math.nan, math.inf], [math.nan] * 3])
    iv = hierarchical_interval(values, n_boot=500, bounds=(0.0, 1.0))
    assert iv is not None and (iv.n_seeds, iv.n_volumes) == (2, 2)
    assert iv.mean == pytest.approx(((0.9 + 1.0) / 2 + 0.95) / 2)  # per seed first
    assert iv.high <= 1.0
    assert hierarchical_interval(np.full((2, 3), math.nan)) is None
    assert hierarchical_interval(np.zeros((0, 0))) is None
    same = hierarchical_interval(np.full((3, 4), 0.5))
    assert same is not None and (same.low, same.high, same.se) == (0.5, 0.5, 0.0)


def test_holm_by_hand() -> None:
    # m = 4: thresholds 0.0125, 0.0167, 0.025, 0.05 for the sorted p-values
    assert holm([0.01, 0.04, 0.015, None, 0.03]) == [True, False, True, None, False]
    assert holm([0.001, 0.2]) == [True, False]
    assert holm([]) == []

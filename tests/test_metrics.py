"""Metrics against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core import metrics


def test_counts_and_ratios_by_hand():
    # truth: 4 positives; prediction: 3 positives, 2 of them correct
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], np.uint8)
    pred = np.array([[0.9, 0.2, 0.6, 0.0], [0.5, 0.1, 0.0, 0.0]], np.float32)
    c = metrics.confusion_counts(pred, truth, threshold=0.5)
    assert c == metrics.Counts(tp=2, fp=1, fn=2, tn=3)
    assert metrics.dice(c) == pytest.approx(4 / 7)       # 2·2 / (2·2 + 1 + 2)
    assert metrics.precision(c) == pytest.approx(2 / 3)
    assert metrics.sensitivity(c) == pytest.approx(2 / 4)
    assert metrics.specificity(c) == pytest.approx(3 / 4)


def test_counts_are_summed_over_the_volume_not_averaged_per_slice():
    truth = np.zeros((2, 2, 2), np.uint8)
    pred = np.zeros((2, 2, 2), np.uint8)
    truth[0, 0, 0] = 1
    pred[0, 0, 0] = 1          # slice 0: perfect
    truth[1] = 1               # slice 1: 4 voxels missed
    c = metrics.confusion_counts(pred, truth)
    assert metrics.dice(c) == pytest.approx(2 / (2 + 4))  # per-slice mean would be 0.5


@pytest.mark.parametrize(
    ("pred", "truth", "expected"),
    [
        ([0, 0], [0, 0], {"dice": math.nan, "precision": math.nan, "sensitivity": math.nan}),
        ([0, 0], [1, 0], {"dice": 0.0, "precision": math.nan, "sensitivity": 0.0}),
        ([1, 0], [0, 0], {"dice": 0.0, "precision": 0.0, "sensitivity": math.nan}),
        ([1, 0], [1, 0], {"dice": 1.0, "precision": 1.0, "sensitivity": 1.0}),
    ],
    ids=["both-empty", "missed-tumour", "false-alarm", "perfect"],
)
def test_empty_mask_rules(pred, truth, expected):
    c = metrics.confusion_counts(np.array(pred, np.uint8), np.array(truth, np.uint8))
    got = metrics.volume_metrics(c)
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value), name


def test_summary_excludes_and_counts_nan_volumes():
    s = metrics.summarize([0.5, math.nan, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7)
    assert (s.n, s.n_excluded) == (3, 1)
    assert s.ci_low <= s.mean <= s.ci_high
    assert s.ci_low >= 0.5 and s.ci_high <= 0.9


def test_bootstrap_ci_shrinks_with_more_volumes_and_is_seeded():
    rng = np.random.default_rng(0)
    small = rng.normal(0.8, 0.1, 10)
    large = rng.normal(0.8, 0.1, 1000)
    lo_s, hi_s = metrics.bootstrap_ci(small)
    lo_l, hi_l = metrics.bootstrap_ci(large)
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert metrics.bootstrap_ci(small, seed=3) == metrics.bootstrap_ci(small, seed=3)
    # the CI of a large sample covers the true mean
    assert lo_l < 0.8 < hi_l


def test_constant_values_give_a_degenerate_ci():
    s = metrics.summarize([0.6] * 5)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.6, 0.6))


def test_paired_difference():
    a = np.array([0.8, 0.9, math.nan, 0.7])
    b = np.array([0.7, 0.7, 0.5, 0.7])
    s = metrics.paired_difference(a, b)
    assert s.mean == pytest.approx((0.1 + 0.2 + 0.0) / 3)
    assert s.n_excluded == 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))

from __future__ import annotations

import numpy as np
import pytest

from inference import stats

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
# Hand-counted: of the 16 positive–negative pairs, 13 are ordered correctly, 1 is tied and 2 are reversed.
SCORES = np.array([0.1, 0.2, 0.3, 0.7, 0.3, 0.6, 0.8, 0.9])


def test_auc_counts_ties_as_half():
    assert stats.auc(LABELS, SCORES) == pytest.approx((13 + 0.5) / 16)


def test_auc_of_perfect_and_reversed_scores():
    y = np.array([0, 0, 1, 1])
    assert stats.auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert stats.auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="positive and one negative"):
        stats.auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_roc_curve_runs_from_origin_to_corner_and_matches_auc():
    roc = stats.roc_curve(LABELS, SCORES)
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(stats.auc(LABELS, SCORES))


def test_rankdata_averages_ties():
    np.testing.assert_array_equal(stats.rankdata(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_wilson_interval_matches_published_example():
    # 81 of 263: the Wilson 95% interval quoted in the literature is 0.2553 to 0.3662.
    iv = stats.wilson_interval(81, 263)
    assert (round(iv.low, 4), round(iv.high, 4)) == (0.2553, 0.3662)


def test_wilson_interval_stays_inside_unit_range_at_the_extremes():
    assert stats.wilson_interval(0, 10).low == 0.0
    assert stats.wilson_interval(10, 10).high == 1.0
    assert stats.wilson_interval(10, 10).low == pytest.approx(0.7225, abs=1e-4)


def test_predictive_values_at_prevalence_match_domain_example():
    ppv, npv = stats.predictive_values(0.92, 0.94, 0.06)
    assert round(ppv, 2) == 0.49
    assert npv == pytest.approx(0.9946, abs=1e-4)


def test_operating_point_counts_and_rates():
    op = stats.operating_point(LABELS, SCORES, 0.6)
    assert (op.tp, op.fp, op.tn, op.fn) == (3, 1, 3, 1)
    assert op.sensitivity.estimate == 0.75
    assert op.ppv.estimate == 0.75


def test_threshold_for_sensitivity_reaches_the_target_with_the_best_specificity():
    threshold = stats.threshold_for_sensitivity(LABELS, SCORES, 0.75)
    # 0.6 is the positive that reaches 0.75; the next negative below is 0.3: the middle of that gap.
    assert threshold == pytest.approx(0.45)
    op = stats.operating_point(LABELS, SCORES, threshold)
    assert (op.sensitivity.estimate, op.specificity.estimate) == (0.75, 0.75)


def test_threshold_sits_in_the_gap_when_validation_separates_perfectly():
    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([0.02, 0.10, 0.990, 0.996, 0.998, 0.999])
    threshold = stats.threshold_for_sensitivity(labels, scores, 0.75)
    assert threshold == pytest.approx((0.996 + 0.10) / 2)
    assert stats.operating_point(labels, scores, threshold).sensitivity.estimate == 1.0


def test_threshold_stays_when_no_negative_scores_below_it():
    labels = np.array([1, 0, 1])
    scores = np.array([0.5, 0.95, 0.9])
    assert stats.threshold_for_sensitivity(labels, scores, 0.5) == 0.9


def test_bootstrap_interval_is_seeded_and_contains_the_estimate():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(60), np.ones(40)]
    s = np.r_[rng.normal(0, 1, 60), rng.normal(1.5, 1, 40)]
    a = stats.bootstrap_auc_ci(y, s, n_boot=300, seed=7)
    b = stats.bootstrap_auc_ci(y, s, n_boot=300, seed=7)
    assert a == b
    assert a.low < a.estimate < a.high


def test_delong_interval_agrees_with_bootstrap_roughly():
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(200), np.ones(150)]
    s = np.r_[rng.normal(0, 1, 200), rng.normal(1, 1, 150)]
    boot = stats.bootstrap_auc_ci(y, s, n_boot=500, seed=1)
    delong = stats.delong_ci(y, s)
    assert delong.estimate == pytest.approx(boot.estimate)
    assert delong.high - delong.low == pytest.approx(boot.high - boot.low, rel=0.25)


def test_calibration_of_perfectly_calibrated_bins():
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    cal = stats.calibration(y, p, n_bins=2)
    assert cal.ece == pytest.approx(0.0)
    assert cal.brier == pytest.approx(0.1875)
    assert list(cal.counts) == [4, 4]


def test_calibration_rejects_scores_outside_unit_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.calibration(np.array([0, 1]), np.array([0.2, 1.3]))


def test_psi_is_zero_for_the_same_sample_and_large_for_a_shift():
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, 2000)
    assert stats.psi(base, base) == 0.0
    assert stats.psi(base, rng.normal(0, 1, 2000)) < 0.1
    assert stats.psi(base, rng.normal(1.0, 1, 2000)) > 0.25


def test_ks_matches_scipy():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, 300), rng.normal(0.2, 1, 250)
    ours, ref = stats.ks_2samp(a, b), ks_2samp(a, b, method="asymp")
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.pvalue == pytest.approx(ref.pvalue, abs=0.02)

"""The shadow comparison's statistics against examples worked by hand: Cohen's kappa with the Fleiss-Cohen-Everitt
interval, and DeLong's paired test of two AUCs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference import stats
from triage.governance.shadow_stats import cohen_kappa, delong_paired

# 100 studies: both flag 20, only live 5, only shadow 10, neither 65.
LIVE_CALLS = [True] * 25 + [False] * 75
SHADOW_CALLS = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 65


def test_kappa_and_its_interval_match_the_hand_computation():
    # p_o = 0.85; marginals live (0.25, 0.75), shadow (0.30, 0.70): p_e = 0.075 + 0.525 = 0.60; kappa = 0.25/0.40.
    # Variance (Fleiss, Cohen, Everitt 1969): diagonal 0.2(1-0.55*0.375)^2 + 0.65(1-1.45*0.375)^2 = 0.261315;
    # off-diagonal 0.375^2 (0.05*1.05^2 + 0.1*0.95^2) = 0.020443; minus (0.625 - 0.6*0.375)^2 = 0.16;
    # over 100 * 0.4^2: 0.0076099, SE 0.087235, half-width 1.959964 * SE = 0.170977.
    agreement = cohen_kappa(LIVE_CALLS, SHADOW_CALLS)

    assert (agreement.both_positive, agreement.live_only, agreement.shadow_only, agreement.both_negative) == (
        20, 5, 10, 65,
    )  # fmt: skip
    assert agreement.observed == pytest.approx(0.85)
    assert agreement.kappa.estimate == pytest.approx(0.625)
    assert agreement.kappa.low == pytest.approx(0.625 - 0.170977, abs=1e-5)
    assert agreement.kappa.high == pytest.approx(0.625 + 0.170977, abs=1e-5)


def test_kappa_is_undefined_when_both_raters_call_every_study_the_same_way():
    agreement = cohen_kappa([False] * 10, [False] * 10)

    assert agreement.kappa is None
    assert agreement.observed == 1.0


def test_perfect_agreement_has_kappa_one():
    calls = [True, False, True, False, False]

    assert cohen_kappa(calls, calls).kappa.estimate == pytest.approx(1.0)


# Three positives and three negatives. Live: positives 0.9, 0.8, 0.3 and negatives 0.4, 0.2, 0.1;
# shadow: positives 0.6, 0.5, 0.4 and negatives 0.7, 0.3, 0.2.
LABELS = [1, 1, 1, 0, 0, 0]
LIVE = [0.9, 0.8, 0.3, 0.4, 0.2, 0.1]
SHADOW = [0.6, 0.5, 0.4, 0.7, 0.3, 0.2]


def test_paired_delong_matches_the_hand_computation():
    # Placements: live V10 = (1, 1, 2/3), V01 = (2/3, 1, 1): AUC 8/9; shadow V10 = (2/3, 2/3, 2/3), V01 = (0, 1, 1):
    # AUC 2/3. S10 = [[1/27, 0], [0, 0]], S01 = [[1/27, 1/9], [1/9, 1/3]]; S = S10/3 + S01/3 =
    # [[2/81, 1/27], [1/27, 1/9]]. Var(difference) = 2/81 + 9/81 - 6/81 = 5/81; difference 2/9; z = 2/sqrt(5).
    result = delong_paired(LABELS, LIVE, SHADOW)

    assert result.live.estimate == pytest.approx(8 / 9)
    assert result.shadow.estimate == pytest.approx(2 / 3)
    assert result.difference.estimate == pytest.approx(2 / 9)
    assert result.z == pytest.approx(2 / math.sqrt(5))
    assert result.p_value == pytest.approx(0.371093, abs=1e-6)
    half = 1.959964 * math.sqrt(5 / 81)
    assert (result.difference.low, result.difference.high) == pytest.approx((2 / 9 - half, 2 / 9 + half), abs=1e-5)
    assert result.live.high == 1.0  # 8/9 + 1.96 * sqrt(2/81) is clipped


def test_each_paired_auc_agrees_with_the_single_auc_delong_interval():
    rng = np.random.default_rng(3)
    labels = rng.random(80) < 0.3
    live = np.clip(labels * 0.3 + rng.random(80) * 0.7, 0, 1)
    shadow = np.clip(labels * 0.5 + rng.random(80) * 0.5, 0, 1)

    result = delong_paired(labels, live, shadow)

    assert result.live.as_dict() == pytest.approx(stats.delong_ci(labels, live).as_dict())
    assert result.shadow.as_dict() == pytest.approx(stats.delong_ci(labels, shadow).as_dict())


def test_the_same_scores_twice_differ_by_nothing():
    result = delong_paired(LABELS, LIVE, LIVE)

    assert (result.difference.estimate, result.z, result.p_value) == (0.0, 0.0, 1.0)


def test_delong_needs_two_cases_of_each_class():
    with pytest.raises(ValueError, match="two positive and two negative"):
        delong_paired([1, 0, 0], [0.9, 0.1, 0.2], [0.8, 0.3, 0.1])

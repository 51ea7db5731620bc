"""Django-free statistics for comparing a shadow model with the live one on the same studies: Cohen's kappa with
its asymptotic interval, and DeLong's paired test of two correlated AUCs.

The single-AUC DeLong interval is ``metrics.auc_delong``; this module adds what a paired comparison needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from inference.stats import Interval, z_value


@dataclass(frozen=True)
class Agreement:
    """Two raters' binary calls on the same studies: the 2×2 table and Cohen's kappa with its interval."""

    both_positive: int
    live_only: int
    shadow_only: int
    both_negative: int
    kappa: Interval | None  # None when kappa is undefined (both raters call every study the same way)

    @property
    def n(self) -> int:
        return self.both_positive + self.live_only + self.shadow_only + self.both_negative

    @property
    def observed(self) -> float | None:
        return (self.both_positive + self.both_negative) / self.n if self.n else None


def cohen_kappa(
    live: Sequence[bool] | np.ndarray, shadow: Sequence[bool] | np.ndarray, *, confidence: float = 0.95
) -> Agreement:
    """Cohen's kappa of two binary raters, with the large-sample standard error of Fleiss, Cohen and Everitt
    (1969), which does not assume kappa is zero; the interval is clipped to [-1, 1]."""
    a = np.asarray(live, dtype=bool)
    b = np.asarray(shadow, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"live ({a.size}) and shadow ({b.size}) calls differ in length")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]], dtype=np.float64)
    tp, fn, fp, tn = (int(v) for v in table.ravel())
    n = table.sum()
    if n == 0:
        return Agreement(tp, fn, fp, tn, kappa=None)
    p = table / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    observed, expected = float(np.trace(p)), float(rows @ cols)
    if expected >= 1.0:
        return Agreement(tp, fn, fp, tn, kappa=None)
    kappa = (observed - expected) / (1.0 - expected)
    diagonal = sum(p[i, i] * (1.0 - (rows[i] + cols[i]) * (1.0 - kappa)) ** 2 for i in range(2))
    off = sum(p[i, j] * (cols[i] + rows[j]) ** 2 for i in range(2) for j in range(2) if i != j)
    variance = (diagonal + (1.0 - kappa) ** 2 * off - (kappa - expected * (1.0 - kappa)) ** 2) / (
        n * (1.0 - expected) ** 2
    )
    half = z_value(confidence) * math.sqrt(max(variance, 0.0))
    interval = Interval(kappa, max(-1.0, kappa - half), min(1.0, kappa + half), confidence)
    return Agreement(tp, fn, fp, tn, kappa=interval)


@dataclass(frozen=True)
class PairedAuc:
    """Two AUCs on the same cases and DeLong's test of their difference (live − shadow)."""

    live: Interval
    shadow: Interval
    difference: Interval
    z: float
    p_value: float


def _placements(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: each positive's placement among the negatives, and vice versa."""
    pos, neg = scores[y], scores[~y]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return wins.mean(axis=1), wins.mean(axis=0)


def delong_paired(
    labels: Sequence[bool] | np.ndarray,
    live: Sequence[float] | np.ndarray,
    shadow: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
) -> PairedAuc:
    """DeLong, DeLong and Clarke-Pearson (1988): the two AUCs, the covariance of their estimates from the
    placement values, a two-sided z-test of equal AUCs and an interval for the difference."""
    y = np.asarray(labels, dtype=bool)
    scores = [np.asarray(live, dtype=np.float64), np.asarray(shadow, dtype=np.float64)]
    if any(s.shape != y.shape for s in scores):
        raise ValueError("labels and both score lists must have the same length")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError("the paired DeLong test needs at least two positive and two negative cases")
    v10, v01 = zip(*(_placements(s, y) for s in scores), strict=True)
    aucs = np.array([v.mean() for v in v10])
    covariance = np.cov(np.vstack(v10)) / m + np.cov(np.vstack(v01)) / n
    z_conf = z_value(confidence)

    def interval(estimate: float, variance: float, low: float, high: float) -> Interval:
        half = z_conf * math.sqrt(max(variance, 0.0))
        return Interval(estimate, max(low, estimate - half), min(high, estimate + half), confidence)

    diff = float(aucs[0] - aucs[1])
    var_diff = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    if var_diff <= 0.0:
        z, p_value = 0.0, 1.0 if diff == 0.0 else 0.0
    else:
        z = diff / math.sqrt(var_diff)
        p_value = 2.0 * (1.0 - NormalDist().cdf(abs(z)))
    return PairedAuc(
        live=interval(float(aucs[0]), float(covariance[0, 0]), 0.0, 1.0),
        shadow=interval(float(aucs[1]), float(covariance[1, 1]), 0.0, 1.0),
        difference=interval(diff, var_diff, -1.0, 1.0),
        z=z,
        p_value=p_value,
    )

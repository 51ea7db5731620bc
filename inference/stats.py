"""Validation and monitoring statistics in plain numpy.

Used by model evaluation and by the validation and drift pages. Every function takes plain arrays: ``labels`` are
0/1 (1 = finding present) and ``scores`` are model outputs where larger means more likely positive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile for a confidence level (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _as_arrays(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def _require_both_classes(y: np.ndarray) -> None:
    if y.all() or not y.any():
        raise ValueError("AUC needs at least one positive and one negative case")


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties given their average rank (as scipy's ``rankdata(method="average")``)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # Each run of equal values shares the mean of the ranks it spans.
    starts = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    run_id = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], v.size] - 1
    avg = (first + last) / 2.0 + 1.0
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


# --- discrimination ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RocCurve:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # a case is called positive when score >= threshold


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> RocCurve:
    """ROC points at every distinct score, from (0, 0) (threshold +inf) to (1, 1)."""
    y, s = _as_arrays(labels, scores)
    _require_both_classes(y)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic (ties count one half)."""
    y, s = _as_arrays(labels, scores)
    _require_both_classes(y)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = rankdata(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_auc_ci(
    labels: np.ndarray, scores: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval for the AUC, resampling positives and negatives separately (stratified)."""
    y, s = _as_arrays(labels, scores)
    _require_both_classes(y)
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot, dtype=np.float64)
    for i in range(n_boot):
        p = pos[rng.integers(0, pos.size, pos.size)]
        n = neg[rng.integers(0, neg.size, neg.size)]
        aucs[i] = _auc_from_groups(p, n)
    alpha = 1.0 - confidence
    low, high = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(auc(y, s), float(low), float(high), confidence)


def _auc_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
    ranks = rankdata(np.r_[pos, neg])
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def delong_ci(labels: np.ndarray, scores: np.ndarray, *, confidence: float = 0.95) -> Interval:
    """DeLong (1988) interval for one AUC, from the placement values' variances; clipped to [0, 1]."""
    y, s = _as_arrays(labels, scores)
    _require_both_classes(y)
    pos, neg = s[y], s[~y]
    # Placement of each positive among negatives (and vice versa), ties counted one half.
    v10 = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean(axis=1)
    v01 = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean(axis=0)
    estimate = float(v10.mean())
    var = (v10.var(ddof=1) if pos.size > 1 else 0.0) / pos.size + (v01.var(ddof=1) if neg.size > 1 else 0.0) / neg.size
    half = z_value(confidence) * math.sqrt(max(var, 0.0))
    return Interval(estimate, max(0.0, estimate - half), min(1.0, estimate + half), confidence)


# --- proportions and operating points ---------------------------------------------------------------------------


def wilson_interval(successes: int, total: int, *, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion; (nan, 0, 1) when there are no trials."""
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"need 0 <= successes <= total, got {successes}/{total}")
    if total == 0:
        return Interval(float("nan"), 0.0, 1.0, confidence)
    z = z_value(confidence)
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; rounding would otherwise leave a tiny offset.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Interval(p, low, high, confidence)


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Interval
    specificity: Interval
    ppv: Interval
    npv: Interval

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {k: getattr(self, k) for k in ("threshold", "tp", "fp", "tn", "fn")}
        for name in ("sensitivity", "specificity", "ppv", "npv"):
            out[name] = getattr(self, name).as_dict()
        return out


def operating_point(
    labels: np.ndarray, scores: np.ndarray, threshold: float, *, confidence: float = 0.95
) -> OperatingPoint:
    """Counts and rates when ``score >= threshold`` is called positive, each rate with its Wilson interval."""
    y, s = _as_arrays(labels, scores)
    called = s >= threshold
    tp, fp = int((called & y).sum()), int((called & ~y).sum())
    tn, fn = int((~called & ~y).sum()), int((~called & y).sum())
    return OperatingPoint(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=wilson_interval(tp, tp + fn, confidence=confidence),
        specificity=wilson_interval(tn, tn + fp, confidence=confidence),
        ppv=wilson_interval(tp, tp + fp, confidence=confidence),
        npv=wilson_interval(tn, tn + fn, confidence=confidence),
    )


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """PPV and NPV at a given prevalence (Bayes), for transferring a validation result to a site."""
    for name, v in (("sensitivity", sensitivity), ("specificity", specificity), ("prevalence", prevalence)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    tp = sensitivity * prevalence
    fp = (1.0 - specificity) * (1.0 - prevalence)
    tn = specificity * (1.0 - prevalence)
    fn = (1.0 - sensitivity) * prevalence
    ppv = tp / (tp + fp) if tp + fp > 0 else float("nan")
    npv = tn / (tn + fn) if tn + fn > 0 else float("nan")
    return ppv, npv


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """A threshold whose sensitivity (``score >= threshold``) reaches ``target`` with the best specificity.

    The highest such threshold is the score of the positive that just reaches the target. Every threshold down to
    the next negative score below it has the same specificity and misses no more positives, so the threshold is
    moved to the middle of that gap: a new case scoring a little lower than the validation positives is still
    flagged, at no cost in specificity on the validation data. Without a gap nothing moves.
    """
    y, s = _as_arrays(labels, scores)
    if not y.any():
        raise ValueError("a sensitivity target needs at least one positive case")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    pos = np.sort(s[y])[::-1]
    needed = math.ceil(target * pos.size - 1e-9)
    highest = float(pos[max(needed, 1) - 1])
    below = s[~y][s[~y] < highest]
    return (highest + float(below.max())) / 2.0 if below.size else highest


# --- calibration ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    bin_edges: np.ndarray
    mean_predicted: np.ndarray  # nan where a bin is empty
    observed_rate: np.ndarray
    counts: np.ndarray
    ece: float
    brier: float

    def as_dict(self) -> dict[str, object]:
        def clean(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else float(v) for v in a]

        return {
            "bin_edges": clean(self.bin_edges),
            "mean_predicted": clean(self.mean_predicted),
            "observed_rate": clean(self.observed_rate),
            "counts": [int(c) for c in self.counts],
            "ece": self.ece,
            "brier": self.brier,
        }


def calibration(labels: np.ndarray, probabilities: np.ndarray, *, n_bins: int = 10) -> Calibration:
    """Reliability diagram on equal-width bins, expected calibration error and Brier score."""
    y, p = _as_arrays(labels, probabilities)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        obs = np.where(counts > 0, sum_y / counts, np.nan)
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(mean_p[filled] - obs[filled])) / p.size)
    brier = float(np.mean((p - y) ** 2))
    return Calibration(edges, mean_p, obs, counts, ece, brier)


# --- drift ------------------------------------------------------------------------------------------------------


def psi(expected: np.ndarray, actual: np.ndarray, *, n_bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected``, on the quantile bins of ``expected``.

    Below 0.1 is usually read as stable, 0.1–0.25 as a moderate shift, above 0.25 as a major one.
    """
    e = np.asarray(expected, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    if e.size == 0 or a.size == 0:
        raise ValueError("PSI needs two non-empty samples")
    inner = np.unique(np.quantile(e, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    e_frac = np.bincount(np.searchsorted(inner, e, side="right"), minlength=inner.size + 1) / e.size
    a_frac = np.bincount(np.searchsorted(inner, a, side="right"), minlength=inner.size + 1) / a.size
    # A floor keeps empty bins from making the logarithm infinite.
    e_frac = np.maximum(e_frac, eps)
    a_frac = np.maximum(a_frac, eps)
    return float(np.sum((a_frac - e_frac) * np.log(a_frac / e_frac)))


@dataclass(frozen=True)
class KsResult:
    statistic: float
    pvalue: float


def ks_2samp(a: np.ndarray, b: np.ndarray) -> KsResult:
    """Two-sample Kolmogorov–Smirnov test, two-sided, with the asymptotic p-value (Stephens' correction)."""
    x = np.sort(np.asarray(a, dtype=np.float64).ravel())
    y = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if x.size == 0 or y.size == 0:
        raise ValueError("KS needs two non-empty samples")
    grid = np.r_[x, y]
    cdf_x = np.searchsorted(x, grid, side="right") / x.size
    cdf_y = np.searchsorted(y, grid, side="right") / y.size
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    n_eff = x.size * y.size / (x.size + y.size)
    lam = (math.sqrt(n_eff) + 0.12 + 0.11 / math.sqrt(n_eff)) * d
    return KsResult(d, _kolmogorov_sf(lam))


def _kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution, by its alternating series."""
    if lam < 1e-3:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1.0) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return float(min(1.0, max(0.0, total)))

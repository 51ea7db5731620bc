"""Django-free helpers for the validation and monitoring pages: bands, percentiles, PSI on counts, fast DeLong,
the flag-rate test.

They complement inference/stats.py (ROC, bootstrap, Wilson, operating points, PSI on samples) and take plain values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from inference.stats import Interval, z_value

# PSI above this is a major shift of the score distribution (<0.1 stable, 0.1-0.25 moderate, >0.25 major).
PSI_ALERT = 0.25

SLICE_BANDS_MM = ((1.0, "<1 mm"), (2.5, "1-2.5 mm"), (5.0, "2.5-5 mm"), (math.inf, ">=5 mm"))
AGE_BANDS = ((18, "<18"), (40, "18-39"), (65, "40-64"), (80, "65-79"), (1000, ">=80"))
SEX_LABELS = {"M": "male", "F": "female", "O": "other"}


def slice_band(thickness_mm: float | None) -> str:
    if thickness_mm is None:
        return "unknown"
    return next(label for upper, label in SLICE_BANDS_MM if thickness_mm < upper)


def age_band(age_years: int | None) -> str:
    if age_years is None:
        return "unknown"
    return next(label for upper, label in AGE_BANDS if age_years < upper)


def sex_label(code: str) -> str:
    return SEX_LABELS.get((code or "").upper(), "unknown")


def scanner_label(manufacturer: str, model: str) -> str:
    return " ".join(part for part in (manufacturer.strip(), model.strip()) if part) or "unknown"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), or None for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def psi_from_counts(expected: Sequence[float], actual: Sequence[float], *, eps: float = 1e-4) -> float:
    """Population stability index of two histograms on the same bins: sum((a - e) * ln(a / e)) over fractions.

    Empty bins are floored at ``eps`` so the logarithm stays finite.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("PSI needs two non-empty histograms with the same bins")
    e_frac = np.maximum(e / e.sum(), eps)
    a_frac = np.maximum(a / a.sum(), eps)
    return float(np.sum((a_frac - e_frac) * np.log(a_frac / e_frac)))


def histogram(scores: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin; the last bin is closed so a score of exactly 1.0 is counted."""
    counts, _ = np.histogram(np.asarray(scores, dtype=np.float64), bins=np.asarray(edges, dtype=np.float64))
    return [int(c) for c in counts]


def auc_delong(
    labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> Interval:
    """AUC with the DeLong (1988) interval, placement values found by binary search: O(n log n) time and memory.

    Same numbers as ``inference.stats.delong_ci``, which builds the full positive-by-negative matrix.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs at least one positive and one negative case")
    # Placement of each positive among the negatives (and vice versa), ties counted one half.
    v10 = (np.searchsorted(neg, pos, "left") + np.searchsorted(neg, pos, "right")) / (2.0 * neg.size)
    v01 = 1.0 - (np.searchsorted(pos, neg, "left") + np.searchsorted(pos, neg, "right")) / (2.0 * pos.size)
    estimate = float(v10.mean())
    var = (v10.var(ddof=1) / pos.size if pos.size > 1 else 0.0) + (v01.var(ddof=1) / neg.size if neg.size > 1 else 0.0)
    half = z_value(confidence) * math.sqrt(max(var, 0.0))
    return Interval(estimate, max(0.0, estimate - half), min(1.0, estimate + half), confidence)


def rebin(shares: Sequence[float], edges: Sequence[float], new_edges: Sequence[float]) -> list[float]:
    """A histogram moved onto other bins, each old bin's share spread evenly over its width."""
    if list(edges) == list(new_edges):
        return [float(s) for s in shares]
    out = [0.0] * (len(new_edges) - 1)
    for share, lo, hi in zip(shares, edges[:-1], edges[1:], strict=True):
        for j in range(len(out)):
            overlap = min(hi, new_edges[j + 1]) - max(lo, new_edges[j])
            if overlap > 0 and hi > lo:
                out[j] += float(share) * overlap / (hi - lo)
    return out


def flag_rate_test(*, flagged: int, window: int, low: float, high: float, alpha: float) -> tuple[str | None, float]:
    """One-sided binomial tests of ``flagged`` of ``window`` against a band of plausible rates.

    ("high", P(X >= flagged | high)) when that is below ``alpha``; ("low", P(X <= flagged | low)) likewise; else
    (None, the smaller of the two p-values).
    """
    # Here rather than at the top: this module is imported by every process (through the admin), and scipy.stats
    # takes longer to import than the rest of Django; only the monitoring pages and the flag-rate alert need it.
    from scipy.stats import binom

    p_high = float(binom.sf(flagged - 1, window, high))
    p_low = float(binom.cdf(flagged, window, low))
    if p_high < alpha:
        return "high", p_high
    if p_low < alpha:
        return "low", p_low
    return None, min(p_high, p_low)


_Grouped = TypeVar("_Grouped")

SUBGROUP_DIMENSIONS: dict[str, Callable[[Any], str]] = {
    "Scanner": lambda c: c.scanner,
    "Slice thickness": lambda c: c.slice_band,
    "Age": lambda c: c.age_band,
    "Sex": lambda c: c.sex,
}


def subgroups(items: Sequence[_Grouped]) -> Iterator[tuple[str, str, list[_Grouped]]]:
    """(dimension, group, members) per dimension, groups sorted: validation cases and shadow pairs alike."""
    for dimension, key in SUBGROUP_DIMENSIONS.items():
        groups: dict[str, list[_Grouped]] = {}
        for item in items:
            groups.setdefault(key(item), []).append(item)
        for group, members in sorted(groups.items()):
            yield dimension, group, members

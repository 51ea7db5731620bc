"""Turnaround analytics: is a study the AI flags read sooner? From the worklist's own timestamps.

Per period (day or week), by AI flag and by requested priority, and before/after a go-live date: medians and 90th
percentiles of arrival → claim and arrival → report, each with a distribution-free interval (the order statistics
that bracket the quantile with the binomial's coverage), and the counts behind them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.utils import timezone
from scipy.stats import binom

from triage.governance.monitoring import Table, bucket_label, bucket_start, bucket_starts, window_start
from worklist.models import WorklistItem
from worklist.priority import LEVEL_LABELS

MEASURES = {"claim": "claimed_at", "report": "reported_at"}
QUANTILES = {"median": 0.5, "p90": 0.9}
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Reading:
    """One study's trip through the worklist: when it arrived, was claimed and reported, and how it was ranked."""

    received_at: datetime
    claimed_at: datetime | None
    reported_at: datetime | None
    flagged: bool
    urgency: int

    def minutes(self, measure: str) -> float | None:
        end = getattr(self, MEASURES[measure])
        return None if end is None else max(0.0, (end - self.received_at).total_seconds() / 60.0)


@dataclass(frozen=True)
class QuantileEstimate:
    estimate: float
    low: float | None
    high: float | None


def quantile_interval(values: Sequence[float], q: float, confidence: float = CONFIDENCE) -> QuantileEstimate | None:
    """The q-quantile with the order-statistic interval [x(l), x(u)] whose binomial coverage is at least the
    confidence; an open side (None) when the sample is too small to bracket it."""
    data = sorted(values)
    n = len(data)
    if n == 0:
        return None
    estimate = _quantile(data, q)
    tail = (1.0 - confidence) / 2.0
    low_rank = int(binom.ppf(tail, n, q))  # P(X < low_rank) <= tail, X ~ Bin(n, q)
    high_rank = int(binom.ppf(1.0 - tail, n, q)) + 1
    low = data[low_rank - 1] if low_rank >= 1 else None
    high = data[high_rank - 1] if high_rank <= n else None
    return QuantileEstimate(estimate, low, high)


def _quantile(data: Sequence[float], q: float) -> float:
    position = q * (len(data) - 1)
    below, above = math.floor(position), math.ceil(position)
    return data[below] + (data[above] - data[below]) * (position - below)


def readings(*, since: datetime, until: datetime | None = None) -> list[Reading]:
    """Studies that arrived in the window, with their worklist timestamps (no patient data)."""
    items = WorklistItem.objects.filter(received_at__gte=since)
    if until is not None:
        items = items.filter(received_at__lt=until)
    rows = items.values_list("received_at", "claimed_at", "reported_at", "critical", "urgency")
    return [Reading(r, c, rep, bool(flag), int(urgency)) for r, c, rep, flag, urgency in rows]


def _summary_row(label: str, group: Iterable[Reading]) -> list:
    group = list(group)
    row: list = [label, len(group)]
    for measure in MEASURES:
        minutes = [m for r in group if (m := r.minutes(measure)) is not None]
        row.append(len(minutes))
        for q in QUANTILES.values():
            found = quantile_interval(minutes, q)
            row += [found.estimate, found.low, found.high] if found else [None, None, None]
    return row


def _columns(first: str) -> list[str]:
    columns = [first, "studies"]
    for measure in MEASURES:
        columns.append(f"{measure}_n")
        for name in QUANTILES:
            columns += [f"{measure}_{name}_min", f"{measure}_{name}_low", f"{measure}_{name}_high"]
    return columns


def summary_table(items: Sequence[Reading], *, go_live: date | None = None) -> Table:
    """Flagged against not flagged, each requested priority, and before/after go-live when one is given."""
    table = Table(_columns("group"))
    table.rows.append(_summary_row("AI flagged", (r for r in items if r.flagged)))
    table.rows.append(_summary_row("not flagged", (r for r in items if not r.flagged)))
    for level in sorted({r.urgency for r in items}, reverse=True):
        label = f"requested {LEVEL_LABELS.get(level, str(level)).lower()}"
        table.rows.append(_summary_row(label, (r for r in items if r.urgency == level)))
    if go_live is not None:
        for after in (False, True):
            for flagged in (True, False):
                label = f"{'flagged' if flagged else 'not flagged'}, {'after' if after else 'before'} {go_live}"
                chosen = (r for r in items if r.flagged == flagged and (_day(r.received_at) >= go_live) == after)
                table.rows.append(_summary_row(label, chosen))
    return table


def period_table(items: Sequence[Reading], *, period: str, now: datetime | None = None) -> Table:
    """Per day or week: median arrival → report for flagged and for not-flagged studies."""
    groups: dict[tuple[date, bool], list[float]] = defaultdict(list)
    for r in items:
        if (minutes := r.minutes("report")) is not None:
            groups[(bucket_start(r.received_at, period), r.flagged)].append(minutes)
    table = Table(["period", "flagged_n", "flagged_median_min", "not_flagged_n", "not_flagged_median_min"])
    for start in bucket_starts(period, now):
        row: list = [bucket_label(start)]
        for flagged in (True, False):
            values = groups.get((start, flagged), [])
            found = quantile_interval(values, 0.5)
            row += [len(values), found.estimate if found else None]
        table.rows.append(row)
    return table


def _day(moment: datetime) -> date:
    return timezone.localtime(moment).date()


def turnaround_report(*, period: str, go_live: date | None = None, now: datetime | None = None) -> dict[str, Table]:
    """The summary (with before/after ``go_live``: equal spans on both sides) and the per-period medians."""
    now = now or timezone.now()
    since = window_start(period, now)
    if go_live is not None:
        span = max(_day(now) - go_live, timedelta(days=1))
        since = min(since, timezone.make_aware(datetime.combine(go_live - span, time.min)))
    items = readings(since=since)
    return {"summary": summary_table(items, go_live=go_live), "periods": period_table(items, period=period, now=now)}

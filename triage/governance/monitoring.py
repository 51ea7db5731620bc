"""Monitoring selectors: per day or week, what the models did and how fast, as plain tables.

The drift baseline: docs/architecture.md (Monitoring).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum

import numpy as np
from django.db.models import Count, Min
from django.utils import timezone

from inference import modelcard, stats
from triage.governance import cards, metrics
from triage.governance.validation import baseline_scores
from triage.models import (
    ACTIVE_JOB_STATES,
    JobState,
    ModelAlert,
    OutboxMessage,
    OutboxState,
    Study,
    TriageJob,
    TriageResult,
    Verdict,
)
from worklist.models import Feedback

PERIODS = {"day": 28, "week": 12}  # buckets shown per period
MIN_BASELINE = 30
BASELINE_WEEKS = 4
# Two samples of one distribution already differ by about (bins - 1) * (1/n + 1/m) in PSI: with 10 bins and 20
# studies that is near 0.5, so a period is judged only from 100 studies up (about 0.1 of noise).
MIN_PSI_CASES = 100
SCORE_EDGES = [i / 10 for i in range(11)]
# Fewer results than this cannot show an implausible flag rate at any usual significance.
MIN_FLAG_RATE_WINDOW = 10


@dataclass
class Table:
    """Rows for one chart and its CSV export; ``columns`` name the values of each row."""

    columns: list[str]
    rows: list[list] = field(default_factory=list)

    def column(self, name: str) -> list:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


def bucket_start(moment: datetime, period: str) -> date:
    day = timezone.localtime(moment).date()
    return day - timedelta(days=day.weekday()) if period == "week" else day


def bucket_starts(period: str, now: datetime | None = None) -> list[date]:
    last = bucket_start(now or timezone.now(), period)
    step = timedelta(days=7 if period == "week" else 1)
    return [last - step * i for i in range(PERIODS[period] - 1, -1, -1)]


def window_start(period: str, now: datetime | None = None) -> datetime:
    first = bucket_starts(period, now)[0]
    return timezone.make_aware(datetime.combine(first, datetime.min.time()))


def bucket_label(start: date) -> str:
    return start.isoformat()


def _bucketed(pairs: Sequence[tuple[datetime, object]], period: str) -> dict[date, list]:
    out: dict[date, list] = defaultdict(list)
    for moment, value in pairs:
        out[bucket_start(moment, period)].append(value)
    return out


def latest_model_version(*, finding: str) -> str | None:
    return (
        TriageResult.objects.filter(finding=finding)
        .order_by("-created_at", "-id")
        .values_list("model_version", flat=True)
        .first()
    )


# --- volume and positive rate ------------------------------------------------------------------------------------


def volume_table(*, finding: str, period: str, now: datetime | None = None) -> Table:
    since = window_start(period, now)
    studies = _bucketed(
        [(at, 1) for at in Study.objects.filter(received_at__gte=since).values_list("received_at", flat=True)], period
    )
    results = _bucketed(
        list(
            TriageResult.objects.filter(finding=finding, is_current=True, study__received_at__gte=since).values_list(
                "study__received_at", "positive"
            )
        ),
        period,
    )
    table = Table(["period", "studies", "results", "positive", "positive_rate"])
    for start in bucket_starts(period, now):
        flags = results.get(start, [])
        rate = sum(flags) / len(flags) if flags else None
        table.rows.append([bucket_label(start), len(studies.get(start, [])), len(flags), sum(flags), rate])
    return table


# --- score distribution and drift --------------------------------------------------------------------------------


class BaselineKind(StrEnum):
    VALIDATION = "validation"
    CARD = "card"
    PRODUCTION = "production"


@dataclass
class Baseline:
    kind: BaselineKind
    description: str
    shares: list[float]  # share of studies per SCORE_EDGES bin
    scores: list[float] | None = None  # the studies themselves, for a local baseline


def _local_baseline(kind: BaselineKind, scores: list[float], description: str) -> Baseline:
    counts = metrics.histogram(scores, SCORE_EDGES)
    return Baseline(kind, description, [c / len(scores) for c in counts], scores)


def drift_baseline(*, finding: str, model_version: str) -> Baseline | None:
    """The local validation set when large enough, else the model card's reference (from the first study), else
    the version's first weeks in production (only for a version without a card)."""
    validation = baseline_scores(finding=finding, model_version=model_version)
    if len(validation) >= MIN_BASELINE:
        description = f"validation set of {model_version} ({len(validation)} studies)"
        return _local_baseline(BaselineKind.VALIDATION, validation, description)
    reference = cards.reference_for(finding=finding, model_version=model_version)
    if reference is not None:
        description = (
            f"model card of {model_version}: its validation scores mixed at {reference.prevalence:.0%} prevalence "
            f"(until {MIN_BASELINE} studies of this version have local ground truth; {len(validation)} have)"
        )
        shares = metrics.rebin(reference.expected, reference.bin_edges, SCORE_EDGES)
        return Baseline(BaselineKind.CARD, description, shares)
    return _production_baseline(finding=finding, model_version=model_version)


def _production_baseline(*, finding: str, model_version: str) -> Baseline | None:
    results = TriageResult.objects.filter(finding=finding, model_version=model_version)
    first = results.aggregate(first=Min("created_at"))["first"]
    if first is None:
        return None
    early = list(results.filter(created_at__lt=first + timedelta(weeks=BASELINE_WEEKS)).values_list("score", flat=True))
    if len(early) < MIN_BASELINE:
        return None
    description = f"first {BASELINE_WEEKS} weeks of {model_version} in production ({len(early)} studies)"
    return _local_baseline(BaselineKind.PRODUCTION, early, description)


def _psi(baseline: Baseline, scores: list[float]) -> float:
    """Local baselines on the baseline's quantile bins; a card's reference (a histogram) on the score bins."""
    if baseline.scores is not None:
        return stats.psi(np.asarray(baseline.scores), np.asarray(scores))
    return metrics.psi_from_counts(baseline.shares, metrics.histogram(scores, SCORE_EDGES))


@dataclass
class Drift:
    model_version: str | None
    baseline: Baseline | None
    table: Table  # period, n, psi, alert
    histogram: list[int]  # scores of the whole window on SCORE_EDGES
    baseline_histogram: list[float] | None  # the baseline's share of studies per bin

    @property
    def alerts(self) -> list[str]:
        return [row[0] for row in self.table.rows if row[3]]


def drift_report(*, finding: str, period: str, model_version: str | None = None, now: datetime | None = None) -> Drift:
    model_version = model_version or latest_model_version(finding=finding) or cards.configured_version(finding=finding)
    since = window_start(period, now)
    pairs = list(
        TriageResult.objects.filter(
            finding=finding, model_version=model_version, is_current=True, study__received_at__gte=since
        ).values_list("study__received_at", "score")
    )
    baseline = drift_baseline(finding=finding, model_version=model_version) if model_version else None
    by_bucket = _bucketed(pairs, period)
    table = Table(["period", "studies", "psi", "alert"])
    for start in bucket_starts(period, now):
        scores = by_bucket.get(start, [])
        psi = _psi(baseline, scores) if baseline is not None and len(scores) >= MIN_PSI_CASES else None
        table.rows.append([bucket_label(start), len(scores), psi, psi is not None and psi > metrics.PSI_ALERT])
    return Drift(
        model_version=model_version,
        baseline=baseline,
        table=table,
        histogram=metrics.histogram([s for _, s in pairs], SCORE_EDGES),
        baseline_histogram=baseline.shares if baseline else None,
    )


# --- flag rate against the model card ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FlagRateWindow:
    """The last ``window`` current results of a finding's latest model version, and the band its card expects."""

    finding: str
    model_version: str
    flagged: int
    window: int
    expected_low: float
    expected_high: float


def flag_rate_window(*, finding: str, size: int) -> FlagRateWindow | None:
    """Up to ``size`` results; None below MIN_FLAG_RATE_WINDOW of them (or without a card to judge them by).

    Each result is judged at the threshold it was flagged under (sources may override it), so the band is the mean
    of the card's band at each result's threshold.
    """
    version = latest_model_version(finding=finding)
    card = cards.card_for_version(finding=finding, model_version=version) if version else None
    if version is None or card is None:
        return None
    rows = list(
        TriageResult.objects.filter(finding=finding, model_version=version, is_current=True)
        .order_by("-created_at", "-id")
        .values_list("positive", "threshold")[:size]
    )
    if len(rows) < MIN_FLAG_RATE_WINDOW:
        return None
    try:
        bands = {t: modelcard.flag_rate_band(card, t) for t in {t for _, t in rows}}
    except ValueError:
        return None
    low = sum(bands[t][0] for _, t in rows) / len(rows)
    high = sum(bands[t][1] for _, t in rows) / len(rows)
    return FlagRateWindow(finding, version, sum(positive for positive, _ in rows), len(rows), low, high)


def alerts_open(*, finding: str | None = None) -> list[ModelAlert]:
    alerts = ModelAlert.objects.filter(cleared_at__isnull=True)
    return list(alerts.filter(finding=finding) if finding else alerts)


# --- agreement with radiologists ---------------------------------------------------------------------------------


def agreement_table(*, finding: str, period: str, now: datetime | None = None) -> Table:
    """Share of agree among agree + disagree verdicts on the finding, with its Wilson interval."""
    rows = Feedback.objects.filter(result__finding=finding, created_at__gte=window_start(period, now)).values_list(
        "created_at", "verdict"
    )
    by_bucket = _bucketed(list(rows), period)
    table = Table(["period", "agree", "disagree", "unsure", "agreement", "agreement_low", "agreement_high"])
    for start in bucket_starts(period, now):
        counts = Counter(by_bucket.get(start, []))
        decided = counts[Verdict.AGREE] + counts[Verdict.DISAGREE]
        interval = stats.wilson_interval(counts[Verdict.AGREE], decided) if decided else None
        table.rows.append(
            [
                bucket_label(start),
                counts[Verdict.AGREE],
                counts[Verdict.DISAGREE],
                counts[Verdict.UNSURE],
                interval.estimate if interval else None,
                interval.low if interval else None,
                interval.high if interval else None,
            ]
        )
    return table


# --- time to result and report -----------------------------------------------------------------------------------


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return (later - earlier).total_seconds() if later is not None else None


def latency_table(*, period: str, now: datetime | None = None) -> Table:
    """p50 and p95 seconds from arrival to result and to delivered report, and per pipeline stage."""
    since = window_start(period, now)
    studies = Study.objects.filter(received_at__gte=since)
    first_result = dict(
        TriageResult.objects.filter(study__in=studies)
        .values("study_id")
        .annotate(at=Min("created_at"))
        .values_list("study_id", "at")
    )
    first_report = dict(
        OutboxMessage.objects.filter(study__in=studies, sent_at__isnull=False)
        .values("study_id")
        .annotate(at=Min("sent_at"))
        .values_list("study_id", "at")
    )
    timings = dict(TriageJob.objects.filter(study__in=studies).values_list("study_id", "timings"))
    samples: dict[date, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    stages: set[str] = set()
    for study_id, received in studies.values_list("id", "received_at"):
        bucket = samples[bucket_start(received, period)]
        for name, value in (
            ("to_result", _seconds(first_result.get(study_id), received)),
            ("to_report", _seconds(first_report.get(study_id), received)),
        ):
            if value is not None:
                bucket[name].append(value)
        for stage, value in (timings.get(study_id) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                stages.add(stage)
                bucket[f"stage:{stage}"].append(float(value))
    measures = ["to_result", "to_report", *(f"stage:{s}" for s in sorted(stages))]
    table = Table(["period"] + [f"{m}_{q}" for m in measures for q in ("p50", "p95")])
    for start in bucket_starts(period, now):
        bucket = samples.get(start, {})
        row: list = [bucket_label(start)]
        for measure in measures:
            values = bucket.get(measure, [])
            row += [metrics.percentile(values, 50), metrics.percentile(values, 95)]
        table.rows.append(row)
    return table


# --- failures, rejections and queues -----------------------------------------------------------------------------


def failure_table(*, period: str, now: datetime | None = None) -> Table:
    """Failed and rejected jobs per period and reason (the job's error code)."""
    since = window_start(period, now)
    rows = TriageJob.objects.filter(state__in=[JobState.FAILED, JobState.REJECTED], created_at__gte=since).values_list(
        "finished_at", "created_at", "state", "error_code"
    )
    by_bucket: dict[date, Counter] = defaultdict(Counter)
    reasons: set[str] = set()
    for finished, created, state, code in rows:
        reason = f"{state}:{code or 'unknown'}"
        reasons.add(reason)
        by_bucket[bucket_start(finished or created, period)][reason] += 1
    ordered = sorted(reasons)
    table = Table(["period", *ordered])
    for start in bucket_starts(period, now):
        table.rows.append([bucket_label(start), *(by_bucket[start][r] for r in ordered)])
    return table


def queue_depth() -> dict[str, int]:
    """Work waiting now: jobs queued or being processed, reports waiting or failed for good."""
    jobs = dict(TriageJob.objects.values("state").annotate(n=Count("id")).values_list("state", "n"))
    outbox = dict(OutboxMessage.objects.values("state").annotate(n=Count("id")).values_list("state", "n"))
    return {
        "jobs_queued": jobs.get(JobState.QUEUED, 0),
        "jobs_active": sum(jobs.get(s, 0) for s in ACTIVE_JOB_STATES),
        "outbox_pending": outbox.get(OutboxState.PENDING, 0),
        "outbox_sending": outbox.get(OutboxState.SENDING, 0),
        "outbox_dead": outbox.get(OutboxState.DEAD, 0),
    }

"""Reads for shadow mode: each candidate's runs paired with the live result of the same study, and the comparison
the console shows (agreement, flag rates, alerts per day, cost; with labels, AUC and sensitivity/specificity by a
paired DeLong test, overall and per subgroup). Aggregates only: no patient names or IDs leave this module."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
from django.db.models import Count, Q

from inference import stats
from triage.governance import metrics
from triage.governance.metrics import subgroups
from triage.governance.shadow_stats import Agreement, PairedAuc, cohen_kappa, delong_paired
from triage.governance.validation import ground_truth_labels
from triage.models import ShadowModel, ShadowResult, ShadowRunStatus, ShadowState, TriageJob, TriageResult


@dataclass(frozen=True)
class Pair:
    """One study read by both: the live result in force when the shadow ran, and the shadow result."""

    study_id: int
    day: date
    live_version: str
    live_score: float
    live_positive: bool
    shadow_score: float
    shadow_positive: bool
    label: bool | None
    scanner: str
    slice_band: str
    age_band: str
    sex: str


def shadow_models(*, finding: str | None = None) -> list[ShadowModel]:
    rows = ShadowModel.objects.all()
    return list(rows.filter(finding=finding) if finding else rows)


def shadow_latest_promoted(*, finding: str) -> ShadowModel | None:
    """The promotion a rollback would undo: the newest promoted version of the finding."""
    return ShadowModel.objects.filter(finding=finding, state=ShadowState.PROMOTED).order_by("-promoted_at").first()


def shadow_results_latest(*, shadow_model: ShadowModel) -> dict[int, ShadowResult]:
    """Study id → the candidate's latest successful run on it."""
    rows = ShadowResult.objects.filter(shadow_model=shadow_model, status=ShadowRunStatus.DONE).order_by(
        "study_id", "created_at", "id"
    )
    return {row.study_id: row for row in rows.defer("key_image_png", "details")}


def shadow_pairs(*, shadow_model: ShadowModel) -> list[Pair]:
    """The candidate's latest run on each study beside the live result recorded for that study before it."""
    shadows = shadow_results_latest(shadow_model=shadow_model)
    lives: dict[int, TriageResult] = {}
    live_rows = (
        TriageResult.objects.filter(finding=shadow_model.finding, study_id__in=list(shadows))
        .select_related("study", "series")
        .defer("key_image_png", "details")
        .order_by("study_id", "created_at", "id")
    )
    for row in live_rows:
        if row.created_at <= shadows[row.study_id].created_at:
            lives[row.study_id] = row
    labels = ground_truth_labels(finding=shadow_model.finding)
    return [_pair(lives[sid], shadows[sid], labels.get(sid)) for sid in sorted(lives)]


def _pair(live: TriageResult, shadow: ShadowResult, label: bool | None) -> Pair:
    study = live.study
    return Pair(
        study_id=study.pk,
        day=shadow.created_at.date(),
        live_version=live.model_version,
        live_score=live.score,
        live_positive=live.positive,
        shadow_score=float(shadow.score or 0.0),
        shadow_positive=bool(shadow.positive),
        label=label,
        scanner=metrics.scanner_label(study.manufacturer, study.manufacturer_model),
        slice_band=metrics.slice_band(live.series.slice_thickness_mm),
        age_band=metrics.age_band(study.patient_age_years),
        sex=metrics.sex_label(study.patient_sex),
    )


# --- the comparison ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """Seconds of shadow inference per study (loading apart), beside the live model's on the same jobs."""

    runs: int
    seconds_total: float
    seconds_mean: float | None
    seconds_p50: float | None
    seconds_p90: float | None
    load_seconds_total: float
    live_seconds_p50: float | None


@dataclass(frozen=True)
class LabelledRow:
    """Both models on the labelled studies of one group (or all of them)."""

    dimension: str
    group: str
    n: int
    n_positive: int
    paired: PairedAuc | None
    live_auc: float | None
    shadow_auc: float | None
    live_point: stats.OperatingPoint
    shadow_point: stats.OperatingPoint


@dataclass
class Comparison:
    shadow_model: ShadowModel
    runs: dict[str, int]
    pairs: list[Pair]
    agreement: Agreement
    live_flag_rate: stats.Interval
    shadow_flag_rate: stats.Interval
    days: float
    daily: list[tuple[date, int, int, int]]  # day, studies, live alerts, shadow alerts
    cost: Cost
    overall: LabelledRow | None = None
    subgroups: list[LabelledRow] = field(default_factory=list)

    @property
    def live_alerts_per_day(self) -> float:
        return sum(p.live_positive for p in self.pairs) / self.days if self.days else 0.0

    @property
    def shadow_alerts_per_day(self) -> float:
        return sum(p.shadow_positive for p in self.pairs) / self.days if self.days else 0.0


def shadow_comparison(*, shadow_model: ShadowModel, now: datetime | None = None) -> Comparison:
    pairs = shadow_pairs(shadow_model=shadow_model)
    live = [p.live_positive for p in pairs]
    shadow = [p.shadow_positive for p in pairs]
    comparison = Comparison(
        shadow_model=shadow_model,
        runs=shadow_run_counts(shadow_model=shadow_model),
        pairs=pairs,
        agreement=cohen_kappa(live, shadow),
        live_flag_rate=stats.wilson_interval(sum(live), len(live)),
        shadow_flag_rate=stats.wilson_interval(sum(shadow), len(shadow)),
        days=_days_spanned(pairs),
        daily=_daily(pairs),
        cost=shadow_cost(shadow_model=shadow_model),
    )
    labelled = [p for p in pairs if p.label is not None]
    if labelled:
        comparison.overall = _labelled_row("All", "all labelled studies", labelled, shadow_model.threshold)
        comparison.subgroups = _subgroup_rows(labelled, shadow_model.threshold)
    return comparison


def shadow_run_counts(*, shadow_model: ShadowModel) -> dict[str, int]:
    counts = ShadowResult.objects.filter(shadow_model=shadow_model).aggregate(
        **{status: Count("id", filter=Q(status=status)) for status in ShadowRunStatus.values}
    )
    return {status: int(counts[status] or 0) for status in ShadowRunStatus.values}


def _days_spanned(pairs: list[Pair]) -> float:
    """Whole days from the first to the last shadow run, at least one."""
    if not pairs:
        return 0.0
    days = [p.day for p in pairs]
    return float(max(1, (max(days) - min(days)).days + 1))


def _daily(pairs: list[Pair]) -> list[tuple[date, int, int, int]]:
    by_day: dict[date, list[Pair]] = {}
    for pair in pairs:
        by_day.setdefault(pair.day, []).append(pair)
    return [
        (day, len(ps), sum(p.live_positive for p in ps), sum(p.shadow_positive for p in ps))
        for day, ps in sorted(by_day.items())
    ]


def shadow_cost(*, shadow_model: ShadowModel) -> Cost:
    rows = list(
        ShadowResult.objects.filter(shadow_model=shadow_model)
        .exclude(status=ShadowRunStatus.SKIPPED)
        .values_list("seconds", "load_seconds", "job_id")
    )
    seconds = [s for s, _, _ in rows]
    jobs = {job for _, _, job in rows if job is not None}
    live = [
        float(t["infer"])
        for t in TriageJob.objects.filter(pk__in=jobs).values_list("timings", flat=True)
        if isinstance(t, dict) and isinstance(t.get("infer"), (int, float))
    ]
    return Cost(
        runs=len(rows),
        seconds_total=float(sum(seconds)),
        seconds_mean=float(np.mean(seconds)) if seconds else None,
        seconds_p50=metrics.percentile(seconds, 50),
        seconds_p90=metrics.percentile(seconds, 90),
        load_seconds_total=float(sum(load for _, load, _ in rows)),
        live_seconds_p50=metrics.percentile(live, 50),
    )


def _subgroup_rows(pairs: list[Pair], threshold: float) -> list[LabelledRow]:
    return [_labelled_row(dimension, group, members, threshold) for dimension, group, members in subgroups(pairs)]


def _labelled_row(dimension: str, group: str, pairs: list[Pair], shadow_threshold: float) -> LabelledRow:
    """AUCs by DeLong's paired test where the group has two cases of each class; each model's sensitivity and
    specificity at its own operating point (the live flag as shown, the shadow at its registered threshold)."""
    y = np.array([p.label for p in pairs], dtype=bool)
    live = np.array([p.live_score for p in pairs])
    shadow = np.array([p.shadow_score for p in pairs])
    live_calls = np.array([p.live_positive for p in pairs], dtype=np.float64)
    n_pos = int(y.sum())
    paired = delong_paired(y, live, shadow) if min(n_pos, len(pairs) - n_pos) >= 2 else None
    both = 0 < n_pos < len(pairs)
    return LabelledRow(
        dimension=dimension,
        group=group,
        n=len(pairs),
        n_positive=n_pos,
        paired=paired,
        live_auc=stats.auc(y, live) if both else None,
        shadow_auc=stats.auc(y, shadow) if both else None,
        # The live flag is what radiologists saw (its own threshold per source): called positive at 0.5 of 0/1.
        live_point=stats.operating_point(y, live_calls, 0.5),
        shadow_point=stats.operating_point(y, shadow, shadow_threshold),
    )


def nan_to_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value

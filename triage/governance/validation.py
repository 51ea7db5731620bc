"""Local validation: ground truth in (CSV import, radiologists' feedback), each model version's performance out.

Ground truth from several sources for one study and finding is resolved by precedence: a curated CSV import over
the final report over one-click feedback. A case is the latest result of a model version for a study that has
ground truth for the finding.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from django.db import transaction
from django.db.models import Count, Min
from django.utils import timezone

from inference import stats
from triage.core.audit import audit_record
from triage.governance import cards, metrics
from triage.governance.metrics import subgroups
from triage.models import (
    Finding,
    GroundTruth,
    GroundTruthSource,
    ModelConfig,
    Study,
    TriageResult,
    User,
    Verdict,
)
from worklist.models import Feedback

LABEL_VALUES = {"1": True, "true": True, "positive": True, "0": False, "false": False, "negative": False}
GROUND_TRUTH_PRECEDENCE = (GroundTruthSource.CSV, GroundTruthSource.REPORT, GroundTruthSource.FEEDBACK)
MAX_IMPORT_ROWS = 100_000
VOLUME_WINDOW_DAYS = 28
_LOOKUP_CHUNK = 500


# --- ground truth in ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)


@dataclass(frozen=True)
class _Row:
    line: int
    uid: str
    accession: str
    finding: str
    label: bool


def _parse_rows(text: str, report: ImportReport) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    headers = {(h or "").strip().lower() for h in reader.fieldnames or []}
    missing = {"finding", "label"} - headers
    if missing or not headers & {"accession_number", "study_instance_uid"}:
        need = ", ".join(sorted(missing)) or "accession_number or study_instance_uid"
        report.errors.append(RowError(1, f"The header lacks the column(s): {need}."))
        return []
    rows = []
    for raw in reader:
        report.rows += 1
        if report.rows > MAX_IMPORT_ROWS:
            report.errors.append(RowError(reader.line_num, f"More than {MAX_IMPORT_ROWS} rows: the rest is not read."))
            break
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(v, str)}
        parsed = _parse_row(reader.line_num, row)
        if isinstance(parsed, RowError):
            report.errors.append(parsed)
        else:
            rows.append(parsed)
    return rows


def _parse_row(line: int, row: dict[str, str]) -> _Row | RowError:
    uid, accession = row.get("study_instance_uid", ""), row.get("accession_number", "")
    finding, label = row.get("finding", "").lower(), row.get("label", "").lower()
    if not uid and not accession:
        return RowError(line, "Neither accession_number nor study_instance_uid is given.")
    if finding not in Finding.values:
        return RowError(line, f"Unknown finding {finding!r}; expected one of {', '.join(Finding.values)}.")
    if label not in LABEL_VALUES:
        return RowError(line, f"Label {label!r} is not one of 1/0, true/false, positive/negative.")
    return _Row(line, uid, accession, finding, LABEL_VALUES[label])


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(values), _LOOKUP_CHUNK):
        yield values[i : i + _LOOKUP_CHUNK]


def _study_maps(rows: list[_Row]) -> tuple[dict[str, int], dict[str, list[int]]]:
    by_uid: dict[str, int] = {}
    by_accession: dict[str, list[int]] = {}
    for chunk in _chunks(sorted({r.uid for r in rows if r.uid})):
        by_uid.update(Study.objects.filter(study_instance_uid__in=chunk).values_list("study_instance_uid", "id"))
    for chunk in _chunks(sorted({r.accession for r in rows if r.accession})):
        for accession, pk in Study.objects.filter(accession_number__in=chunk).values_list("accession_number", "id"):
            by_accession.setdefault(accession, []).append(pk)
    return by_uid, by_accession


def _resolve_study(row: _Row, by_uid: dict[str, int], by_accession: dict[str, list[int]]) -> int | RowError:
    """The study a row names; never guesses when an accession number matches several studies."""
    if row.uid:
        pk = by_uid.get(row.uid)
        if pk is None:
            return RowError(row.line, "No study has this study_instance_uid.")
        if row.accession and pk not in by_accession.get(row.accession, []):
            return RowError(row.line, "accession_number and study_instance_uid name different studies.")
        return pk
    matches = by_accession.get(row.accession, [])
    if not matches:
        return RowError(row.line, "No study has this accession_number.")
    if len(matches) > 1:
        return RowError(row.line, f"accession_number matches {len(matches)} studies; give study_instance_uid.")
    return matches[0]


@transaction.atomic
def ground_truth_import_csv(*, text: str, actor: User | None) -> ImportReport:
    """Import labels from CSV (accession_number or study_instance_uid, finding, label).

    Good rows are saved; every bad row is reported with its line number and the reason. A later row for the same
    study and finding is an error rather than a silent overwrite.
    """
    report = ImportReport()
    rows = _parse_rows(text, report)
    by_uid, by_accession = _study_maps(rows)
    labels: dict[tuple[int, str], bool] = {}
    first_line: dict[tuple[int, str], int] = {}
    for row in rows:
        study_id = _resolve_study(row, by_uid, by_accession)
        if isinstance(study_id, RowError):
            report.errors.append(study_id)
            continue
        key = (study_id, row.finding)
        if key in first_line:
            report.errors.append(RowError(row.line, f"Repeats the study and finding of line {first_line[key]}."))
            continue
        first_line[key], labels[key] = row.line, row.label
    report.created, report.updated = _ground_truth_upsert(labels, GroundTruthSource.CSV, actor)
    report.errors.sort(key=lambda e: e.line)
    audit_record(
        action="ground_truth.import_csv",
        actor=actor,
        data={"rows": report.rows, "created": report.created, "updated": report.updated, "errors": len(report.errors)},
    )
    return report


def _ground_truth_upsert(
    labels: dict[tuple[int, str], bool], source: str, actor: User | None, *, by: dict | None = None
) -> tuple[int, int]:
    """Create or update rows of one source; ``by`` names the labelling user per key (feedback)."""
    now = timezone.now()
    existing = {
        (gt.study_id, gt.finding): gt
        for gt in GroundTruth.objects.select_for_update().filter(
            source=source, study_id__in=list({k[0] for k in labels})
        )
    }
    new, changed = [], []
    for (study_id, finding), label in labels.items():
        user = (by or {}).get((study_id, finding), actor)
        gt = existing.get((study_id, finding))
        if gt is None:
            new.append(GroundTruth(study_id=study_id, finding=finding, label=label, source=source, imported_by=user))
            continue
        gt.label, gt.imported_by, gt.created_at = label, user, now
        changed.append(gt)
    GroundTruth.objects.bulk_create(new)
    GroundTruth.objects.bulk_update(changed, ["label", "imported_by", "created_at"])
    return len(new), len(changed)


@transaction.atomic
def ground_truth_from_feedback(*, finding: str | None = None, actor: User | None = None) -> int:
    """Turn agree/disagree feedback into labels: agree means the flag was right, disagree that it was wrong.

    The flag is the one the radiologist saw. model_threshold_set calls this before it moves a threshold, so a
    label taken here is kept (not recomputed from a later flag) unless newer feedback arrives. Unsure is ignored;
    the latest verdict per study and finding wins. Returns the number of labels created or changed.
    """
    feedback = Feedback.objects.filter(verdict__in=[Verdict.AGREE, Verdict.DISAGREE]).select_related("result")
    if finding:
        feedback = feedback.filter(result__finding=finding)
    latest = {}
    for item in feedback.order_by("updated_at", "id"):
        latest[(item.result.study_id, item.result.finding)] = item
    captured = {
        (s, f): at
        for s, f, at in GroundTruth.objects.filter(source=GroundTruthSource.FEEDBACK).values_list(
            "study_id", "finding", "created_at"
        )
    }
    labels, by = {}, {}
    for key, item in latest.items():
        if key in captured and captured[key] >= item.updated_at:
            continue
        labels[key] = item.result.positive if item.verdict == Verdict.AGREE else not item.result.positive
        by[key] = item.user
    created, updated = _ground_truth_upsert(labels, GroundTruthSource.FEEDBACK, actor, by=by)
    if created or updated:
        audit_record(
            action="ground_truth.from_feedback",
            actor=actor,
            data={"finding": finding, "created": created, "updated": updated},
        )
    return created + updated


# --- cases -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    score: float
    label: bool
    scanner: str
    slice_band: str
    age_band: str
    sex: str


def ground_truth_labels(*, finding: str) -> dict[int, bool]:
    """Study id → label, the most trusted source winning."""
    best: dict[int, tuple[int, bool]] = {}
    for study_id, label, source in GroundTruth.objects.filter(finding=finding).values_list(
        "study_id", "label", "source"
    ):
        rank = GROUND_TRUTH_PRECEDENCE.index(source)
        if study_id not in best or rank < best[study_id][0]:
            best[study_id] = (rank, label)
    return {study_id: label for study_id, (_, label) in best.items()}


def validation_cases(*, finding: str, model_version: str) -> list[Case]:
    """One case per labelled study: the latest result of this model version for the finding."""
    labels = ground_truth_labels(finding=finding)
    rows = (
        TriageResult.objects.filter(
            finding=finding,
            model_version=model_version,
            study_id__in=GroundTruth.objects.filter(finding=finding).values("study_id"),
        )
        .order_by("study_id", "created_at", "id")
        .values_list(
            "study_id",
            "score",
            "study__manufacturer",
            "study__manufacturer_model",
            "series__slice_thickness_mm",
            "study__patient_age_years",
            "study__patient_sex",
        )
    )
    latest = {row[0]: row for row in rows}
    return [
        Case(
            score=score,
            label=labels[study_id],
            scanner=metrics.scanner_label(make, model),
            slice_band=metrics.slice_band(thickness),
            age_band=metrics.age_band(age),
            sex=metrics.sex_label(sex),
        )
        for study_id, score, make, model, thickness, age, sex in latest.values()
    ]


@dataclass(frozen=True)
class VersionRow:
    finding: str
    model_version: str
    results: int
    labelled: int


def model_versions(*, finding: str | None = None) -> list[VersionRow]:
    """Model versions that produced results, newest first, with how many of their studies are labelled."""
    results = TriageResult.objects.all()
    if finding:
        results = results.filter(finding=finding)
    rows = results.values("finding", "model_version").annotate(n=Count("study", distinct=True), first=Min("created_at"))
    out = []
    for row in sorted(rows, key=lambda r: (r["finding"], r["first"]), reverse=True):
        labelled = (
            results.filter(finding=row["finding"], model_version=row["model_version"])
            .filter(study_id__in=GroundTruth.objects.filter(finding=row["finding"]).values("study_id"))
            .values("study_id")
            .distinct()
            .count()
        )
        out.append(VersionRow(row["finding"], row["model_version"], row["n"], labelled))
    return out


# --- performance -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubgroupRow:
    dimension: str
    group: str
    n: int
    n_positive: int
    auc: float | None
    sensitivity: stats.Interval
    specificity: stats.Interval


@dataclass
class ValidationSummary:
    finding: str
    model_version: str
    threshold: float
    n: int
    n_positive: int
    auc: stats.Interval | None = None
    roc: stats.RocCurve | None = None
    point: stats.OperatingPoint | None = None
    subgroups: list[SubgroupRow] = field(default_factory=list)

    @property
    def prevalence(self) -> float | None:
        return self.n_positive / self.n if self.n else None


def current_threshold(*, finding: str) -> float:
    config = ModelConfig.objects.filter(finding=finding).first()
    return config.threshold if config else 0.5


def _arrays(cases: list[Case]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([c.label for c in cases], dtype=bool), np.array([c.score for c in cases], dtype=np.float64)


def validation_summary(*, finding: str, model_version: str, threshold: float | None = None) -> ValidationSummary:
    """ROC, AUC (DeLong interval) and the operating point with Wilson intervals, overall and per subgroup."""
    cases = validation_cases(finding=finding, model_version=model_version)
    threshold = current_threshold(finding=finding) if threshold is None else threshold
    y, s = _arrays(cases)
    summary = ValidationSummary(finding, model_version, threshold, n=len(cases), n_positive=int(y.sum()))
    if not cases:
        return summary
    summary.point = stats.operating_point(y, s, threshold)
    if y.any() and not y.all():
        summary.roc = stats.roc_curve(y, s)
        summary.auc = metrics.auc_delong(y, s)
    summary.subgroups = subgroup_rows(cases, threshold)
    return summary


def subgroup_rows(cases: list[Case], threshold: float) -> list[SubgroupRow]:
    rows = []
    for dimension, group, members in subgroups(cases):
        y, s = _arrays(members)
        point = stats.operating_point(y, s, threshold)
        auc = stats.auc(y, s) if y.any() and not y.all() else None
        n_positive = int(y.sum())
        rows.append(SubgroupRow(dimension, group, len(members), n_positive, auc, point.sensitivity, point.specificity))
    return rows


# --- threshold picker --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteVolume:
    days: float
    studies: int
    scores: list[float]

    @property
    def per_day(self) -> float:
        return self.studies / self.days if self.days else 0.0


def site_volume(*, finding: str, days: int = VOLUME_WINDOW_DAYS, now: datetime | None = None) -> SiteVolume:
    """Studies with a current result for the finding over the last ``days`` days (or since the first, if later)."""
    now = now or timezone.now()
    since = now - timedelta(days=days)
    rows = list(
        TriageResult.objects.filter(finding=finding, is_current=True, study__received_at__gte=since).values_list(
            "score", "study__received_at"
        )
    )
    if not rows:
        return SiteVolume(days=float(days), studies=0, scores=[])
    first = min(at for _, at in rows)
    # A site live for three days has three days of volume, not a 28-day average; at least one day.
    span_days = max(1.0, min(float(days), math.ceil((now - first).total_seconds() / 86400.0)))
    return SiteVolume(days=span_days, studies=len(rows), scores=[score for score, _ in rows])


@dataclass(frozen=True)
class ThresholdPick:
    threshold: float
    point: stats.OperatingPoint | None
    prevalence: float | None
    ppv_at_prevalence: float | None
    npv_at_prevalence: float | None
    studies_per_day: float
    volume_days: float
    alerts_per_day_measured: float
    alerts_per_day_expected: float | None
    false_alerts_per_day_expected: float | None
    card_alerts: cards.CardAlerts | None = None


def threshold_pick(
    *,
    finding: str,
    model_version: str,
    threshold: float,
    prevalence: float | None = None,
    now: datetime | None = None,
) -> ThresholdPick:
    """What a candidate threshold would do here: validated sensitivity and specificity, and alerts per day.

    Measured alerts count recent studies whose score reaches the candidate. Expected alerts and false alerts
    combine the validated rates with the site's volume and a prevalence (by default the validation set's); the
    model card's figures, with the site's volume, warn of an alert storm before any local case is labelled.
    """
    cases = validation_cases(finding=finding, model_version=model_version)
    volume = site_volume(finding=finding, now=now)
    requested_prevalence = prevalence
    measured = sum(score >= threshold for score in volume.scores) / volume.days if volume.days else 0.0
    point, expected, false_alerts, ppv, npv = None, None, None, None, None
    if cases:
        y, s = _arrays(cases)
        point = stats.operating_point(y, s, threshold)
        prevalence = float(y.mean()) if prevalence is None else prevalence
        sens, spec = point.sensitivity.estimate, point.specificity.estimate
        if not (math.isnan(sens) or math.isnan(spec)):
            expected = volume.per_day * (prevalence * sens + (1.0 - prevalence) * (1.0 - spec))
            false_alerts = volume.per_day * (1.0 - prevalence) * (1.0 - spec)
            ppv, npv = stats.predictive_values(sens, spec, prevalence)
    return ThresholdPick(
        threshold=threshold,
        point=point,
        prevalence=prevalence,
        ppv_at_prevalence=ppv,
        npv_at_prevalence=npv,
        studies_per_day=volume.per_day,
        volume_days=volume.days,
        alerts_per_day_measured=measured,
        alerts_per_day_expected=expected,
        false_alerts_per_day_expected=false_alerts,
        card_alerts=cards.card_alerts(
            finding=finding,
            model_version=model_version,
            threshold=threshold,
            studies_per_day=volume.per_day,
            prevalence=requested_prevalence,
        ),
    )


def baseline_scores(*, finding: str, model_version: str) -> list[float]:
    """Scores of the validation set for this model version (the drift baseline)."""
    return [case.score for case in validation_cases(finding=finding, model_version=model_version)]

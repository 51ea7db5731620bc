"""Writes to the pipeline's clinical state. Each service is one transaction that writes its audit row."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from triage.exceptions import InvalidInput, NotFound
from triage.models import (
    AuditEvent,
    DicomWebSource,
    ModelConfig,
    Role,
    Series,
    Study,
    ThresholdOverride,
    TriageJob,
    TriageResult,
    User,
)

logger = logging.getLogger(__name__)


def audit_record(*, action: str, actor: User | None = None, obj: Any = None, data: dict | None = None) -> AuditEvent:
    """Audit rows carry identifiers and values only; callers never pass patient data in ``data``."""
    actor_row = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        actor=actor_row,
        action=action,
        object_type=type(obj).__name__ if obj is not None else "",
        object_id=str(getattr(obj, "pk", "")) if obj is not None else "",
        data=data or {},
    )


def source_get_default() -> DicomWebSource | None:
    """The source named by TRIAGE_DICOMWEB_URL, created or updated to match the environment."""
    url = settings.TRIAGE_DICOMWEB_URL
    if not url:
        return DicomWebSource.objects.filter(enabled=True).order_by("id").first()
    source, _ = DicomWebSource.objects.update_or_create(
        name="default",
        defaults={
            "url": url.rstrip("/"),
            "username": settings.TRIAGE_DICOMWEB_USERNAME or "",
            "password_env": "TRIAGE_DICOMWEB_PASSWORD" if settings.TRIAGE_DICOMWEB_PASSWORD else "",
            "token_env": "TRIAGE_DICOMWEB_TOKEN" if settings.TRIAGE_DICOMWEB_TOKEN else "",
        },
    )
    return source


@transaction.atomic
def study_request_triage(
    *, study_instance_uid: str, source_name: str | None = None, actor: User | None = None
) -> TriageJob:
    """Queue a study once, however often the PACS hook and the poller report it."""
    if source_name:
        source = DicomWebSource.objects.filter(name=source_name).first()
        if source is None:
            raise NotFound(f"No DICOMweb source is named {source_name!r}.")
    else:
        source = source_get_default()
    study, _ = Study.objects.get_or_create(study_instance_uid=study_instance_uid, defaults={"source": source})
    job, created = TriageJob.objects.get_or_create(study=study)
    if created:
        audit_record(action="study.queued", actor=actor, obj=job, data={"source": getattr(source, "name", "")})
        from triage.ingest.jobs import job_enqueue_on_commit

        job_enqueue_on_commit(job_id=job.pk)
    return job


def worker_heartbeat(*, worker_id: str, kind: str) -> None:
    """Record that a worker process is alive; /readyz reads the newest beat."""
    from django.utils import timezone

    from triage.models import WorkerHeartbeat

    WorkerHeartbeat.objects.update_or_create(worker_id=worker_id, defaults={"kind": kind, "last_seen": timezone.now()})


def _results_under_threshold(*, model_config: ModelConfig, source: DicomWebSource | None):  # noqa: ANN202
    """Current results that the operating point governs: those of studies still to be read.

    A reported study keeps the threshold it was read under; re-flagging it would only amend a closed case.
    """
    results = TriageResult.objects.filter(finding=model_config.finding, is_current=True).exclude(
        study__worklist_item__status="reported"
    )
    if source is not None:
        return results.filter(study__source=source)
    # The site-wide threshold does not govern sources that carry their own override.
    overridden = ThresholdOverride.objects.filter(model=model_config).values("source_id")
    return results.exclude(study__source_id__in=overridden)


def _threshold_store(
    *, model_config: ModelConfig, threshold: float | None, source: DicomWebSource | None
) -> tuple[float | None, float]:
    """Save the new operating point; returns (old, effective). ``threshold=None`` with a source drops its override."""
    if source is None:
        if threshold is None:
            raise InvalidInput("The site-wide threshold cannot be removed.")
        old: float | None = model_config.threshold
        model_config.threshold = threshold
        model_config.save(update_fields=["threshold", "updated_at"])
        return old, threshold
    override = ThresholdOverride.objects.select_for_update().filter(model=model_config, source=source).first()
    old = override.threshold if override else None
    if threshold is None:
        if override:
            override.delete()
        return old, model_config.threshold
    ThresholdOverride.objects.update_or_create(model=model_config, source=source, defaults={"threshold": threshold})
    return old, threshold


@transaction.atomic
def model_threshold_set(
    *,
    model_config: ModelConfig,
    threshold: float | None,
    actor: User | None,
    source: DicomWebSource | None = None,
) -> list[TriageResult]:
    """Move an operating point and apply it at once to every study still to be read.

    With ``source`` the per-source override is set (or removed when ``threshold`` is None). Current results are
    re-evaluated, open worklist items resynced, and an amended report queued for each study whose flag flipped.
    Returns the results whose ``positive`` flipped.
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InvalidInput(f"A threshold must lie between 0 and 1, got {threshold}.")
    model_config = ModelConfig.objects.select_for_update().get(pk=model_config.pk)
    from triage.validation import ground_truth_from_feedback

    # Feedback labels depend on the flag the radiologist saw; freeze them before the flag can change.
    ground_truth_from_feedback(finding=model_config.finding, actor=actor)
    old, new = _threshold_store(model_config=model_config, threshold=threshold, source=source)
    flipped = _results_reevaluate(model_config=model_config, threshold=new, source=source)
    audit_record(
        action="model.threshold_set",
        actor=actor,
        obj=model_config,
        data={
            "finding": model_config.finding,
            "source": source.name if source else None,
            "old": old,
            "new": threshold,
            "effective": new,
            "flipped": len(flipped),
        },
    )
    _threshold_propagate(finding=model_config.finding, flipped=flipped)
    return flipped


def _results_reevaluate(
    *, model_config: ModelConfig, threshold: float, source: DicomWebSource | None
) -> list[TriageResult]:
    results = list(_results_under_threshold(model_config=model_config, source=source).select_for_update(of=("self",)))
    flipped = []
    for result in results:
        positive = result.score >= threshold
        if positive != result.positive:
            flipped.append(result)
        result.threshold, result.positive = threshold, positive
    TriageResult.objects.bulk_update(results, ["threshold", "positive"])
    return flipped


def _threshold_propagate(*, finding: str, flipped: list[TriageResult]) -> None:
    """Ranks and reports follow the new flags, inside the same transaction (both notify after commit)."""
    from triage.outbox import outbox_enqueue_report
    from worklist.services import worklist_items_resync

    worklist_items_resync(finding=finding)
    for result in flipped:
        outbox_enqueue_report(study=result.study, finding=finding, reason="threshold_change")


@transaction.atomic
def user_role_set(*, user: User, role: str, actor: User | None) -> User:
    """Change a user's role; staff status (Django admin access) follows it, and a radiologist is never superuser."""
    if role not in Role.values:
        raise InvalidInput(f"Unknown role {role!r}.")
    user = User.objects.select_for_update().get(pk=user.pk)
    old = {"role": user.role, "is_staff": user.is_staff, "is_superuser": user.is_superuser}
    user.role = role
    user.is_staff = role == Role.ADMIN
    if role != Role.ADMIN:
        user.is_superuser = False
    user.save(update_fields=["role", "is_staff", "is_superuser"])
    new = {"role": user.role, "is_staff": user.is_staff, "is_superuser": user.is_superuser}
    audit_record(action="user.role_set", actor=actor, obj=user, data={"old": old, "new": new})
    return user


# Fields of a runner's output that have their own columns; the rest goes into ``details``.
_RESULT_COLUMNS = {"finding", "model_name", "model_version", "score", "threshold", "positive", "heatmap", "advisory"}


def _result_details(*, series: Series, output: Any) -> dict:
    details = {k: v for k, v in output.as_dict().items() if k not in _RESULT_COLUMNS}
    details["series_instance_uid"] = series.series_instance_uid
    details["localisation"] = {"box": details.pop("box", None), "heatmap_extent": details.pop("heatmap_extent", None)}
    return details


@transaction.atomic
def results_record(*, job: TriageJob, outputs: list[tuple[Series, Any, bytes | None]]) -> list[TriageResult]:
    """Store a job's model outputs as the study's current results, then resync its worklist item and queue reports.

    ``outputs`` holds (series, inference.runner.TriageOutput, key image PNG). Earlier current results for the same
    finding stop being current in the same transaction, so a rerun amends rather than duplicates.
    """
    study = job.study
    results = []
    for series, output, png in outputs:
        TriageResult.objects.filter(study=study, finding=output.finding, is_current=True).update(is_current=False)
        results.append(
            TriageResult.objects.create(
                study=study,
                series=series,
                job=job,
                finding=output.finding,
                model_name=output.model_name,
                model_version=output.model_version,
                score=float(output.score),
                threshold=float(output.threshold),
                positive=bool(output.positive),
                details=_result_details(series=series, output=output),
                key_image_png=png,
            )
        )
    audit_record(
        action="results.recorded",
        obj=job,
        data={"results": [{"finding": r.finding, "model": r.model_name, "version": r.model_version} for r in results]},
    )
    from triage.outbox import outbox_enqueue_report
    from worklist.services import worklist_item_sync

    worklist_item_sync(study=study)
    for finding in sorted({r.finding for r in results}):
        outbox_enqueue_report(study=study, finding=finding)
    return results

"""The FHIR outbox: report versions written in the caller's transaction, delivered by ``triage.fhir.delivery``.

Versions, statuses and retries: docs/fhir.md.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from triage.core.audit import audit_record
from triage.fhir import resources as fhir
from triage.fhir.delivery import outbox_kick
from triage.models import (
    FhirAuth,
    FhirEndpoint,
    OutboxMessage,
    OutboxState,
    ReportStatus,
    Study,
    TriageResult,
    User,
    Verdict,
)

logger = logging.getLogger(__name__)

CORRECTION_REASONS = frozenset({"correction", "radiologist_disagrees"})
DISPUTED_NOTE = "A radiologist has marked this AI finding as incorrect."


# ---------------------------------------------------------------------------------------------------------------
# Endpoints


@transaction.atomic
def endpoint_ensure_from_env() -> FhirEndpoint | None:
    """Create or update the endpoint named ``default`` from TRIAGE_FHIR_BASE_URL; run at start-up by the workers."""
    url = settings.TRIAGE_FHIR_BASE_URL
    if not url:
        return None
    wanted = {
        "base_url": url.rstrip("/"),
        "fhir_version": settings.TRIAGE_FHIR_VERSION,
        "auth": FhirAuth.BEARER if settings.TRIAGE_FHIR_TOKEN else FhirAuth.NONE,
        "secret_env": "TRIAGE_FHIR_TOKEN" if settings.TRIAGE_FHIR_TOKEN else "",
    }
    endpoint = FhirEndpoint.objects.filter(name="default").first()
    if endpoint is None:
        return FhirEndpoint.objects.create(name="default", **wanted)
    changed = [name for name, value in wanted.items() if getattr(endpoint, name) != value]
    if changed:
        for name in changed:
            setattr(endpoint, name, wanted[name])
        endpoint.save(update_fields=changed)
    return endpoint


def endpoints_enabled() -> list[FhirEndpoint]:
    return list(FhirEndpoint.objects.filter(enabled=True).order_by("id"))


# ---------------------------------------------------------------------------------------------------------------
# Enqueue (inside the caller's transaction)


@transaction.atomic
def outbox_enqueue_report(*, study: Study, finding: str, reason: str = "result") -> list[OutboxMessage]:
    """Queue the current result for (study, finding) as a new report version for every enabled endpoint."""
    study = Study.objects.select_for_update().get(pk=study.pk)  # serialises versions of this study's reports
    result = _current_result(study=study, finding=finding)
    if result is None:
        return []
    messages = [
        message
        for endpoint in endpoints_enabled()
        if (message := _version_enqueue(endpoint=endpoint, study=study, result=result, reason=reason)) is not None
    ]
    if messages:
        transaction.on_commit(outbox_kick, robust=True)
    return messages


@transaction.atomic
def outbox_retract(*, study: Study, finding: str, reason: str) -> list[OutboxMessage]:
    """Withdraw the report as ``entered-in-error`` wherever the EMR may hold it; drop it where it was never sent."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    result = _current_result(study=study, finding=finding) or _latest_result(study=study, finding=finding)
    if result is None:
        return []
    messages = []
    for endpoint in endpoints_enabled():
        message = _version_enqueue(endpoint=endpoint, study=study, result=result, reason=reason, retract=True)
        if message is not None:
            messages.append(message)
    if messages:
        transaction.on_commit(outbox_kick, robust=True)
    return messages


def outbox_backfill(*, endpoint: FhirEndpoint, limit: int = 1000) -> int:
    """Queue the current results an endpoint has never had a report for (one configured after the results).

    Each study is its own transaction, so a long backfill holds no lock for long. Returns how many were queued.
    """
    known = OutboxMessage.objects.filter(endpoint=endpoint, study=OuterRef("study"), finding=OuterRef("finding"))
    missing = (
        TriageResult.objects.filter(is_current=True)
        .exclude(Exists(known))
        .select_related("study", "series")
        .order_by("id")[:limit]
    )
    queued = 0
    for result in missing:
        with transaction.atomic():
            study = Study.objects.select_for_update().get(pk=result.study_id)
            queued += _version_enqueue(endpoint=endpoint, study=study, result=result, reason="backfill") is not None
    if queued:
        transaction.on_commit(outbox_kick, robust=True)
    return queued


def _current_result(*, study: Study, finding: str) -> TriageResult | None:
    return (
        TriageResult.objects.filter(study=study, finding=finding, is_current=True)
        .select_related("series")
        .order_by("-created_at", "-id")
        .first()
    )


def _latest_result(*, study: Study, finding: str) -> TriageResult | None:
    return TriageResult.objects.filter(study=study, finding=finding).select_related("series").order_by("-id").first()


def _report_versions(*, endpoint: FhirEndpoint, resource_id: str):  # noqa: ANN202 - a QuerySet
    return OutboxMessage.objects.filter(endpoint=endpoint, resource_id=resource_id)


def _version_enqueue(
    *, endpoint: FhirEndpoint, study: Study, result: TriageResult, reason: str, retract: bool = False
) -> OutboxMessage | None:
    resource_id = fhir.report_id(study_instance_uid=study.study_instance_uid, finding=result.finding)
    versions = _report_versions(endpoint=endpoint, resource_id=resource_id)
    latest = versions.order_by("-report_version").first()
    # A send was attempted: the EMR may hold the report, even if no acknowledgement came back.
    may_exist = versions.filter(Q(state=OutboxState.SENT) | Q(attempts__gt=0)).exists()
    if retract and not may_exist:
        _supersede_undelivered(versions)
        return None
    if _unchanged(latest, endpoint=endpoint, study=study, result=result, reason=reason, retract=retract):
        return None  # the EMR already has, or will get, exactly this
    status = _next_status(may_exist=may_exist, reason=reason, retract=retract)
    spec = _spec(endpoint=endpoint, result=result, status=status, reason=reason)
    fields = {
        "endpoint": endpoint,
        "study": study,
        "finding": result.finding,
        "report_status": status,
        "resource_id": resource_id,
        "report_version": (latest.report_version + 1) if latest else 1,
        "reason": reason[:32],
        "result_ids": [result.pk],
    }
    try:
        bundle = fhir.report_bundle_build(study=study, result=result, spec=spec)
    except fhir.ReportBuildError as err:
        _supersede_undelivered(versions)
        return _dead_letter_unbuildable(fields, err)
    _supersede_undelivered(versions)
    return OutboxMessage.objects.create(**fields, content_hash=fhir.content_hash(bundle), payload=bundle)


def _dead_letter_unbuildable(fields: dict[str, Any], err: fhir.ReportBuildError) -> OutboxMessage:
    """A report that cannot be built is a dead letter with its coded reason, never an error in the caller's
    transaction: the result and the worklist item it belongs to must commit whatever the EMR side makes of it."""
    message = OutboxMessage.objects.create(
        **fields, payload={}, state=OutboxState.DEAD, last_error=f"{err.code}: {err.message}"
    )
    logger.warning("outbox %s dead-lettered for %s: the report could not be built (%s)", message.pk,
                   message.endpoint.name, err.code)  # fmt: skip
    return message


def _unchanged(
    latest: OutboxMessage | None,
    *,
    endpoint: FhirEndpoint,
    study: Study,
    result: TriageResult,
    reason: str,
    retract: bool,
) -> bool:
    """Would a new version say what the newest live one says? Compared at the newest one's status, so that
    queueing an unchanged result again does not turn a preliminary report into an amended one."""
    live = (OutboxState.PENDING, OutboxState.SENDING, OutboxState.SENT)
    if latest is None or latest.state not in live or retract != (latest.report_status == ReportStatus.ENTERED_IN_ERROR):
        return False
    spec = _spec(endpoint=endpoint, result=result, status=latest.report_status, reason=reason)
    try:
        bundle = fhir.report_bundle_build(study=study, result=result, spec=spec)
    except fhir.ReportBuildError:
        return False  # the new version becomes a dead letter that says why
    return fhir.content_hash(bundle) == latest.content_hash


def _spec(*, endpoint: FhirEndpoint, result: TriageResult, status: str, reason: str) -> fhir.ReportSpec:
    if status == ReportStatus.ENTERED_IN_ERROR:
        note = f"Reason: {reason}."
    else:
        # Said in every later version too: the dispute stands until the result itself changes.
        note = DISPUTED_NOTE if result.feedback.filter(verdict=Verdict.DISAGREE).exists() else ""
    return fhir.ReportSpec(
        status=status,
        reason=reason,
        fhir_version=endpoint.fhir_version,
        patient_id_system=endpoint.patient_id_system,
        recorded_at=timezone.now(),
        note=note,
    )


def _next_status(*, may_exist: bool, reason: str, retract: bool) -> str:
    if retract:
        return ReportStatus.ENTERED_IN_ERROR
    if not may_exist:
        return ReportStatus.PRELIMINARY
    return ReportStatus.CORRECTED if reason in CORRECTION_REASONS else ReportStatus.AMENDED


def _supersede_undelivered(versions) -> None:  # noqa: ANN001 - a QuerySet
    # An in-flight version keeps its lease: the next version waits for it, so it cannot land after the next one.
    versions.filter(state__in=[OutboxState.PENDING, OutboxState.SENDING, OutboxState.DEAD]).update(
        state=OutboxState.SUPERSEDED
    )


# ---------------------------------------------------------------------------------------------------------------
# Admin


@transaction.atomic
def outbox_requeue(*, message: OutboxMessage, actor: User | None) -> bool:
    """Send a dead letter again, rebuilt from the current data (the endpoint's settings may have been fixed)."""
    message = OutboxMessage.objects.select_for_update().select_related("endpoint", "study").get(pk=message.pk)
    if message.state != OutboxState.DEAD:
        return False
    newer = _report_versions(endpoint=message.endpoint, resource_id=message.resource_id).filter(
        report_version__gt=message.report_version
    )
    if newer.exists():
        return False
    if not _payload_rebuild(message):
        message.save(update_fields=["last_error"])
        return False
    message.state = OutboxState.PENDING
    message.next_attempt_at = timezone.now()
    message.lease_owner, message.lease_expires_at = "", None
    # Attempts count again from here (TRIAGE_OUTBOX_MAX_ATTEMPTS); one stays, as the EMR may hold the report.
    message.attempts = min(message.attempts, 1)
    message.save()
    audit_record(
        action="outbox.requeued",
        actor=actor,
        obj=message,
        data={"endpoint": message.endpoint.name, "report_version": message.report_version},
    )
    transaction.on_commit(outbox_kick, robust=True)
    return True


def _payload_rebuild(message: OutboxMessage) -> bool:
    """Rebuild the payload from the current data; False (with the reason in ``last_error``) when it cannot be."""
    result = TriageResult.objects.filter(pk__in=message.result_ids).select_related("series").first()
    if result is None:
        return bool(message.payload)  # the result is gone: resend what was built, if anything was
    spec = _spec(endpoint=message.endpoint, result=result, status=message.report_status, reason=message.reason)
    try:
        message.payload = fhir.report_bundle_build(study=message.study, result=result, spec=spec)
    except fhir.ReportBuildError as err:
        message.last_error = f"{err.code}: {err.message}"
        return False
    message.content_hash = fhir.content_hash(message.payload)
    return True

"""The FHIR outbox: reports written in the caller's transaction, delivered by workers exactly once in effect.

Rules (docs/fhir.md):
- One DiagnosticReport per study and finding and EMR, at a deterministic id. Every version of it is a transaction
  Bundle of PUTs to deterministic ids, so a retry after a lost acknowledgement replaces rather than duplicates.
- Versions count up per endpoint and report. A new version supersedes older ones that are not yet delivered, and
  is not sent while an older one is in flight, so the EMR never receives an older version after a newer one.
- Status: ``preliminary`` until the EMR may hold the report (a send was attempted); then ``amended`` for a new
  result (re-run, threshold flip), ``corrected`` for a radiologist's correction, ``entered-in-error`` to retract.
- Network errors, 5xx, 408, 429 (honouring Retry-After) and 401 (the token is refreshed) are retried with
  exponential backoff and jitter; other 4xx go to the dead letter with the server's OperationOutcome.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from django_tasks import task

from triage import fhir, fhirclient
from triage.models import FhirAuth, FhirEndpoint, OutboxMessage, OutboxState, Study, TriageResult, User

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 600.0
RETRY_AFTER_CAP_SECONDS = 3600.0
RETRYABLE_STATUS = frozenset({408, 429})
KICK_INTERVAL_SECONDS = 0.25
CORRECTION_REASONS = frozenset({"correction", "radiologist_disagrees"})
DISPUTED_NOTE = "A radiologist has marked this AI finding as incorrect."


@dataclass
class DeliveryOutcome:
    """What one delivery attempt decided; applied to the message by ``_outcome_apply``."""

    state: str
    status_code: int | None = None
    error: str = ""
    operation_outcome: dict | None = None
    retry_after: float | None = None


@dataclass
class DeliverySummary:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    message_ids: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Endpoints


def endpoint_get_default() -> FhirEndpoint | None:
    """The endpoint named by TRIAGE_FHIR_BASE_URL, created or updated to match the environment."""
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
    endpoint_get_default()
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
        transaction.on_commit(outbox_kick)
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
        transaction.on_commit(outbox_kick)
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
        transaction.on_commit(outbox_kick)
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
    bundle = fhir.report_bundle_build(study=study, result=result, spec=spec)
    _supersede_undelivered(versions)
    return OutboxMessage.objects.create(
        endpoint=endpoint,
        study=study,
        finding=result.finding,
        report_status=status,
        resource_id=resource_id,
        report_version=(latest.report_version + 1) if latest else 1,
        reason=reason[:32],
        content_hash=fhir.content_hash(bundle),
        result_ids=[result.pk],
        payload=bundle,
    )


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
    if latest is None or latest.state not in live or retract != (latest.report_status == "entered-in-error"):
        return False
    spec = _spec(endpoint=endpoint, result=result, status=latest.report_status, reason=reason)
    return fhir.content_hash(fhir.report_bundle_build(study=study, result=result, spec=spec)) == latest.content_hash


def _spec(*, endpoint: FhirEndpoint, result: TriageResult, status: str, reason: str) -> fhir.ReportSpec:
    if status == "entered-in-error":
        note = f"Reason: {reason}."
    else:
        # Said in every later version too: the dispute stands until the result itself changes.
        note = DISPUTED_NOTE if result.feedback.filter(verdict="disagree").exists() else ""
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
        return "entered-in-error"
    if not may_exist:
        return "preliminary"
    return "corrected" if reason in CORRECTION_REASONS else "amended"


def _supersede_undelivered(versions) -> None:  # noqa: ANN001 - a QuerySet
    # An in-flight version keeps its lease: the next version waits for it, so it cannot land after the next one.
    versions.filter(state__in=[OutboxState.PENDING, OutboxState.SENDING, OutboxState.DEAD]).update(
        state=OutboxState.SUPERSEDED
    )


@task(queue_name="outbox")
def outbox_deliver_task(limit: int = 100) -> int:
    """Deliver what is due now; the ``triage_outbox`` loop picks up retries and anything a task missed."""
    return outbox_deliver_due(limit=limit).sent


_last_kick = 0.0


def outbox_kick() -> None:
    """After commit: ask a task worker to deliver now instead of at the loop's next poll.

    At most one task per KICK_INTERVAL_SECONDS per process: in a burst, one task delivers everything due, and a
    task is a database write the committing caller waits for.
    """
    global _last_kick
    now = time.monotonic()
    if now - _last_kick < KICK_INTERVAL_SECONDS:
        return
    _last_kick = now
    try:
        outbox_deliver_task.enqueue()
    except Exception:  # noqa: BLE001 - best effort: the message is committed and the loop will deliver it
        logger.warning("Could not enqueue the outbox delivery task; the outbox loop will deliver", exc_info=True)


# ---------------------------------------------------------------------------------------------------------------
# Admin


@transaction.atomic
def outbox_requeue(*, message: OutboxMessage, actor: User | None) -> bool:
    """Send a dead letter again, rebuilt from the current data (the endpoint's settings may have been fixed)."""
    from triage.services import audit_record

    message = OutboxMessage.objects.select_for_update().select_related("endpoint", "study").get(pk=message.pk)
    if message.state != OutboxState.DEAD:
        return False
    newer = _report_versions(endpoint=message.endpoint, resource_id=message.resource_id).filter(
        report_version__gt=message.report_version
    )
    if newer.exists():
        return False
    _payload_rebuild(message)
    message.state = OutboxState.PENDING
    message.next_attempt_at = timezone.now()
    message.lease_owner, message.lease_expires_at = "", None
    message.save()
    audit_record(
        action="outbox.requeued",
        actor=actor,
        obj=message,
        data={"endpoint": message.endpoint.name, "report_version": message.report_version},
    )
    transaction.on_commit(outbox_kick)
    return True


def _payload_rebuild(message: OutboxMessage) -> None:
    result = TriageResult.objects.filter(pk__in=message.result_ids).select_related("series").first()
    if result is None:
        return
    spec = _spec(endpoint=message.endpoint, result=result, status=message.report_status, reason=message.reason)
    message.payload = fhir.report_bundle_build(study=message.study, result=result, spec=spec)
    message.content_hash = fhir.content_hash(message.payload)


# ---------------------------------------------------------------------------------------------------------------
# Delivery


def outbox_deliver_due(*, limit: int = 50, worker_id: str | None = None) -> DeliverySummary:
    """Claim up to ``limit`` due messages and deliver each once. Safe to run in several processes at once."""
    worker_id = worker_id or f"outbox-{uuid.uuid4().hex[:12]}"
    summary = DeliverySummary()
    for message in _claim(limit=limit, worker_id=worker_id):
        summary.claimed += 1
        summary.message_ids.append(message.pk)
        outcome = _attempt(message)
        _outcome_apply(message=message, outcome=outcome, worker_id=worker_id)
        if outcome.state == OutboxState.SENT:
            summary.sent += 1
        elif outcome.state == OutboxState.DEAD:
            summary.dead += 1
        else:
            summary.retried += 1
    return summary


def _lease_seconds(endpoint: FhirEndpoint) -> float:
    # Room for a token request, a patient lookup and the transaction itself, each with its own timeout.
    return 4 * float(endpoint.timeout_seconds) + 30.0


@transaction.atomic
def _claim(*, limit: int, worker_id: str) -> list[OutboxMessage]:
    now = timezone.now()
    same_report = OutboxMessage.objects.filter(endpoint=OuterRef("endpoint"), resource_id=OuterRef("resource_id"))
    in_flight = same_report.filter(lease_expires_at__gt=now).exclude(pk=OuterRef("pk"))
    newer = same_report.filter(report_version__gt=OuterRef("report_version"))
    due = (
        OutboxMessage.objects.filter(
            Q(state=OutboxState.PENDING, next_attempt_at__lte=now)
            | Q(state=OutboxState.SENDING, lease_expires_at__lte=now),
            endpoint__enabled=True,
        )
        .exclude(Exists(in_flight))
        .exclude(Exists(newer))
        .order_by("next_attempt_at", "id")
        .select_for_update(skip_locked=True, of=("self",))
    )
    claimed: list[OutboxMessage] = []
    reports: set[tuple[int, str]] = set()
    for message in due.select_related("endpoint")[: limit * 2]:
        key = (message.endpoint_id, message.resource_id)
        if key in reports or len(claimed) >= limit:
            continue
        reports.add(key)
        claimed.append(message)
    for endpoint_id in {m.endpoint_id for m in claimed}:
        mine = [m for m in claimed if m.endpoint_id == endpoint_id]
        lease_expires_at = now + timedelta(seconds=_lease_seconds(mine[0].endpoint))
        OutboxMessage.objects.filter(pk__in=[m.pk for m in mine]).update(
            state=OutboxState.SENDING,
            lease_owner=worker_id,
            lease_expires_at=lease_expires_at,
            attempts=F("attempts") + 1,
        )
        for message in mine:
            message.state, message.lease_owner, message.lease_expires_at = (
                OutboxState.SENDING,
                worker_id,
                lease_expires_at,
            )
            message.attempts += 1
    return claimed


def _attempt(message: OutboxMessage) -> DeliveryOutcome:
    """Send one message; never raises for anything the EMR or the network does."""
    endpoint = message.endpoint
    try:
        bundle, failed_lookup = _with_patient_reference(endpoint, message.payload)
        if failed_lookup is not None:
            return _response_outcome(endpoint, failed_lookup)
        response = fhirclient.fhir_request(endpoint, "POST", "", json_body=bundle)
    except fhirclient.FhirAuthError as err:
        state = OutboxState.PENDING if err.retryable else OutboxState.DEAD
        return DeliveryOutcome(state=state, status_code=err.status_code, error=err.message)
    except requests.RequestException as err:
        return DeliveryOutcome(state=OutboxState.PENDING, error=f"Network error: {type(err).__name__}")
    return _response_outcome(endpoint, response)


def _with_patient_reference(
    endpoint: FhirEndpoint, bundle: dict[str, Any]
) -> tuple[dict[str, Any], requests.Response | None]:
    """Add ``Patient/<id>`` beside the identifier when the EMR knows exactly one patient with it.

    Many EMRs (and the test server) search ``subject`` only by literal reference; a logical reference alone is
    valid but cannot be found by patient. A lookup the EMR refuses (4xx) leaves the logical reference; one that
    fails in a way that may pass (5xx, 408, 429) is returned so the whole attempt is retried later.
    """
    subject = fhir.bundle_resource(bundle, "DiagnosticReport").get("subject", {})
    identifier = subject.get("identifier")
    if not endpoint.resolve_patient or not identifier:
        return bundle, None
    response = fhirclient.fhir_request(
        endpoint,
        "GET",
        "Patient",
        params={"identifier": f"{identifier['system']}|{identifier['value']}", "_count": "2", "_elements": "id"},
    )
    if response.status_code >= 500 or response.status_code in RETRYABLE_STATUS:
        return bundle, response
    if response.status_code != 200:
        return bundle, None  # the lookup is a courtesy: a logical reference is still a valid report
    body = _json_or_none(response)
    entries = body.get("entry", []) if isinstance(body, dict) else []
    matches = [e.get("resource", {}).get("id") for e in entries]
    if len(matches) != 1 or not matches[0]:
        return bundle, None
    reference = f"Patient/{matches[0]}"
    entries = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource.get("subject", {}).get("identifier") == identifier:
            resource = {**resource, "subject": {**resource["subject"], "reference": reference}}
        entries.append({**entry, "resource": resource})
    return {**bundle, "entry": entries}, None


def _response_outcome(endpoint: FhirEndpoint, response: requests.Response) -> DeliveryOutcome:
    body = _json_or_none(response)
    code = response.status_code
    if code in (200, 201):
        return _entries_outcome(body)
    outcome = body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None
    error = _outcome_text(outcome) or f"HTTP {code}"
    if code == 401:
        fhirclient.token_cache_clear(endpoint)
    if code >= 500 or code in RETRYABLE_STATUS or code == 401:
        retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        return DeliveryOutcome(OutboxState.PENDING, code, error, outcome, retry_after)
    return DeliveryOutcome(OutboxState.DEAD, code, error, outcome)


def _entries_outcome(body: Any) -> DeliveryOutcome:
    """A transaction answers 200 with one status per entry; this server does not roll back a partial failure."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        return DeliveryOutcome(OutboxState.PENDING, 200, "The EMR answered without a transaction-response Bundle")
    worst, worst_outcome = 200, None
    for entry in body.get("entry", []):
        response = entry.get("response", {})
        status = _status_number(response.get("status", ""))
        if status >= 300 and (worst < 300 or status >= 500):
            worst, worst_outcome = status, response.get("outcome")
    if worst < 300:
        return DeliveryOutcome(OutboxState.SENT, 200)
    error = f"Entry answered {worst}: {_outcome_text(worst_outcome)}"
    state = OutboxState.PENDING if worst >= 500 or worst in RETRYABLE_STATUS else OutboxState.DEAD
    return DeliveryOutcome(state, worst, error, worst_outcome)


def _status_number(status: str) -> int:
    try:
        return int(str(status).split()[0])
    except (ValueError, IndexError):
        return 500


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _outcome_text(outcome: dict | None) -> str:
    if not outcome:
        return ""
    texts = []
    for issue in outcome.get("issue", [])[:5]:
        text = issue.get("diagnostics") or issue.get("details", {}).get("text") or issue.get("code", "")
        where = ", ".join(issue.get("expression", []) or [])
        texts.append(f"{text} ({where})" if where else text)
    return "; ".join(texts)[:2000]


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - timezone.now()).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP_SECONDS)


def backoff_seconds(attempts: int, *, retry_after: float | None = None) -> float:
    """Exponential backoff with equal jitter; never sooner than the server's Retry-After."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def _outcome_apply(*, message: OutboxMessage, outcome: DeliveryOutcome, worker_id: str) -> None:
    now = timezone.now()
    fields: dict[str, Any] = {
        "lease_owner": "",
        "lease_expires_at": None,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
    }
    if outcome.state == OutboxState.SENT:
        fields |= {"state": OutboxState.SENT, "sent_at": now, "operation_outcome": None}
    elif outcome.state == OutboxState.DEAD:
        fields |= {"state": OutboxState.DEAD, "operation_outcome": outcome.operation_outcome}
    else:
        delay = backoff_seconds(message.attempts, retry_after=outcome.retry_after)
        fields |= {"state": OutboxState.PENDING, "next_attempt_at": now + timedelta(seconds=delay)}
    # Only the lease holder records the result; a version superseded meanwhile stays superseded.
    mine = OutboxMessage.objects.filter(pk=message.pk, lease_owner=worker_id)
    if mine.filter(state=OutboxState.SENDING).update(**fields) == 0:
        mine.update(lease_owner="", lease_expires_at=None, last_status_code=outcome.status_code)
    _log_outcome(message, outcome)


def _log_outcome(message: OutboxMessage, outcome: DeliveryOutcome) -> None:
    # Identifiers and status codes only: never the payload, the OperationOutcome text or credentials.
    if outcome.state == OutboxState.SENT:
        logger.info("outbox %s v%s sent to %s", message.pk, message.report_version, message.endpoint.name)
    elif outcome.state == OutboxState.DEAD:
        logger.warning("outbox %s dead-lettered by %s: HTTP %s", message.pk, message.endpoint.name, outcome.status_code)
    else:
        logger.info(
            "outbox %s attempt %s to %s failed (HTTP %s), will retry",
            message.pk,
            message.attempts,
            message.endpoint.name,
            outcome.status_code,
        )

"""Delivery of the FHIR outbox: claim due messages, send each once, and apply what the EMR answered.

Network errors, 5xx, 408, 429 (honouring Retry-After), 401 (the token is refreshed) and answers that cannot be read
are retried with exponential backoff and jitter, up to TRIAGE_OUTBOX_MAX_ATTEMPTS; other 4xx go to the dead letter
with the server's OperationOutcome.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django_tasks import task

from triage.core.outbox import DeliverySummary, Outbox, Outcome, States, messages_claim, messages_deliver
from triage.core.workers import this_worker_id
from triage.fhir import client as fhirclient
from triage.fhir import resources as fhir
from triage.models import FhirEndpoint, OutboxMessage, OutboxState

logger = logging.getLogger(__name__)

RETRY_AFTER_CAP_SECONDS = 3600.0
RETRYABLE_STATUS = frozenset({408, 429})
KICK_INTERVAL_SECONDS = 0.25


@dataclass
class DeliveryOutcome(Outcome):
    """What one delivery attempt decided, with the EMR's OperationOutcome for the dead letter."""

    operation_outcome: dict | None = None


class MalformedReply(ValueError):
    """An answer from the EMR that cannot be read as what was asked for."""


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
    except Exception:
        logger.warning("Could not enqueue the outbox delivery task; the outbox loop will deliver", exc_info=True)


# ---------------------------------------------------------------------------------------------------------------
# Delivery


def outbox_deliver_due(*, limit: int = 50, worker_id: str | None = None) -> DeliverySummary:
    """Claim up to ``limit`` due messages and deliver each once. Safe to run in several processes at once."""
    worker_id = worker_id or this_worker_id("outbox")
    return messages_deliver(OUTBOX, limit=limit, worker_id=worker_id, attempt=_attempt)


def _lease_seconds(message: OutboxMessage) -> float:
    # Room for a token request, a patient lookup and the transaction itself, each with its own timeout.
    return 4 * float(message.endpoint.timeout_seconds) + 30.0


def _claim(*, limit: int, worker_id: str) -> list[OutboxMessage]:
    return messages_claim(OUTBOX, limit=limit, worker_id=worker_id)


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
    return _response_outcome(endpoint, response, sent_entries=len(bundle["entry"]))


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
    matches = _search_ids(_json_or_none(response))
    if len(matches) != 1 or not isinstance(matches[0], str) or not matches[0]:
        return bundle, None
    reference = f"Patient/{matches[0]}"
    entries = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource.get("subject", {}).get("identifier") == identifier:
            resource = {**resource, "subject": {**resource["subject"], "reference": reference}}
        entries.append({**entry, "resource": resource})
    return {**bundle, "entry": entries}, None


def _search_ids(body: Any) -> list[Any]:
    """The ids in a searchset Bundle; an answer of another shape finds nothing."""
    entries = body.get("entry") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return []
    resources = [entry.get("resource") if isinstance(entry, dict) else None for entry in entries]
    return [resource.get("id") if isinstance(resource, dict) else None for resource in resources]


def _response_outcome(
    endpoint: FhirEndpoint, response: requests.Response, *, sent_entries: int | None = None
) -> DeliveryOutcome:
    body = _json_or_none(response)
    code = response.status_code
    if code in (200, 201):
        try:
            return _entries_outcome(body, sent_entries=sent_entries)
        except MalformedReply as err:
            # A proxy's error page or a server mid-restart: the EMR may hold nothing yet, so send again.
            return DeliveryOutcome(OutboxState.PENDING, code, f"Unreadable answer from the EMR: {err}")
    outcome = _operation_outcome(body)
    error = _outcome_text(outcome) or f"HTTP {code}"
    if code == 401:
        fhirclient.token_cache_clear(endpoint)
    if code >= 500 or code in RETRYABLE_STATUS or code == 401:
        retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
        return DeliveryOutcome(OutboxState.PENDING, code, error, outcome, retry_after=retry_after)
    return DeliveryOutcome(OutboxState.DEAD, code, error, outcome)


def _entries_outcome(body: Any, *, sent_entries: int | None = None) -> DeliveryOutcome:
    """A transaction answers 200 with one status per entry; this server does not roll back a partial failure.

    Raises MalformedReply for an answer that is not such a Bundle (not JSON, another shape, no or too few entries).
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise MalformedReply("not a transaction-response Bundle")
    entries = body.get("entry")
    if not isinstance(entries, list) or not entries:
        raise MalformedReply("a Bundle without entries")
    if sent_entries is not None and len(entries) != sent_entries:
        raise MalformedReply(f"{len(entries)} entries for the {sent_entries} sent")
    worst, worst_outcome = 200, None
    for entry in entries:
        response = entry.get("response") if isinstance(entry, dict) else None
        if not isinstance(response, dict):
            raise MalformedReply("an entry without a response")
        status = _status_number(response.get("status", ""))
        if status >= 300 and (worst < 300 or status >= 500):
            worst, worst_outcome = status, _operation_outcome(response.get("outcome"))
    if worst < 300:
        return DeliveryOutcome(OutboxState.SENT, 200)
    error = f"Entry answered {worst}: {_outcome_text(worst_outcome)}"
    state = OutboxState.PENDING if worst >= 500 or worst in RETRYABLE_STATUS else OutboxState.DEAD
    return DeliveryOutcome(state, worst, error, worst_outcome)


def _status_number(status: Any) -> int:
    try:
        return int(str(status).split()[0])
    except (ValueError, IndexError):
        return 500


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # also a body that is not UTF-8
        return None


def _operation_outcome(value: Any) -> dict | None:
    return value if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome" else None


def _outcome_text(outcome: dict | None) -> str:
    issues = outcome.get("issue") if outcome else None
    if not isinstance(issues, list):
        return ""
    texts = [_issue_text(issue) for issue in issues[:5] if isinstance(issue, dict)]
    return "; ".join(t for t in texts if t)[:2000]


def _issue_text(issue: dict) -> str:
    details = issue.get("details")
    text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None) or issue.get("code")
    expression = issue.get("expression")
    where = ", ".join(str(e) for e in expression) if isinstance(expression, list) else ""
    text = str(text or "")
    return f"{text} ({where})" if where else text


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


def _columns(outcome: DeliveryOutcome) -> dict[str, Any]:
    if outcome.state == OutboxState.SENT:
        return {"operation_outcome": None}
    if outcome.state == OutboxState.DEAD:
        return {"operation_outcome": outcome.operation_outcome}
    return {}


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


OUTBOX: Outbox[OutboxMessage, DeliveryOutcome] = Outbox(
    model=OutboxMessage,
    outcome=DeliveryOutcome,
    states=States(OutboxState.PENDING, OutboxState.SENDING, OutboxState.SENT, OutboxState.DEAD),
    logger=logger,
    label="outbox",
    document=("endpoint", "resource_id"),
    version="report_version",
    enabled=Q(endpoint__enabled=True),
    related=("endpoint",),
    lease_seconds=_lease_seconds,
    max_attempts=lambda: settings.TRIAGE_OUTBOX_MAX_ATTEMPTS,
    columns=_columns,
    log=_log_outcome,
)

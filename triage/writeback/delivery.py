"""Delivery of the write-back outbox: claim due versions, build their SR and key image, STOW-RS them once.

The DICOMweb client comes from the caller (``manage.py triage_writeback`` hands in the ingest layer's
``client_for_source``, with the source's session and credentials), so this layer stays below ingest.
Network errors, 5xx, 408 and 429 are retried with backoff up to TRIAGE_WRITEBACK_MAX_ATTEMPTS; other refusals
go to the dead letter. Logs carry message ids, source names and status codes only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client.protocol import DICOMClient
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from pydicom import Dataset

from triage.core.exceptions import TriageError
from triage.core.outbox import DeliverySummary, Outbox, Outcome, States, messages_claim, messages_deliver
from triage.core.workers import this_worker_id
from triage.models import DicomWebSource, TriageResult, WritebackMessage, WritebackState
from triage.writeback import documents
from triage.writeback.outbox import result_facts

logger = logging.getLogger(__name__)

ClientFactory = Callable[[DicomWebSource], DICOMClient]

RETRYABLE_STATUS = frozenset({408, 425, 429})
# STOW-RS Failure Reason (PS3.18 Table I.2-1 / PS3.4 C.4.2.1.4): A7xx is "out of resources", worth retrying.
RETRYABLE_FAILURE_PREFIX = 0xA700


@dataclass
class WritebackOutcome(Outcome):
    """What one attempt decided, and whether the key image went with the SR."""

    key_image_sent: bool = False


def writeback_deliver_due(
    *, client_for: ClientFactory, limit: int = 20, worker_id: str | None = None
) -> DeliverySummary:
    """Claim up to ``limit`` due versions and deliver each once. Safe to run in several processes at once."""
    worker_id = worker_id or this_worker_id("writeback")
    return messages_deliver(
        WRITEBACK, limit=limit, worker_id=worker_id, attempt=lambda message: _attempt(message, client_for)
    )


def _lease_seconds(message: WritebackMessage) -> float:
    # A metadata read and one STOW-RS, each with its own timeout.
    return 4 * float(settings.TRIAGE_HTTP_TIMEOUT_SECONDS) + 30.0


def _claim(*, limit: int, worker_id: str) -> list[WritebackMessage]:
    return messages_claim(WRITEBACK, limit=limit, worker_id=worker_id)


def _attempt(message: WritebackMessage, client_for: ClientFactory) -> WritebackOutcome:
    """Build and store one version; never raises for anything the PACS or the network does."""
    result = TriageResult.objects.filter(pk__in=message.result_ids).select_related("series").first()
    if result is None:
        return WritebackOutcome(WritebackState.DEAD, error="The result this version describes no longer exists.")
    study_uid = message.study.study_instance_uid
    try:
        client = client_for(message.source)
        metadata = client.retrieve_series_metadata(study_uid, result.series.series_instance_uid)
        objects = documents_build(message=message, result=result, metadata=metadata)
        response = client.store_instances(objects, study_instance_uid=study_uid)
    except TriageError as err:  # a source misconfigured, or metadata that cannot make a valid object
        return WritebackOutcome(WritebackState.DEAD, error=f"{err.code}: {err.message}")
    except (requests.RequestException, ValueError) as err:
        return _http_outcome(err)
    return _stored_outcome(response, key_image_sent=len(objects) > 1)


def documents_build(*, message: WritebackMessage, result: TriageResult, metadata: Sequence[dict]) -> list[Dataset]:
    """The key image (when the result has a readable one) and the SR, with the UIDs fixed at enqueue time."""
    evidence = documents.series_datasets(metadata)
    uids = documents.VersionUids(
        sr_series=message.sr_series_uid,
        sr_instance=message.sr_instance_uid,
        sc_series=message.sc_series_uid,
        sc_instance=message.sc_instance_uid,
    )
    moment = timezone.localtime(message.created_at).replace(tzinfo=None)
    key_image = None
    if not message.retract:
        key_image = documents.key_image_build(
            png=bytes(result.key_image_png) if result.key_image_png else None,
            reference=documents.reference_dataset(evidence),
            uids=uids,
            version=message.version,
            content_time=moment,
        )
    facts = result_facts(result, retracted=message.retract)
    sr = documents.sr_build(
        facts=facts,
        evidence=[*evidence, key_image] if key_image is not None else evidence,
        key_instance=documents.key_slice_instance(evidence, facts.key_slice),
        uids=uids,
        version=message.version,
        content_time=moment,
        predecessor=_predecessor(message),
    )
    return [key_image, sr] if key_image is not None else [sr]


def _predecessor(message: WritebackMessage) -> documents.Predecessor | None:
    previous = message.predecessor
    if previous is None:
        return None
    return documents.Predecessor(
        study_instance_uid=message.study.study_instance_uid,
        series_instance_uid=previous.sr_series_uid,
        sop_instance_uid=previous.sr_instance_uid,
    )


def _http_outcome(err: BaseException) -> WritebackOutcome:
    """Never copy ``str(err)``: it holds the URL."""
    if isinstance(err, requests.Timeout | requests.ConnectionError):
        return WritebackOutcome(WritebackState.PENDING, error=f"Network error: {type(err).__name__}")
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    if code is None:
        return WritebackOutcome(WritebackState.PENDING, error=f"Unreadable answer from the PACS: {type(err).__name__}")
    if code >= 500 or code in RETRYABLE_STATUS:
        return WritebackOutcome(WritebackState.PENDING, code, f"The PACS answered HTTP {code}.")
    return WritebackOutcome(WritebackState.DEAD, code, f"The PACS refused the objects (HTTP {code}).")


def _stored_outcome(response: Dataset, *, key_image_sent: bool) -> WritebackOutcome:
    """A 200 may still list instances the PACS did not store (Failed SOP Sequence, with a reason per instance)."""
    failed = list(response.get("FailedSOPSequence", []) or [])
    if not failed:
        return WritebackOutcome(WritebackState.SENT, 200, key_image_sent=key_image_sent)
    reasons = sorted({int(item.get("FailureReason", 0) or 0) for item in failed})
    error = "The PACS did not store {} object(s); failure reason(s) {}.".format(
        len(failed), ", ".join(f"{r:04X}H" for r in reasons)
    )
    retry = all(r & 0xFF00 == RETRYABLE_FAILURE_PREFIX for r in reasons)
    return WritebackOutcome(WritebackState.PENDING if retry else WritebackState.DEAD, 200, error)


def _columns(outcome: WritebackOutcome) -> dict[str, Any]:
    return {"key_image_sent": outcome.key_image_sent} if outcome.state == WritebackState.SENT else {}


def _log_outcome(message: WritebackMessage, outcome: WritebackOutcome) -> None:
    if outcome.state == WritebackState.SENT:
        logger.info("write-back %s v%s stored in %s", message.pk, message.version, message.source.name)
    elif outcome.state == WritebackState.DEAD:
        logger.warning(
            "write-back %s dead-lettered for %s: HTTP %s", message.pk, message.source.name, outcome.status_code
        )
    else:
        logger.info(
            "write-back %s attempt %s to %s failed (HTTP %s), will retry",
            message.pk,
            message.attempts,
            message.source.name,
            outcome.status_code,
        )


WRITEBACK: Outbox[WritebackMessage, WritebackOutcome] = Outbox(
    model=WritebackMessage,
    outcome=WritebackOutcome,
    states=States(WritebackState.PENDING, WritebackState.SENDING, WritebackState.SENT, WritebackState.DEAD),
    logger=logger,
    label="write-back",
    document=("study", "finding"),
    version="version",
    enabled=Q(source__enabled=True, source__write_back=True),
    related=("source", "study", "predecessor"),
    lease_seconds=_lease_seconds,
    max_attempts=lambda: settings.TRIAGE_WRITEBACK_MAX_ATTEMPTS,
    columns=_columns,
    log=_log_outcome,
)

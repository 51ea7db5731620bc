"""The write-back outbox: result versions for the PACS, queued in the caller's transaction.

Versions, predecessors and retraction: docs/dicom-sr.md. Delivery: ``triage.writeback.delivery``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from triage.core.audit import audit_record
from triage.models import Study, TriageResult, User, WritebackMessage, WritebackState
from triage.writeback.documents import ResultFacts, version_uids

LIVE_STATES = (WritebackState.PENDING, WritebackState.SENDING, WritebackState.SENT)
UNDELIVERED_STATES = (WritebackState.PENDING, WritebackState.SENDING, WritebackState.DEAD)


def result_facts(result: TriageResult, *, retracted: bool = False) -> ResultFacts:
    details = result.details or {}
    subtypes = details.get("subtype_scores")
    key_slice = details.get("key_slice")
    return ResultFacts(
        result_id=result.pk,
        finding=result.finding,
        model_name=result.model_name,
        model_version=result.model_version,
        score=float(result.score),
        threshold=float(result.threshold),
        positive=bool(result.positive),
        side=result.reported_side,
        key_slice=key_slice if isinstance(key_slice, int) else None,
        subtype_scores={str(k): float(v) for k, v in subtypes.items()} if isinstance(subtypes, dict) else {},
        in_validated_range=result.in_validated_range,
        retracted=retracted,
    )


def content_hash(facts: ResultFacts) -> str:
    """What the SR says; the result id is left out, so a rerun that says the same adds no version."""
    said = {k: v for k, v in asdict(facts).items() if k != "result_id"}
    return hashlib.sha256(json.dumps(said, sort_keys=True).encode()).hexdigest()


@transaction.atomic
def writeback_enqueue(*, study: Study, finding: str, reason: str = "result") -> WritebackMessage | None:
    """Queue the current result for (study, finding) as a new SR version, when the study's PACS takes write-back."""
    study = Study.objects.select_for_update(of=("self",)).select_related("source").get(pk=study.pk)
    source = study.source
    if source is None or not source.enabled or not source.write_back:
        return None
    result = TriageResult.objects.filter(study=study, finding=finding, is_current=True).order_by("-id").first()
    if result is None:
        return None
    return _version_enqueue(study=study, result=result, reason=reason, retract=False)


@transaction.atomic
def writeback_retract(*, study: Study, finding: str, reason: str) -> WritebackMessage | None:
    """Withdraw the finding's SR where the PACS may hold it: a new version that says so and names its predecessor.

    Where no version can have reached the PACS, the undelivered ones are simply dropped.
    """
    study = Study.objects.select_for_update(of=("self",)).select_related("source").get(pk=study.pk)
    result = TriageResult.objects.filter(study=study, finding=finding).order_by("-is_current", "-id").first()
    if result is None or study.source is None:
        return None
    return _version_enqueue(study=study, result=result, reason=reason, retract=True)


def _version_enqueue(*, study: Study, result: TriageResult, reason: str, retract: bool) -> WritebackMessage | None:
    versions = WritebackMessage.objects.filter(study=study, finding=result.finding)
    latest = versions.order_by("-version").first()
    facts = result_facts(result, retracted=retract)
    digest = content_hash(facts)
    if latest is not None and latest.state in LIVE_STATES and latest.content_hash == digest:
        return None  # the PACS already has, or will get, exactly this
    # A send was attempted: the PACS may hold that version, even if no acknowledgement came back.
    predecessor = versions.filter(Q(state=WritebackState.SENT) | Q(attempts__gt=0)).order_by("-version").first()
    _supersede_undelivered(versions)
    if retract and predecessor is None:
        return None
    version = latest.version + 1 if latest else 1
    source = study.source
    if source is None:  # both callers checked; a type checker cannot see it
        return None
    uids = version_uids(
        study_instance_uid=study.study_instance_uid, finding=result.finding, result_id=result.pk, version=version
    )
    return WritebackMessage.objects.create(
        source=source,
        study=study,
        finding=result.finding,
        version=version,
        reason=reason[:32],
        retract=retract,
        result_ids=[result.pk],
        content_hash=digest,
        sr_series_uid=uids.sr_series,
        sr_instance_uid=uids.sr_instance,
        sc_series_uid=uids.sc_series,
        sc_instance_uid=uids.sc_instance,
        predecessor=predecessor,
    )


def _supersede_undelivered(versions: QuerySet[WritebackMessage]) -> None:
    # An in-flight version keeps its lease: the next one waits for it, so it cannot land after the next one.
    versions.filter(state__in=UNDELIVERED_STATES).update(state=WritebackState.SUPERSEDED)


@transaction.atomic
def writeback_requeue(*, message: WritebackMessage, actor: User | None) -> bool:
    """Send a dead letter again (the PACS or the source's settings may have been fixed), unless a newer one exists."""
    message = WritebackMessage.objects.select_for_update().get(pk=message.pk)
    if message.state != WritebackState.DEAD:
        return False
    if WritebackMessage.objects.filter(
        study_id=message.study_id, finding=message.finding, version__gt=message.version
    ).exists():
        return False
    message.state = WritebackState.PENDING
    message.next_attempt_at = timezone.now()
    message.lease_owner, message.lease_expires_at = "", None
    message.attempts = min(message.attempts, 1)  # counts again from here; one stays, as the PACS may hold it
    message.save()
    audit_record(
        action="writeback.requeued",
        actor=actor,
        obj=message,
        data={"source": message.source_id, "finding": message.finding, "version": message.version},
    )
    return True

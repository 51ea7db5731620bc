"""Writes to the worklist. Each service is one transaction: it locks the rows it changes, writes its audit row,
takes event sequence numbers in the same transaction and broadcasts only after commit."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from triage.core.audit import audit_record
from triage.core.exceptions import Conflict, InvalidInput, NotFound
from triage.fhir import outbox
from triage.models import Study, TriageResult, User, Verdict
from worklist import events, notify, priority, selectors
from worklist.models import Feedback, ItemStatus, WorklistEventCounter, WorklistItem

logger = logging.getLogger(__name__)

ESCALATION_BATCH = 100


# Events ---------------------------------------------------------------------------------------------------------


def _seq_next() -> int:
    """The next event number; the row lock orders commits, so numbers reach clients in commit order."""
    WorklistEventCounter.objects.get_or_create(pk=1)
    WorklistEventCounter.objects.filter(pk=1).update(value=F("value") + 1)
    return WorklistEventCounter.objects.values_list("value", flat=True).get(pk=1)


def _emit(*, item: WorklistItem, kind: str, changes: list[str]) -> int:
    """Build the event from the state this transaction is about to commit, send it once committed."""
    now = timezone.now()
    seq = _seq_next()
    fresh = selectors.worklist_item_for_payload(item_id=item.pk, now=now)
    payload = events.item_event(seq=seq, kind=kind, changes=changes, item=fresh, now=now)
    transaction.on_commit(partial(events.broadcast, payload), robust=True)
    return seq


def _item_lock(*, study_instance_uid: str) -> WorklistItem:
    item = (
        WorklistItem.objects.select_for_update(of=("self",))
        .select_related("study")
        .filter(study__study_instance_uid=study_instance_uid)
        .first()
    )
    if item is None:
        raise NotFound("This study is not on the worklist.")
    return item


# Sync from AI results -------------------------------------------------------------------------------------------


def _findings_of(study: Study) -> list[priority.FindingScore]:
    current = TriageResult.objects.filter(study=study, is_current=True).only("score", "positive", "details")
    return [priority.finding_score(result) for result in current]


def _recompute(item: WorklistItem, *, now: datetime) -> list[str]:
    """Apply the priority rule to a locked item; returns what changed, for the event."""
    findings = _findings_of(item.study)
    critical = priority.critical_from(findings)
    urgency = priority.urgency_from_code(item.study.requested_priority)
    key = priority.sort_key(urgency=urgency, findings=findings, pinned_level=item.pinned_priority)
    changes = [events.CHANGE_FINDINGS]
    if key != item.sort_key:
        changes.append(events.CHANGE_RANK)
    if critical and not item.critical:
        # A new critical finding needs its own acknowledgement, whatever happened to an earlier one.
        item.critical_at, item.acknowledged_at, item.acknowledged_by, item.escalated_at = now, None, None, None
    elif not critical:
        item.critical_at = None
    item.critical = critical
    item.urgency = urgency
    item.sort_key = key
    item.ai_priority = max((f.score for f in findings if f.positive), default=0.0)
    return changes


@transaction.atomic
def worklist_item_sync(*, study: Study) -> WorklistItem:
    """Create the study's item if missing and recompute it from the current results and requested priority."""
    now = timezone.now()
    item, created = WorklistItem.objects.select_for_update().get_or_create(
        study=study, defaults={"received_at": study.received_at}
    )
    item.study = study
    changes = _recompute(item, now=now)
    item.save()
    _emit(item=item, kind=events.KIND_ADDED if created else events.KIND_CHANGED, changes=changes)
    if created:
        audit_record(action="worklist.added", obj=item, data={"critical": item.critical})
    return item


@transaction.atomic
def worklist_items_resync(*, finding: str | None = None) -> int:
    """Recompute every open item (after a threshold change, say); returns how many were recomputed."""
    items = WorklistItem.objects.select_for_update(of=("self",)).select_related("study")
    items = items.filter(status__in=selectors.OPEN_STATUSES)
    if finding:
        items = items.filter(study__results__finding=finding, study__results__is_current=True)
    now = timezone.now()
    count = 0
    for item in items.order_by("id").iterator(chunk_size=500):
        changes = _recompute(item, now=now)
        item.save()
        _emit(item=item, kind=events.KIND_CHANGED, changes=changes)
        count += 1
    return count


# Radiologists' actions ------------------------------------------------------------------------------------------


@transaction.atomic
def worklist_item_claim(*, study_instance_uid: str, user: User) -> WorklistItem:
    """Exactly one radiologist holds a study; a second claim gets Conflict (409)."""
    item = _item_lock(study_instance_uid=study_instance_uid)
    if item.status == ItemStatus.REPORTED:
        raise Conflict("This study has already been reported.", code="already_reported")
    if item.claimed_by_id == user.pk:
        return item
    if item.claimed_by_id is not None:
        raise Conflict("Another radiologist has claimed this study.", code="already_claimed")
    item.status, item.claimed_by, item.claimed_at = ItemStatus.IN_PROGRESS, user, timezone.now()
    item.save(update_fields=["status", "claimed_by", "claimed_at", "updated_at"])
    audit_record(action="worklist.claim", actor=user, obj=item, data=_timing(item))
    _emit(item=item, kind=events.KIND_CHANGED, changes=[events.CHANGE_CLAIM, events.CHANGE_STATUS, events.CHANGE_RANK])
    return item


@transaction.atomic
def worklist_item_release(*, study_instance_uid: str, user: User) -> WorklistItem:
    item = _item_lock(study_instance_uid=study_instance_uid)
    if item.status != ItemStatus.IN_PROGRESS:
        raise Conflict("This study is not claimed.", code="not_claimed")
    if item.claimed_by_id != user.pk and not user.is_triage_admin:
        raise Conflict("Another radiologist holds this study.", code="claimed_by_other")
    previous = item.claimed_by_id
    item.status, item.claimed_by, item.claimed_at = ItemStatus.WAITING, None, None
    item.save(update_fields=["status", "claimed_by", "claimed_at", "updated_at"])
    audit_record(action="worklist.release", actor=user, obj=item, data={"previous_claimer_id": previous})
    _emit(item=item, kind=events.KIND_CHANGED, changes=[events.CHANGE_CLAIM, events.CHANGE_STATUS, events.CHANGE_RANK])
    return item


@transaction.atomic
def worklist_item_report(*, study_instance_uid: str, user: User) -> WorklistItem:
    """Mark the study read; it leaves the open worklist. Claims it for the reporter if nobody held it."""
    item = _item_lock(study_instance_uid=study_instance_uid)
    if item.status == ItemStatus.REPORTED:
        raise Conflict("This study has already been reported.", code="already_reported")
    if item.claimed_by_id not in (None, user.pk):
        raise Conflict("Another radiologist holds this study.", code="claimed_by_other")
    now = timezone.now()
    item.status, item.claimed_by, item.reported_at = ItemStatus.REPORTED, user, now
    item.claimed_at = item.claimed_at or now
    item.save(update_fields=["status", "claimed_by", "claimed_at", "reported_at", "updated_at"])
    audit_record(action="worklist.report", actor=user, obj=item, data=_timing(item))
    _emit(item=item, kind=events.KIND_CHANGED, changes=[events.CHANGE_STATUS, events.CHANGE_RANK])
    return item


@transaction.atomic
def worklist_item_acknowledge(*, study_instance_uid: str, user: User) -> WorklistItem:
    """A radiologist has seen the critical AI finding; time-to-acknowledge is in the audit row."""
    item = _item_lock(study_instance_uid=study_instance_uid)
    if not item.critical:
        raise Conflict("This study has no critical finding to acknowledge.", code="not_critical")
    if item.acknowledged_at is not None:
        return item
    item.acknowledged_at, item.acknowledged_by = timezone.now(), user
    item.save(update_fields=["acknowledged_at", "acknowledged_by", "updated_at"])
    data = {**_timing(item), "escalated": item.escalated_at is not None}
    if item.critical_at is not None:
        data["seconds_to_acknowledge"] = round((item.acknowledged_at - item.critical_at).total_seconds(), 3)
    audit_record(action="worklist.acknowledge", actor=user, obj=item, data=data)
    _emit(item=item, kind=events.KIND_CHANGED, changes=[events.CHANGE_ACKNOWLEDGED])
    return item


@transaction.atomic
def worklist_item_pin(*, study_instance_uid: str, user: User, level: int | None) -> WorklistItem:
    """Set (or with None, clear) a priority level by hand; the AI never overrides it."""
    if level is not None and level not in priority.LEVELS:
        raise InvalidInput(f"Priority level must be one of {priority.LEVELS} or null.")
    item = _item_lock(study_instance_uid=study_instance_uid)
    previous = item.pinned_priority
    item.pinned_priority, item.pinned_by = level, (user if level is not None else None)
    changes = _recompute(item, now=timezone.now())
    item.save()
    audit_record(action="worklist.pin", actor=user, obj=item, data={"old": previous, "new": level})
    _emit(item=item, kind=events.KIND_CHANGED, changes=[*changes, events.CHANGE_PIN])
    return item


@transaction.atomic
def study_view_record(*, study: Study, user: User) -> None:
    """Opening a study's detail is audited, so reading and acknowledging can be timed."""
    item = getattr(study, "worklist_item", None)
    data = {"study_id": study.pk, **(_timing(item) if item is not None else {})}
    audit_record(action="study.view", actor=user, obj=item if item is not None else study, data=data)


@transaction.atomic
def result_feedback_set(*, result_id: int, user: User, verdict: str, comment: str = "") -> Feedback:
    """One verdict per radiologist and result, tied to the model name and version that produced it."""
    if verdict not in Verdict.values:
        raise InvalidInput(f"Verdict must be one of {', '.join(Verdict.values)}.")
    result = TriageResult.objects.select_related("study").filter(pk=result_id).first()
    if result is None:
        raise NotFound("No such result.")
    previous = Feedback.objects.select_for_update().filter(result=result, user=user).first()
    feedback, _ = Feedback.objects.update_or_create(
        result=result,
        user=user,
        defaults={
            "verdict": verdict,
            "comment": comment,
            "model_name": result.model_name,
            "model_version": result.model_version,
            "updated_at": timezone.now(),
        },
    )
    audit_record(
        action="worklist.feedback",
        actor=user,
        obj=feedback,
        data={
            "result_id": result.pk,
            "finding": result.finding,
            "model": result.model_name,
            "model_version": result.model_version,
            "verdict": verdict,
            "previous_verdict": previous.verdict if previous else None,
            "score": result.score,
            "positive": result.positive,
        },
    )
    if verdict == Verdict.DISAGREE and (previous is None or previous.verdict != Verdict.DISAGREE):
        _report_disagreement(result=result)
    return feedback


def _report_disagreement(*, result: TriageResult) -> None:
    """The EMR hears that a radiologist disagrees with the advisory finding (an amended report)."""
    outbox.outbox_enqueue_report(study=result.study, finding=result.finding, reason="radiologist_disagrees")


# Escalation -----------------------------------------------------------------------------------------------------


@transaction.atomic
def worklist_items_escalate(*, now: datetime | None = None) -> list[int]:
    """Escalate critical findings left unacknowledged past TRIAGE_ACK_TIMEOUT_MINUTES: flag, event, webhook."""
    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.TRIAGE_ACK_TIMEOUT_MINUTES)
    due = (
        WorklistItem.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("study")
        .filter(critical=True, acknowledged_at__isnull=True, escalated_at__isnull=True, critical_at__lt=cutoff)
        .filter(status__in=selectors.OPEN_STATUSES)
        .order_by("critical_at", "id")[:ESCALATION_BATCH]
    )
    escalated = []
    for item in due:
        assert item.critical_at is not None  # due holds critical items only
        item.escalated_at = now
        item.save(update_fields=["escalated_at", "updated_at"])
        data = {"seconds_unacknowledged": round((now - item.critical_at).total_seconds(), 3)}
        audit_record(action="worklist.escalate", obj=item, data=data)
        _emit(item=item, kind=events.KIND_ESCALATED, changes=[events.CHANGE_ESCALATED])
        body = notify.escalation_body(item=item, findings=_positive_results(item.study))
        transaction.on_commit(partial(notify.escalation_post, body), robust=True)
        escalated.append(item.pk)
    return escalated


def _positive_results(study: Study) -> list[TriageResult]:
    return list(TriageResult.objects.filter(study=study, is_current=True, positive=True).defer("key_image_png"))


def _timing(item: WorklistItem) -> dict:
    """Identifiers and times only: what lets reports measure waits, never patient data."""
    now = timezone.now()
    data = {"item_id": item.pk, "waiting_seconds": round((now - item.received_at).total_seconds(), 3)}
    if item.critical_at is not None:
        data["critical_since_seconds"] = round((now - item.critical_at).total_seconds(), 3)
    return data

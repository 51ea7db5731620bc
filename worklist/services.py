"""Writes to the worklist. Each service is one transaction: it locks the rows it changes, writes its audit row,
takes event sequence numbers in the same transaction and broadcasts only after commit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
# The escalation webhook: tried up to this many times, waiting 15 s, 30 s, ... (at most 10 min) in between.
ESCALATION_NOTIFY_MAX_ATTEMPTS = 10
ESCALATION_NOTIFY_BACKOFF_SECONDS = 15.0
ESCALATION_NOTIFY_BACKOFF_CAP_SECONDS = 600.0
ESCALATION_FIELDS = (
    "escalated_at",
    "escalation_notified_at",
    "escalation_attempts",
    "escalation_next_at",
    "escalation_error",
)


# Events ---------------------------------------------------------------------------------------------------------


def _after_commit(func: Callable[..., object], /, *args: Any) -> None:
    """Call ``func(*args)`` once committed. Robust: a failure (Redis down, say) is logged and the hooks after it
    still run. Django names a failing hook by ``__qualname__``, which a ``functools.partial`` lacks, so the hook is
    a function named after ``func``."""

    def hook() -> None:
        func(*args)

    hook.__qualname__ = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"
    transaction.on_commit(hook, robust=True)


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
    _after_commit(events.broadcast, payload)
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


def _findings_of(study: Study) -> dict[str, priority.FindingScore]:
    """The current finding of each code (results_record keeps one current result per finding)."""
    current = TriageResult.objects.filter(study=study, is_current=True).only("finding", "score", "positive", "details")
    return {result.finding: priority.finding_score(result) for result in current.order_by("id")}


def _recompute(item: WorklistItem, *, now: datetime) -> list[str]:
    """Apply the priority rule to a locked item; returns what changed, for the event."""
    by_code = _findings_of(item.study)
    findings = list(by_code.values())
    positive = sorted(code for code, finding in by_code.items() if finding.positive)
    urgency = priority.urgency_from_code(item.study.requested_priority)
    key = priority.sort_key(urgency=urgency, findings=findings, pinned_level=item.pinned_priority)
    changes = [events.CHANGE_FINDINGS]
    if key != item.sort_key:
        changes.append(events.CHANGE_RANK)
    if set(positive) - set(item.critical_findings or []):
        # A finding that was not positive before (an LVO after an acknowledged ICH) is a new alert: it needs its
        # own acknowledgement and escalates on its own clock, whatever happened to the earlier one.
        changes += _alert_afresh(item, now=now)
    elif not positive:
        item.critical_at = None
    item.critical = bool(positive)
    item.critical_findings = positive
    item.urgency = urgency
    item.sort_key = key
    item.ai_priority = max((f.score for f in findings if f.positive), default=0.0)
    return changes


def _alert_afresh(item: WorklistItem, *, now: datetime) -> list[str]:
    changes = []
    if item.acknowledged_at is not None:
        changes.append(events.CHANGE_ACKNOWLEDGED)
    if item.escalated_at is not None:
        changes.append(events.CHANGE_ESCALATED)
    item.critical_at, item.acknowledged_at, item.acknowledged_by, item.escalated_at = now, None, None, None
    item.escalation_notified_at, item.escalation_next_at = None, None
    item.escalation_attempts, item.escalation_error = 0, ""
    return changes


@transaction.atomic
def worklist_item_sync(*, study: Study) -> WorklistItem:
    """Create the study's item if missing and recompute it from the current results and requested priority.

    A reported study that gets a new critical finding goes back to the worklist (waiting, unclaimed)."""
    now = timezone.now()
    item, created = WorklistItem.objects.select_for_update().get_or_create(
        study=study, defaults={"received_at": study.received_at}
    )
    item.study = study
    before = set(item.critical_findings or [])
    changes = _recompute(item, now=now)
    new_findings = sorted(set(item.critical_findings) - before)
    reopened = bool(new_findings) and item.status == ItemStatus.REPORTED
    if reopened:
        previous_reporter = item.claimed_by_id
        item.status, item.claimed_by, item.claimed_at, item.reported_at = ItemStatus.WAITING, None, None, None
        changes += [events.CHANGE_STATUS, events.CHANGE_CLAIM]
    item.save()
    _emit(item=item, kind=events.KIND_ADDED if created else events.KIND_CHANGED, changes=changes)
    if created:
        audit_record(action="worklist.added", obj=item, data={"critical": item.critical})
    elif reopened:
        data = {"item_id": item.pk, "new_findings": new_findings, "previous_reporter_id": previous_reporter}
        audit_record(action="worklist.reopened", obj=item, data=data)
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
    """A radiologist has seen the critical AI finding; time-to-acknowledge is in the audit row.

    Anyone on the worklist may acknowledge, also a study another radiologist has claimed: patient safety first.
    The audit row says whose claim it was."""
    item = _item_lock(study_instance_uid=study_instance_uid)
    if not item.critical:
        raise Conflict("This study has no critical finding to acknowledge.", code="not_critical")
    if item.acknowledged_at is not None:
        return item
    item.acknowledged_at, item.acknowledged_by = timezone.now(), user
    item.save(update_fields=["acknowledged_at", "acknowledged_by", "updated_at"])
    data = {**_timing(item), **_claim_data(item, user), "escalated": item.escalated_at is not None}
    if item.critical_at is not None:
        data["seconds_to_acknowledge"] = round((item.acknowledged_at - item.critical_at).total_seconds(), 3)
    audit_record(action="worklist.acknowledge", actor=user, obj=item, data=data)
    _emit(item=item, kind=events.KIND_CHANGED, changes=[events.CHANGE_ACKNOWLEDGED])
    return item


@transaction.atomic
def worklist_item_pin(*, study_instance_uid: str, user: User, level: int | None) -> WorklistItem:
    """Set (or with None, clear) a priority level by hand; the AI never overrides it. Any radiologist may pin,
    also a study another has claimed (the order is everyone's); the audit row says whose claim it was."""
    if level is not None and level not in priority.LEVELS:
        raise InvalidInput(f"Priority level must be one of {priority.LEVELS} or null.")
    item = _item_lock(study_instance_uid=study_instance_uid)
    previous = item.pinned_priority
    item.pinned_priority, item.pinned_by = level, (user if level is not None else None)
    changes = _recompute(item, now=timezone.now())
    item.save()
    data = {"old": previous, "new": level, **_claim_data(item, user)}
    audit_record(action="worklist.pin", actor=user, obj=item, data=data)
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
    """Escalate critical findings left unacknowledged past TRIAGE_ACK_TIMEOUT_MINUTES: flag, event, and (when a
    webhook is set) a notification due now, which ``worklist_escalations_notify`` sends."""
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
        item.escalation_next_at = now if settings.TRIAGE_ESCALATION_WEBHOOK_URL else None
        item.escalation_notified_at, item.escalation_attempts, item.escalation_error = None, 0, ""
        item.save(update_fields=[*ESCALATION_FIELDS, "updated_at"])
        data = {"seconds_unacknowledged": round((now - item.critical_at).total_seconds(), 3)}
        audit_record(action="worklist.escalate", obj=item, data=data)
        _emit(item=item, kind=events.KIND_ESCALATED, changes=[events.CHANGE_ESCALATED])
        escalated.append(item.pk)
    return escalated


@dataclass(frozen=True)
class _EscalationClaim:
    item_id: int
    escalated_at: datetime
    attempt: int
    body: dict


def worklist_escalations_notify(*, now: datetime | None = None) -> list[int]:
    """Post the escalation webhooks that are due, outside any transaction; returns the items notified.

    An item counts as notified only when the webhook answered 2xx. Failures are retried with backoff up to
    ESCALATION_NOTIFY_MAX_ATTEMPTS, then logged and left visible on the item (``escalation_unnotified``).
    Safe to run in several processes: each post is claimed first, with a lease."""
    notified = []
    for claim in _escalation_notify_claim(now=now or timezone.now()):
        outcome = notify.webhook_post(claim.body)
        _escalation_notify_record(claim=claim, outcome=outcome, now=now or timezone.now())
        if outcome.delivered:
            notified.append(claim.item_id)
    return notified


@transaction.atomic
def _escalation_notify_claim(*, now: datetime) -> list[_EscalationClaim]:
    due = (
        WorklistItem.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("study")
        .filter(escalation_next_at__lte=now, escalated_at__isnull=False, escalation_notified_at__isnull=True)
        .order_by("escalation_next_at", "id")[:ESCALATION_BATCH]
    )
    # A worker that dies while posting leaves the lease to expire; the post is then tried again.
    lease = now + timedelta(seconds=2 * settings.TRIAGE_ESCALATION_WEBHOOK_TIMEOUT_SECONDS + 30)
    claims = []
    for item in due:
        assert item.escalated_at is not None  # due holds escalated items only
        item.escalation_attempts += 1
        item.escalation_next_at = lease
        item.save(update_fields=["escalation_attempts", "escalation_next_at", "updated_at"])
        body = notify.escalation_body(item=item, findings=_positive_results(item.study))
        claims.append(_EscalationClaim(item.pk, item.escalated_at, item.escalation_attempts, body))
    return claims


@transaction.atomic
def _escalation_notify_record(*, claim: _EscalationClaim, outcome: notify.WebhookOutcome, now: datetime) -> None:
    item = (
        WorklistItem.objects.select_for_update()
        .filter(pk=claim.item_id, escalated_at=claim.escalated_at, escalation_notified_at__isnull=True)
        .first()
    )
    if item is None:
        return  # re-alerted meanwhile: the new escalation gets its own notification
    gave_up = not outcome.delivered and claim.attempt >= ESCALATION_NOTIFY_MAX_ATTEMPTS
    if outcome.delivered:
        item.escalation_notified_at, item.escalation_next_at, item.escalation_error = now, None, ""
    elif gave_up:
        item.escalation_next_at, item.escalation_error = None, f"{outcome.error}; gave up after {claim.attempt} tries"
    else:
        item.escalation_next_at = now + timedelta(seconds=escalation_notify_backoff(claim.attempt))
        item.escalation_error = outcome.error
    item.save(update_fields=["escalation_notified_at", "escalation_next_at", "escalation_error", "updated_at"])
    _escalation_notify_report(item=item, attempt=claim.attempt, outcome=outcome, gave_up=gave_up)


def _escalation_notify_report(
    *, item: WorklistItem, attempt: int, outcome: notify.WebhookOutcome, gave_up: bool
) -> None:
    # Item ids, attempt counts and error classes only: never the body or anything about the patient.
    if outcome.delivered:
        audit_record(action="worklist.escalation_notified", obj=item, data={"attempts": attempt})
    elif gave_up:
        audit_record(
            action="worklist.escalation_unnotified", obj=item, data={"attempts": attempt, "error": outcome.error}
        )
        logger.error("escalation webhook for item %s gave up after %d attempts: %s", item.pk, attempt, outcome.error)
        _emit(item=item, kind=events.KIND_CHANGED, changes=[events.CHANGE_ESCALATED])
    else:
        logger.warning("escalation webhook for item %s failed (attempt %d), will retry: %s", item.pk, attempt,
                       outcome.error)  # fmt: skip


def escalation_notify_backoff(attempts: int) -> float:
    """Seconds before the next webhook post: doubling from ESCALATION_NOTIFY_BACKOFF_SECONDS, capped."""
    return min(ESCALATION_NOTIFY_BACKOFF_CAP_SECONDS, ESCALATION_NOTIFY_BACKOFF_SECONDS * 2 ** max(0, attempts - 1))


def _positive_results(study: Study) -> list[TriageResult]:
    return list(TriageResult.objects.filter(study=study, is_current=True, positive=True).defer("key_image_png"))


def _claim_data(item: WorklistItem, user: User) -> dict:
    """Whose claim an action touched: acknowledging or pinning another's study is allowed, and audited as such."""
    return {"claimed_by_id": item.claimed_by_id, "claimed_by_other": item.claimed_by_id not in (None, user.pk)}


def _timing(item: WorklistItem) -> dict:
    """Identifiers and times only: what lets reports measure waits, never patient data."""
    now = timezone.now()
    data = {"item_id": item.pk, "waiting_seconds": round((now - item.received_at).total_seconds(), 3)}
    if item.critical_at is not None:
        data["critical_since_seconds"] = round((now - item.critical_at).total_seconds(), 3)
    return data

"""The claim-and-deliver loop that both outboxes (FHIR reports, PACS write-back) run over their own table: claim due
messages under a lease (SELECT … FOR UPDATE SKIP LOCKED), attempt each once, then record the outcome as sent, as a
retry with backoff, or in the dead letter once the attempts are spent."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar, cast

from django.db import models, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 600.0


class LeasedMessage(Protocol):
    """The columns of an outbox row that the loop reads and writes."""

    state: str
    attempts: int
    lease_owner: str
    lease_expires_at: dt.datetime | None


@dataclass
class Outcome:
    """What one attempt decided: ``sent``, ``dead`` (never retried), anything else is retried with backoff."""

    state: str
    status_code: int | None = None
    error: str = ""
    retry_after: float | None = field(default=None, kw_only=True)  # the server's Retry-After, in seconds


@dataclass
class DeliverySummary:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    message_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class States:
    """The values of an outbox's state column (each outbox has its own TextChoices)."""

    pending: str
    sending: str
    sent: str
    dead: str


M = TypeVar("M", bound=models.Model)
R = TypeVar("R", bound=Outcome)


@dataclass(frozen=True)
class Outbox(Generic[M, R]):
    """One outbox table and what differs between outboxes; the loop itself is the same."""

    model: type[models.Model]
    outcome: type[R]
    states: States
    logger: logging.Logger
    label: str  # names the outbox in log lines
    document: tuple[str, ...]  # the fields that name one document; its versions count up in ``version``
    version: str
    enabled: Q  # the message's destination is enabled
    related: tuple[str, ...]  # select_related for the attempt
    lease_seconds: Callable[[M], float]
    max_attempts: Callable[[], int]  # read at call time: settings may change
    columns: Callable[[R], dict[str, Any]]  # this outbox's own columns to write with an outcome
    log: Callable[[M, R], None]


def messages_deliver(outbox: Outbox[M, R], *, limit: int, worker_id: str, attempt: Callable[[M], R]) -> DeliverySummary:
    """Claim up to ``limit`` due messages and deliver each once. Safe to run in several processes at once."""
    summary = DeliverySummary()
    for message in messages_claim(outbox, limit=limit, worker_id=worker_id):
        summary.claimed += 1
        summary.message_ids.append(message.pk)
        try:
            outcome = attempt(message)
        except Exception as err:  # the loop boundary: record the failure, release the lease, go on
            outbox.logger.exception("%s %s: delivery attempt failed inside this app", outbox.label, message.pk)
            outcome = outbox.outcome(state=outbox.states.pending, error=f"Internal error: {type(err).__name__}")
        outcome = _give_up_when_exhausted(outbox, message, outcome)
        outcome_record(outbox, message=message, outcome=outcome, worker_id=worker_id)
        if outcome.state == outbox.states.sent:
            summary.sent += 1
        elif outcome.state == outbox.states.dead:
            summary.dead += 1
        else:
            summary.retried += 1
    return summary


@transaction.atomic
def messages_claim(outbox: Outbox[M, R], *, limit: int, worker_id: str) -> list[M]:
    """Lease up to ``limit`` due messages, at most one per document, none while another version is in flight or a
    newer one exists; each attempt counts when it is claimed, so a worker killed mid-send still spends one."""
    now = timezone.now()
    states, rows = outbox.states, outbox.model._default_manager
    same_document = rows.filter(**{name: OuterRef(name) for name in outbox.document})
    in_flight = same_document.filter(lease_expires_at__gt=now).exclude(pk=OuterRef("pk"))
    newer = same_document.filter(**{f"{outbox.version}__gt": OuterRef(outbox.version)})
    due = (
        rows.filter(
            Q(state=states.pending, next_attempt_at__lte=now) | Q(state=states.sending, lease_expires_at__lte=now),
            outbox.enabled,
        )
        .exclude(Exists(in_flight))
        .exclude(Exists(newer))
        .order_by("next_attempt_at", "id")
        .select_for_update(skip_locked=True, of=("self",))
    )
    claimed: list[M] = []
    documents: set[tuple[Any, ...]] = set()
    for row in due.select_related(*outbox.related)[: limit * 2]:
        key = tuple(row.serializable_value(name) for name in outbox.document)
        if key in documents or len(claimed) >= limit:
            continue
        documents.add(key)
        claimed.append(cast(M, row))
    for seconds in {outbox.lease_seconds(m) for m in claimed}:
        same_lease = [m for m in claimed if outbox.lease_seconds(m) == seconds]
        _lease(outbox, same_lease, expires_at=now + timedelta(seconds=seconds), worker_id=worker_id)
    return claimed


def _lease(outbox: Outbox[M, R], messages: list[M], *, expires_at: dt.datetime, worker_id: str) -> None:
    sending = outbox.states.sending
    outbox.model._default_manager.filter(pk__in=[m.pk for m in messages]).update(
        state=sending, lease_owner=worker_id, lease_expires_at=expires_at, attempts=F("attempts") + 1
    )
    for message in messages:
        leased = _leased(message)
        leased.state, leased.lease_owner, leased.lease_expires_at = sending, worker_id, expires_at
        leased.attempts += 1


def _leased(message: models.Model) -> LeasedMessage:
    return cast(LeasedMessage, message)


def _give_up_when_exhausted(outbox: Outbox[M, R], message: M, outcome: R) -> R:
    """A retry past the outbox's attempt limit goes to the dead letter with its last error instead."""
    attempts = _leased(message).attempts
    if outcome.state != outbox.states.pending or attempts < outbox.max_attempts():
        return outcome
    error = f"{outcome.error} (gave up after {attempts} attempts)"
    return dataclasses.replace(outcome, state=outbox.states.dead, error=error)


def backoff_seconds(attempts: int, *, retry_after: float | None = None) -> float:
    """Exponential backoff with equal jitter; never sooner than the server's Retry-After."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def outcome_record(outbox: Outbox[M, R], *, message: M, outcome: R, worker_id: str) -> None:
    """Release the lease with the outcome. Only the lease holder records it; a version superseded meanwhile stays
    superseded."""
    states, now = outbox.states, timezone.now()
    fields: dict[str, Any] = {
        "lease_owner": "",
        "lease_expires_at": None,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
    }
    if outcome.state == states.sent:
        fields |= {"state": states.sent, "sent_at": now}
    elif outcome.state == states.dead:
        fields |= {"state": states.dead}
    else:
        delay = backoff_seconds(_leased(message).attempts, retry_after=outcome.retry_after)
        fields |= {"state": states.pending, "next_attempt_at": now + timedelta(seconds=delay)}
    fields |= outbox.columns(outcome)
    mine = outbox.model._default_manager.filter(pk=message.pk, lease_owner=worker_id)
    if mine.filter(state=states.sending).update(**fields) == 0:
        mine.update(lease_owner="", lease_expires_at=None, last_status_code=outcome.status_code)
    outbox.log(message, outcome)

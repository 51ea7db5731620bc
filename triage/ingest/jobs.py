"""Triage jobs as a queue in the database: claim, lease, retry, sweep.

The lease and retry rules: docs/architecture.md (Jobs).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from triage.core.audit import audit_record
from triage.ingest.tasks import triage_job_process
from triage.models import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JobState, TriageJob, User

logger = logging.getLogger(__name__)

ARRIVAL_PRIORITY = 10  # django-tasks runs higher priorities first
RETRY_PRIORITY = 0

# A queued job younger than this may still have its task on the way (enqueued on commit): leave it alone.
SWEEP_GRACE_SECONDS = 5.0
SWEEP_BATCH = 200
# Retries of a job whose model cannot be loaded: time for an admin to install weights, not a busy loop.
MODEL_RETRY_BASE_SECONDS = 60.0
MODEL_RETRY_MAX_SECONDS = 1800.0


class LeaseLost(Exception):
    """Another worker holds the job now (our lease expired and it was claimed again): stop quietly."""


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.TRIAGE_JOB_LEASE_SECONDS)


def job_claim(*, job_id: int, worker_id: str) -> TriageJob | None:
    """Take the job if it is due, or if its holder's lease ran out; None when someone else has it or it is over."""
    now = timezone.now()
    due = Q(state=JobState.QUEUED, available_at__lte=now) | Q(state__in=ACTIVE_JOB_STATES, lease_expires_at__lt=now)
    claimed = TriageJob.objects.filter(due, pk=job_id, attempts__lt=settings.TRIAGE_JOB_MAX_ATTEMPTS).update(
        state=JobState.FETCHING,
        lease_owner=worker_id,
        lease_expires_at=_lease_until(now),
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), now),
    )
    if not claimed:
        return None
    return TriageJob.objects.select_related("study", "study__source").get(pk=job_id)


def job_lease_renew(*, job: TriageJob, worker_id: str, state: str | None = None) -> None:
    """Extend the lease (and move to ``state``); raise LeaseLost if the job is no longer ours."""
    now = timezone.now()
    changes: dict = {"lease_expires_at": _lease_until(now)}
    if state is not None:
        changes["state"] = state
    held = TriageJob.objects.filter(pk=job.pk, lease_owner=worker_id, state__in=ACTIVE_JOB_STATES).update(**changes)
    if not held:
        raise LeaseLost(f"job {job.pk}")
    job.lease_expires_at = changes["lease_expires_at"]
    if state is not None:
        job.state = state


@contextmanager
def lease_kept(*, job: TriageJob, worker_id: str) -> Iterator[None]:
    """Renew the job's lease from a side thread while a long stage runs (a slow fetch, a long inference).

    Between stages the lease is renewed in line; inside one, only this keeps another worker from taking the job.
    """
    stop = threading.Event()
    interval = max(0.1, settings.TRIAGE_JOB_LEASE_SECONDS / 3)
    thread = threading.Thread(
        target=_renew_until, args=(job.pk, worker_id, stop, interval), name=f"lease-{job.pk}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _renew_until(job_id: int, worker_id: str, stop: threading.Event, interval: float) -> None:
    try:
        while not stop.wait(interval):
            try:
                held = TriageJob.objects.filter(pk=job_id, lease_owner=worker_id, state__in=ACTIVE_JOB_STATES).update(
                    lease_expires_at=_lease_until(timezone.now())
                )
            except DatabaseError as err:  # a busy or restarting database: try again at the next tick
                logger.warning("job %s: lease renewal failed with %s", job_id, type(err).__name__)
                continue
            if not held:
                return
    finally:
        connection.close()


def job_lock_held(*, job: TriageJob, worker_id: str) -> TriageJob:
    """Inside a transaction: lock the job row and check the lease is still ours before writing results."""
    locked = TriageJob.objects.select_for_update().filter(pk=job.pk).first()
    if locked is None or locked.lease_owner != worker_id or locked.state not in ACTIVE_JOB_STATES:
        raise LeaseLost(f"job {job.pk}")
    return locked


def job_finish(
    *, job: TriageJob, worker_id: str, state: str, error_code: str = "", error_message: str = "", timings: dict
) -> bool:
    """End the job in a final state if it is still ours. Returns False when the lease was lost."""
    now = timezone.now()
    finished = TriageJob.objects.filter(pk=job.pk, lease_owner=worker_id, state__in=ACTIVE_JOB_STATES).update(
        state=state,
        error_code=error_code,
        error_message=error_message[:2000],
        timings=timings,
        lease_owner="",
        lease_expires_at=None,
        finished_at=now,
        pacs_failures=0,
    )
    return bool(finished)


def pacs_backoff_seconds(failures: int) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a random factor in [0.5, 1]."""
    base = settings.TRIAGE_PACS_RETRY_BASE_SECONDS
    ceiling = min(settings.TRIAGE_PACS_RETRY_MAX_SECONDS, base * 2 ** max(failures - 1, 0))
    return ceiling * random.uniform(0.5, 1.0)


def job_retry_later(*, job: TriageJob, worker_id: str, error_code: str, error_message: str, timings: dict) -> str:
    """Back to the queue after a PACS failure, with backoff; failed once the PACS has failed too many times.

    The claim that ended here does not count as an attempt: the PACS, not the study, was at fault.
    Returns the job's new state.
    """
    with transaction.atomic():
        locked = job_lock_held(job=job, worker_id=worker_id)
        failures = locked.pacs_failures + 1
        if failures >= settings.TRIAGE_PACS_MAX_RETRIES:
            job_finish(
                job=locked,
                worker_id=worker_id,
                state=JobState.FAILED,
                error_code=error_code,
                error_message=error_message,
                timings=timings,
            )
            return JobState.FAILED
        _requeue_after(
            job=job, seconds=pacs_backoff_seconds(failures), error_code=error_code, error_message=error_message,
            timings=timings, pacs_failures=failures, attempts=F("attempts") - 1,
        )  # fmt: skip
    return JobState.QUEUED


def _requeue_after(
    *, job: TriageJob, seconds: float, error_code: str, error_message: str, timings: dict, **fields: object
) -> None:
    """Release the lease and queue the job again after ``seconds``; the caller holds the job's row lock."""
    available_at = timezone.now() + timedelta(seconds=seconds)
    TriageJob.objects.filter(pk=job.pk).update(
        state=JobState.QUEUED,
        available_at=available_at,
        lease_owner="",
        lease_expires_at=None,
        error_code=error_code,
        error_message=error_message[:2000],
        timings=timings,
        **fields,
    )
    job_enqueue_on_commit(job_id=job.pk, run_after=available_at, priority=RETRY_PRIORITY)


def job_settle_note(*, job: TriageJob, worker_id: str, instance_count: int | None, since: datetime) -> None:
    """Remember the study's instance count and since when it has held, while the job is still ours."""
    held = TriageJob.objects.filter(pk=job.pk, lease_owner=worker_id, state__in=ACTIVE_JOB_STATES).update(
        instance_count=instance_count, instance_count_since=since
    )
    if not held:
        raise LeaseLost(f"job {job.pk}")
    job.instance_count, job.instance_count_since = instance_count, since


def job_mark_complete(*, job_id: int) -> None:
    """The PACS vouches that the study is complete: a job still waiting to settle is released at once."""
    now = timezone.now()
    TriageJob.objects.filter(pk=job_id).update(complete=True)
    waiting = TriageJob.objects.filter(pk=job_id, state=JobState.QUEUED, error_code="settling", available_at__gt=now)
    if waiting.update(available_at=now):
        job_enqueue_on_commit(job_id=job_id)


def job_wait_to_settle(
    *,
    job: TriageJob,
    worker_id: str,
    instance_count: int | None,
    since: datetime,
    available_at: datetime,
    message: str,
    timings: dict,
    refund: bool = True,
) -> str:
    """Back to the queue until the study has stopped changing. ``refund``: the claim is not counted as an attempt."""
    with transaction.atomic():
        job_lock_held(job=job, worker_id=worker_id)
        TriageJob.objects.filter(pk=job.pk).update(
            state=JobState.QUEUED,
            attempts=F("attempts") - 1 if refund else F("attempts"),
            available_at=available_at,
            instance_count=instance_count,
            instance_count_since=since,
            lease_owner="",
            lease_expires_at=None,
            error_code="settling",
            error_message=message[:2000],
            timings=timings,
        )
        job_enqueue_on_commit(job_id=job.pk, run_after=available_at)
    return JobState.QUEUED


def model_backoff_seconds(attempts: int) -> float:
    ceiling = min(MODEL_RETRY_MAX_SECONDS, MODEL_RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return ceiling * random.uniform(0.5, 1.0)


def job_retry_model(*, job: TriageJob, worker_id: str, error_code: str, error_message: str, timings: dict) -> str:
    """A model could not be loaded: retry with a long backoff (the claim counts), failed at the attempt limit."""
    with transaction.atomic():
        locked = job_lock_held(job=job, worker_id=worker_id)
        if locked.attempts >= settings.TRIAGE_JOB_MAX_ATTEMPTS:
            job_finish(
                job=locked,
                worker_id=worker_id,
                state=JobState.FAILED,
                error_code=error_code,
                error_message=error_message,
                timings=timings,
            )
            return JobState.FAILED
        _requeue_after(
            job=job, seconds=model_backoff_seconds(locked.attempts), error_code=error_code,
            error_message=error_message, timings=timings,
        )  # fmt: skip
    return JobState.QUEUED


@transaction.atomic
def job_requeue_grown(*, job_id: int, instance_count: int) -> bool:
    """A finished study that the PACS now holds more instances of (a series sent later): triage it again.

    Conditional, so two pollers requeue it once. The job then waits for the study to settle like a new one, and
    ``results_record`` supersedes the current results finding by finding.
    """
    now = timezone.now()
    available_at = now + timedelta(seconds=settings.TRIAGE_STUDY_SETTLE_SECONDS)
    grown = TriageJob.objects.filter(pk=job_id, state__in=FINAL_JOB_STATES, instance_count__lt=instance_count)
    previous = grown.values_list("instance_count", flat=True).first()
    if previous is None or not grown.update(
        state=JobState.QUEUED, attempts=0, pacs_failures=0, available_at=available_at,
        instance_count=instance_count, instance_count_since=now, error_code="", error_message="", timings={},
        started_at=None, finished_at=None, lease_owner="", lease_expires_at=None,
    ):  # fmt: skip
        return False
    audit_record(
        action="job.requeued",
        obj=TriageJob(pk=job_id),
        data={"reason": "instances_added", "instances_before": previous, "instances_now": instance_count},
    )
    job_enqueue_on_commit(job_id=job_id, run_after=available_at, priority=RETRY_PRIORITY)
    return True


@transaction.atomic
def job_retry_by_admin(*, job_id: int, actor: User) -> bool:
    """An admin asks for a failed or rejected study to be triaged again (after fixing weights, rules or the PACS)."""
    now = timezone.now()
    retried = TriageJob.objects.filter(pk=job_id, state__in=(JobState.FAILED, JobState.REJECTED))
    previous = retried.values_list("state", "error_code").first()
    if previous is None or not retried.update(
        state=JobState.QUEUED, attempts=0, pacs_failures=0, available_at=now, error_code="", error_message="",
        started_at=None, finished_at=None, lease_owner="", lease_expires_at=None,
    ):  # fmt: skip
        return False
    audit_record(
        action="job.retried",
        actor=actor,
        obj=TriageJob(pk=job_id),
        data={"state_before": previous[0], "error_code_before": previous[1]},
    )
    job_enqueue_on_commit(job_id=job_id)
    return True


def job_enqueue_on_commit(*, job_id: int, run_after: datetime | None = None, priority: int = ARRIVAL_PRIORITY) -> None:
    transaction.on_commit(lambda: job_enqueue(job_id=job_id, run_after=run_after, priority=priority), robust=True)


def job_enqueue(*, job_id: int, run_after: datetime | None = None, priority: int = ARRIVAL_PRIORITY) -> str:
    """Put a task for the job on the ingest queue and remember its id (the sweeper checks it is still waiting).

    Studies just arrived go first; retries after a PACS failure and re-reads of grown studies queue behind them,
    so a backlog of those never holds back a new head CT.
    """
    task = triage_job_process.using(priority=priority, run_after=run_after)
    result = task.enqueue(job_id)
    TriageJob.objects.filter(pk=job_id).update(task_id=str(result.id))
    return str(result.id)


def _task_waiting(task_id: str) -> bool:
    from django_tasks.base import TaskResultStatus
    from django_tasks.exceptions import TaskResultDoesNotExist

    if not task_id:
        return False
    try:
        return triage_job_process.get_result(task_id).status == TaskResultStatus.READY
    except (TaskResultDoesNotExist, ValueError):
        return False


def jobs_expire_leases(*, now: datetime | None = None) -> tuple[list[int], int]:
    """Jobs whose worker vanished: back to the queue, or failed after too many attempts.

    Returns the ids of the jobs put back in the queue, and how many failed.
    """
    now = now or timezone.now()
    expired = Q(state__in=ACTIVE_JOB_STATES, lease_expires_at__lt=now)
    max_attempts = settings.TRIAGE_JOB_MAX_ATTEMPTS
    failed = TriageJob.objects.filter(expired, attempts__gte=max_attempts).update(
        state=JobState.FAILED,
        error_code="max_attempts",
        error_message=f"The job was interrupted {max_attempts} times (worker crash or timeout); it is not retried.",
        lease_owner="",
        lease_expires_at=None,
        finished_at=now,
    )
    candidates = list(TriageJob.objects.filter(expired, attempts__lt=max_attempts).values_list("id", flat=True))
    requeued = []
    for job_id in candidates:
        # Conditional again: the holder may have renewed its lease since the read.
        if TriageJob.objects.filter(expired, pk=job_id).update(
            state=JobState.QUEUED, available_at=now, lease_owner="", lease_expires_at=None
        ):
            requeued.append(job_id)
    return requeued, failed


def jobs_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Recover from crashed workers: expire leases, then give every due queued job without a waiting task a new one."""
    now = now or timezone.now()
    requeued, failed = jobs_expire_leases(now=now)
    if failed:
        logger.warning("%d job(s) failed after %d interrupted attempts", failed, settings.TRIAGE_JOB_MAX_ATTEMPTS)
    due = TriageJob.objects.filter(
        state=JobState.QUEUED, available_at__lte=now - timedelta(seconds=SWEEP_GRACE_SECONDS)
    ).order_by("available_at")
    for job_id in requeued:
        job_enqueue(job_id=job_id)
    enqueued = len(requeued)
    for job_id, task_id in due.values_list("id", "task_id")[:SWEEP_BATCH]:
        if not _task_waiting(task_id):
            job_enqueue(job_id=job_id)
            enqueued += 1
    if requeued or enqueued:
        logger.info("sweep: %d lease(s) expired, %d task(s) enqueued", len(requeued), enqueued)
    return {"requeued": len(requeued), "failed": failed, "enqueued": enqueued}

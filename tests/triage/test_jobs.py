"""The job row as a queue: claims, leases, lost leases, the sweeper and its give-up rule."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from tests.factories import JobFactory, SeriesFactory
from tests.triage.ingest_helpers import FakeRunner
from triage.ingest import jobs
from triage.models import JobState, TriageJob, TriageResult

pytestmark = pytest.mark.django_db


def test_a_job_is_claimed_by_one_worker_only():
    job = JobFactory()

    first = jobs.job_claim(job_id=job.pk, worker_id="a")
    second = jobs.job_claim(job_id=job.pk, worker_id="b")

    assert first is not None
    assert (first.state, first.lease_owner, first.attempts) == (JobState.FETCHING, "a", 1)
    assert second is None


def test_a_job_whose_lease_expired_is_claimed_again():
    job = JobFactory(state=JobState.FETCHING, lease_owner="dead", lease_expires_at=timezone.now() - timedelta(1))

    claimed = jobs.job_claim(job_id=job.pk, worker_id="b")

    assert claimed.lease_owner == "b"


def test_a_job_not_yet_due_is_not_claimed():
    job = JobFactory(available_at=timezone.now() + timedelta(minutes=5))

    assert jobs.job_claim(job_id=job.pk, worker_id="a") is None


def test_a_worker_that_lost_its_lease_cannot_finish_or_record():
    job = JobFactory()
    mine = jobs.job_claim(job_id=job.pk, worker_id="slow")
    TriageJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    jobs.job_claim(job_id=job.pk, worker_id="fast")

    with pytest.raises(jobs.LeaseLost):
        jobs.job_lease_renew(job=mine, worker_id="slow")
    finished = jobs.job_finish(job=mine, worker_id="slow", state=JobState.DONE, timings={})

    assert finished is False
    assert TriageJob.objects.get(pk=job.pk).lease_owner == "fast"


def test_results_are_recorded_only_under_the_lease(monkeypatch):
    from triage.ingest.pipeline import _job_end

    series = SeriesFactory()
    job = JobFactory(study=series.study)
    mine = jobs.job_claim(job_id=job.pk, worker_id="slow")
    TriageJob.objects.filter(pk=job.pk).update(lease_owner="other")
    output = FakeRunner("ich").run(np.zeros((3, 4, 4)), (1, 1, 1))

    with pytest.raises(jobs.LeaseLost):
        _job_end(mine, "slow", {}, JobState.DONE, "", "", record=[(series, output, None)])

    assert TriageResult.objects.count() == 0


def test_sweeper_requeues_an_expired_lease_and_enqueues_a_task():
    job = JobFactory(
        state=JobState.INFERRING, attempts=1, lease_owner="killed", lease_expires_at=timezone.now() - timedelta(1)
    )

    report = jobs.jobs_sweep()

    job.refresh_from_db()
    assert report["requeued"] == 1
    assert (job.state, job.lease_owner) == (JobState.QUEUED, "")
    assert DBTaskResult.objects.filter(id=job.task_id, status="READY").exists()


def test_sweeper_gives_up_after_max_attempts(settings):
    settings.TRIAGE_JOB_MAX_ATTEMPTS = 3
    job = JobFactory(state=JobState.FETCHING, attempts=3, lease_expires_at=timezone.now() - timedelta(1))

    jobs.jobs_sweep()

    job.refresh_from_db()
    assert (job.state, job.error_code) == (JobState.FAILED, "max_attempts")


def test_sweeper_enqueues_a_queued_job_whose_task_is_gone_but_not_one_still_waiting():
    old = timezone.now() - timedelta(minutes=1)
    orphan = JobFactory(available_at=old, task_id="")
    waiting = JobFactory(available_at=old)
    waiting_task = jobs.job_enqueue(job_id=waiting.pk)

    report = jobs.jobs_sweep()

    orphan.refresh_from_db()
    waiting.refresh_from_db()
    assert report["enqueued"] == 1
    assert orphan.task_id
    assert waiting.task_id == waiting_task


def test_pacs_failure_refunds_the_attempt_and_backs_off(settings):
    settings.TRIAGE_PACS_RETRY_BASE_SECONDS = 10
    job = JobFactory()
    mine = jobs.job_claim(job_id=job.pk, worker_id="a")

    state = jobs.job_retry_later(
        job=mine, worker_id="a", error_code="pacs_unavailable", error_message="down", timings={}
    )

    job.refresh_from_db()
    assert state == JobState.QUEUED
    assert (job.attempts, job.pacs_failures) == (0, 1)
    assert 5 <= (job.available_at - timezone.now()).total_seconds() <= 10


def test_pacs_failures_give_up_after_the_limit(settings):
    settings.TRIAGE_PACS_MAX_RETRIES = 2
    job = JobFactory(pacs_failures=1)
    mine = jobs.job_claim(job_id=job.pk, worker_id="a")

    state = jobs.job_retry_later(
        job=mine, worker_id="a", error_code="pacs_unavailable", error_message="down", timings={}
    )

    assert state == JobState.FAILED
    assert TriageJob.objects.get(pk=job.pk).error_code == "pacs_unavailable"


def test_unexpected_error_fails_the_job_without_patient_data(monkeypatch, caplog):
    from triage.ingest import pipeline

    job = JobFactory(study__source=None)
    job.study.patient_name = "Doe^Jane"
    job.study.save()

    def explode(*args, **kwargs):
        raise ValueError("Doe^Jane broke it")

    monkeypatch.setattr(pipeline, "_job_run", explode)

    state = pipeline.job_process(job_id=job.pk, worker_id="a")

    job.refresh_from_db()
    assert state == JobState.FAILED
    assert job.error_code == "internal_error"
    assert "Doe" not in job.error_message
    assert "Doe" not in caplog.text


def test_waiting_for_a_study_to_settle_costs_no_attempt_and_no_pacs_failure(django_capture_on_commit_callbacks):
    job = JobFactory(attempts=2, pacs_failures=1)
    mine = jobs.job_claim(job_id=job.pk, worker_id="a")
    later = timezone.now() + timedelta(seconds=7)

    with django_capture_on_commit_callbacks(execute=True):
        state = jobs.job_wait_to_settle(
            job=mine, worker_id="a", instance_count=40, since=timezone.now(), available_at=later, message="", timings={}
        )

    job.refresh_from_db()
    assert state == JobState.QUEUED
    assert (job.attempts, job.pacs_failures, job.instance_count, job.available_at) == (2, 1, 40, later)
    assert DBTaskResult.objects.filter(id=job.task_id, status="READY").exists()


def test_model_unavailable_backs_off_for_minutes_and_counts_the_attempt(settings):
    settings.TRIAGE_JOB_MAX_ATTEMPTS = 6
    job = JobFactory(attempts=2)
    mine = jobs.job_claim(job_id=job.pk, worker_id="a")

    state = jobs.job_retry_model(
        job=mine, worker_id="a", error_code="model_unavailable", error_message="no", timings={}
    )

    job.refresh_from_db()
    assert (state, job.attempts, job.error_code) == (JobState.QUEUED, 3, "model_unavailable")
    assert 120 <= (job.available_at - timezone.now()).total_seconds() <= 240


def test_only_a_finished_job_whose_study_grew_is_queued_again():
    done = JobFactory(state=JobState.DONE, instance_count=32, attempts=1, finished_at=timezone.now())
    running = JobFactory(state=JobState.FETCHING, instance_count=32)

    same = jobs.job_requeue_grown(job_id=done.pk, instance_count=32)
    grown = jobs.job_requeue_grown(job_id=done.pk, instance_count=90)
    busy = jobs.job_requeue_grown(job_id=running.pk, instance_count=90)

    done.refresh_from_db()
    assert (same, grown, busy) == (False, True, False)
    assert (done.state, done.attempts, done.instance_count, done.finished_at) == (JobState.QUEUED, 0, 90, None)


def test_a_new_study_is_taken_before_a_backlog_of_pacs_retries(settings, django_capture_on_commit_callbacks):
    settings.TRIAGE_PACS_RETRY_BASE_SECONDS = 0
    retries = [jobs.job_claim(job_id=JobFactory().pk, worker_id="a") for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        for job in retries:
            jobs.job_retry_later(job=job, worker_id="a", error_code="pacs_unavailable", error_message="", timings={})
    fresh = JobFactory()
    jobs.job_enqueue(job_id=fresh.pk)

    first = DBTaskResult.objects.ready().order_by(*DBTaskResult._meta.ordering).first()

    assert first is not None
    assert first.args_kwargs["args"] == [fresh.pk]

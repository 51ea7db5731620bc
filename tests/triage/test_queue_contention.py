"""The queue under contention on PostgreSQL: workers in threads, each with its own connection, claim as
``manage.py db_worker`` does (django-tasks-db: ``SELECT ... FOR UPDATE SKIP LOCKED`` of one ready task, then
``claim`` in the same transaction) and then claim the job with ``job_claim`` (one conditional UPDATE).

Every connection runs with a short ``lock_timeout``: a claim that waited on another worker's lock would fail the
test with LockNotAvailable instead of passing slowly.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from django.db import connection
from django_tasks_db.models import DBTaskResult
from django_tasks_db.utils import exclusive_transaction

from tests.factories import JobFactory, StudyFactory
from triage.ingest import jobs, pipeline
from triage.ingest.services import study_request_triage
from triage.models import JobState, Study, TriageJob

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]

WORKERS = 4
JOBS = 50
LOCK_TIMEOUT = "2s"
DEADLINE_S = 120.0


def _no_waiting() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")


def _task_take(worker_id: str) -> DBTaskResult | None:
    """db_worker's claim, line for line (django_tasks_db/management/commands/db_worker.py, Worker.run)."""
    with exclusive_transaction():
        task = DBTaskResult.objects.ready().filter(queue_name="ingest").get_locked()
        if task is not None:
            task.claim(worker_id)
    return task


class Workers:
    """WORKERS threads draining the ingest queue until told to stop; what each took is recorded."""

    def __init__(self, process: Callable[[int, str], object]) -> None:
        self.process = process
        self.tasks: list[str] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(f"w{i}",)) for i in range(WORKERS)]

    def _run(self, worker_id: str) -> None:
        try:
            _no_waiting()
            while not self.stop.is_set():
                task = _task_take(worker_id)
                if task is None:
                    time.sleep(0.02)
                    continue
                with self.lock:
                    self.tasks.append(str(task.id))
                self.process(task.args_kwargs["args"][0], worker_id)
                task.set_successful(None)
        except BaseException as err:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.errors.append(err)
        finally:
            connection.close()

    def start(self) -> Workers:
        for thread in self.threads:
            thread.start()
        return self

    def run_until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        try:
            while not done() and not self.errors and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(timeout=60)


def _ready_tasks() -> int:
    return DBTaskResult.objects.ready().filter(queue_name="ingest").count()


def _in_threads(*targets: Callable[[], object]) -> list[BaseException]:
    """Run the callables at once (a barrier lines them up), each in its own thread and connection."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target: Callable[[], object]) -> None:
        try:
            _no_waiting()
            barrier.wait(timeout=30)
            target()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_concurrent_workers_claim_each_task_and_job_exactly_once_without_waiting():
    job_ids = [JobFactory(study=StudyFactory()).pk for _ in range(JOBS)]
    for job_id in job_ids:
        jobs.job_enqueue(job_id=job_id)
        jobs.job_enqueue(job_id=job_id)  # a duplicate, as the sweeper may add: its claim must match no row
    claims: list[tuple[int, str]] = []
    lock = threading.Lock()

    def process(job_id: int, worker_id: str) -> None:
        job = jobs.job_claim(job_id=job_id, worker_id=worker_id)
        if job is not None:
            with lock:
                claims.append((job_id, worker_id))
            jobs.job_finish(job=job, worker_id=worker_id, state=JobState.DONE, timings={})

    workers = Workers(process).start()
    workers.run_until(lambda: _ready_tasks() == 0 and len(claims) == JOBS)

    task_rows = DBTaskResult.objects.filter(queue_name="ingest")
    assert workers.errors == []
    assert sorted(Counter(workers.tasks).values()) == [1] * (2 * JOBS)
    assert all(len(row.worker_ids) == 1 for row in task_rows)
    assert sorted(job_id for job_id, _ in claims) == sorted(job_ids)
    assert set(TriageJob.objects.values_list("state", "attempts")) == {(JobState.DONE, 1)}
    assert len({worker for _, worker in claims}) > 1


def test_a_task_row_locked_by_one_worker_is_skipped_by_the_others():
    job_ids = [JobFactory(study=StudyFactory()).pk for _ in range(10)]
    for job_id in job_ids:
        jobs.job_enqueue(job_id=job_id)
    held = threading.Event()
    release = threading.Event()
    taken: list[str] = []

    def hold_one() -> None:
        # A worker that has locked a task row and not yet committed its claim (paused, slow, or mid-transaction).
        with exclusive_transaction():
            task = DBTaskResult.objects.ready().filter(queue_name="ingest").get_locked()
            taken.append(str(task.id))
            held.set()
            release.wait(timeout=60)

    def others() -> None:
        held.wait(timeout=30)
        try:
            while (task := _task_take("other")) is not None:
                taken.append(str(task.id))
        finally:
            release.set()

    errors = _in_threads(hold_one, others)

    assert errors == []
    assert sorted(Counter(taken).values()) == [1] * 10


def test_notify_poller_and_sweeper_racing_on_one_study_make_one_job_processed_once(monkeypatch):
    monkeypatch.setattr(jobs, "SWEEP_GRACE_SECONDS", 0.0)  # the sweeper looks at the job at once, mid-race
    uid = "1.2.826.0.1.3680043.10.999.424242"
    runs: list[str] = []
    lock = threading.Lock()

    def run_job(job, worker_id: str, timings: dict) -> str:
        with lock:
            runs.append(worker_id)
        jobs.job_finish(job=job, worker_id=worker_id, state=JobState.DONE, timings=timings)
        return JobState.DONE

    monkeypatch.setattr(pipeline, "_job_run", run_job)
    workers = Workers(lambda job_id, worker_id: pipeline.job_process(job_id=job_id, worker_id=worker_id)).start()
    notify = [lambda: study_request_triage(study_instance_uid=uid, complete=True)] * 3
    poller = [lambda: study_request_triage(study_instance_uid=uid)] * 3
    sweeper = [jobs.jobs_sweep] * 2
    errors = _in_threads(*notify, *poller, *sweeper)
    for _ in range(5):  # the sweeper keeps running while the workers take the job
        jobs.jobs_sweep()
    workers.run_until(lambda: _ready_tasks() == 0 and TriageJob.objects.filter(state=JobState.DONE).exists())

    assert errors == []
    assert workers.errors == []
    assert Study.objects.filter(study_instance_uid=uid).count() == 1
    assert list(TriageJob.objects.values_list("state", "attempts")) == [(JobState.DONE, 1)]
    assert len(runs) == 1

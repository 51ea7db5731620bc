"""The task queue across an upgrade: rows django-tasks stored under an earlier dotted path still run."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django_tasks_db.models import DBTaskResult

from tests.factories import JobFactory
from triage.ingest import jobs
from triage.models import JobState

# The worker closes the connection between tasks (as in production), which a test wrapped in a transaction cannot
# survive: these tests commit.
pytestmark = pytest.mark.django_db(transaction=True)

# Where the task lived before the layered layout; queued rows name it (``triage/tasks.py`` re-exports it).
OLD_TASK_PATH = "triage.tasks.triage_job_process"


@pytest.fixture
def worker_signals_restored() -> Iterator[None]:
    """db_worker installs its own SIGINT/SIGTERM handlers; give pytest its own back afterwards."""
    signums = [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT]
    saved = {signum: signal.getsignal(signum) for signum in signums}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def run_worker_once() -> None:
    call_command(
        "db_worker",
        "--batch",
        "--queue-name",
        "*",
        "--interval",
        "0",
        "--no-startup-delay",
        "--no-reload",
        "--worker-id",
        "upgrade-test",
        verbosity=0,
    )


def test_a_task_queued_under_the_old_path_runs_the_job_it_names(worker_signals_restored):
    # A study with no DICOMweb source: the job ends failed with a recorded reason, no PACS involved.
    job = JobFactory(study__source=None)
    task_id = jobs.job_enqueue(job_id=job.pk)
    DBTaskResult.objects.filter(id=task_id).update(task_path=OLD_TASK_PATH)

    run_worker_once()

    row = DBTaskResult.objects.get(id=task_id)
    job.refresh_from_db()
    assert (row.task_path, row.status) == (OLD_TASK_PATH, "SUCCESSFUL"), row.traceback
    assert row.return_value == JobState.FAILED
    assert (job.state, job.error_code) == (JobState.FAILED, "no_source")

"""Background tasks (django-tasks, database backend). Run with ``manage.py db_worker --queue-name ingest``.

A task only names a job; the job row decides whether there is anything to do (see ``triage.ingest.jobs``).
"""

from __future__ import annotations

from django_tasks import task


@task(queue_name="ingest")
def triage_job_process(job_id: int) -> str | None:
    """Fetch, assemble, run and record one study's triage job. A duplicate or late task finds nothing to claim."""
    from triage.ingest.pipeline import job_process

    return job_process(job_id=job_id)

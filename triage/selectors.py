"""Reads for the pipeline, already scoped to what the caller may see."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Max, Min

from triage.models import WorkerHeartbeat


def worker_heartbeat_latest() -> datetime | None:
    return WorkerHeartbeat.objects.aggregate(latest=Max("last_seen"))["latest"]


def task_queue_oldest_ready_enqueued_at() -> datetime | None:
    """When the oldest task still waiting for a worker was enqueued: a stalled queue means no task worker runs."""
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.ready().aggregate(oldest=Min("enqueued_at"))["oldest"]

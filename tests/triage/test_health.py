"""The health endpoints: ``/healthz`` (the process answers) and ``/readyz`` (workers alive, task queue moving)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from triage.core.services import worker_heartbeat

pytestmark = pytest.mark.django_db


def queued_task(*, enqueued_minutes_ago: float, run_after=None) -> DBTaskResult:
    task = DBTaskResult.objects.create(
        task_path="triage.ingest.tasks.example",
        args_kwargs={"args": [], "kwargs": {}},
        queue_name="default",
        backend_name="default",
        priority=0,
        run_after=run_after,
    )
    enqueued_at = timezone.now() - timedelta(minutes=enqueued_minutes_ago)
    DBTaskResult.objects.filter(pk=task.pk).update(enqueued_at=enqueued_at)
    return task


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200


def test_readyz_is_unavailable_while_no_worker_has_reported(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "worker" in response.json()["reason"]


def test_readyz_is_ok_with_a_fresh_heartbeat_and_no_stalled_tasks(client):
    worker_heartbeat(worker_id="poller-1", kind="poll")
    response = client.get("/readyz")
    assert response.status_code == 200


def test_readyz_reports_a_stalled_task_queue(client):
    worker_heartbeat(worker_id="poller-1", kind="poll")
    queued_task(enqueued_minutes_ago=10)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "stalled" in response.json()["reason"]


def test_readyz_counts_a_scheduled_retry_from_when_it_became_due(client):
    worker_heartbeat(worker_id="poller-1", kind="poll")
    queued_task(enqueued_minutes_ago=30, run_after=timezone.now() - timedelta(seconds=5))
    response = client.get("/readyz")
    assert response.status_code == 200

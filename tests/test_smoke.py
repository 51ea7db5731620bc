from __future__ import annotations

import pytest


@pytest.mark.django_db
def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200


@pytest.mark.django_db
def test_readyz_reports_missing_workers(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "worker" in response.json()["reason"]


@pytest.mark.django_db
def test_worklist_api_requires_login(api_client):
    response = api_client.get("/api/v1/worklist/")
    assert response.status_code in (401, 403)
    assert "error" in response.json()


@pytest.mark.django_db
def test_readyz_is_ok_with_a_fresh_heartbeat_and_no_stalled_tasks(client):
    from triage.core.services import worker_heartbeat

    worker_heartbeat(worker_id="poller-1", kind="poll")
    response = client.get("/readyz")
    assert response.status_code == 200


@pytest.mark.django_db
def test_readyz_reports_a_stalled_task_queue(client):
    from datetime import timedelta

    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    from triage.core.services import worker_heartbeat

    worker_heartbeat(worker_id="poller-1", kind="poll")
    task = DBTaskResult.objects.create(
        task_path="triage.ingest.tasks.example",
        args_kwargs={"args": [], "kwargs": {}},
        queue_name="default",
        backend_name="default",
        priority=0,
        run_after=None,
    )
    DBTaskResult.objects.filter(pk=task.pk).update(enqueued_at=timezone.now() - timedelta(minutes=10))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "stalled" in response.json()["reason"]


@pytest.mark.django_db
def test_token_login_returns_a_token_that_authenticates(api_client):
    from tests.factories import UserFactory

    UserFactory(username="rad9")
    response = api_client.post("/api/v1/auth/token/", {"username": "rad9", "password": "correct-horse-battery"})
    token = response.json()["token"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api_client.get("/api/v1/worklist/").status_code == 200


@pytest.mark.django_db
def test_token_login_with_a_wrong_password_is_refused(api_client):
    from tests.factories import UserFactory

    UserFactory(username="rad9")
    response = api_client.post("/api/v1/auth/token/", {"username": "rad9", "password": "nope"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_credentials"


@pytest.mark.django_db
def test_readyz_counts_a_scheduled_retry_from_when_it_became_due(client):
    from datetime import timedelta

    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    from triage.core.services import worker_heartbeat

    worker_heartbeat(worker_id="poller-1", kind="poll")
    task = DBTaskResult.objects.create(
        task_path="triage.ingest.tasks.example",
        args_kwargs={"args": [], "kwargs": {}},
        queue_name="default",
        backend_name="default",
        priority=0,
        run_after=timezone.now() - timedelta(seconds=5),
    )
    DBTaskResult.objects.filter(pk=task.pk).update(enqueued_at=timezone.now() - timedelta(minutes=30))
    response = client.get("/readyz")
    assert response.status_code == 200

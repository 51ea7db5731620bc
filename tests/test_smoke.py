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

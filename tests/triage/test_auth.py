"""API authentication: token login, and the coded error an anonymous API call gets."""

from __future__ import annotations

import pytest

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_anonymous_api_request_is_refused_with_an_error_body(api_client):
    response = api_client.get("/api/v1/worklist/")
    assert response.status_code in (401, 403)
    assert "error" in response.json()


def test_token_login_returns_a_token_that_authenticates(api_client):
    UserFactory(username="rad9")
    response = api_client.post("/api/v1/auth/token/", {"username": "rad9", "password": "correct-horse-battery"})
    token = response.json()["token"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api_client.get("/api/v1/worklist/").status_code == 200


def test_token_login_with_a_wrong_password_is_refused(api_client):
    UserFactory(username="rad9")
    response = api_client.post("/api/v1/auth/token/", {"username": "rad9", "password": "nope"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_credentials"

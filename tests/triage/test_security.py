"""Hardening: secret names checked by the model, API tokens, login lockout, CSV exports, admin deletions."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from knox.models import AuthToken

from tests.factories import ResultFactory, StudyFactory, UserFactory
from triage.governance.console import csv_cell
from triage.models import AuditEvent, DicomWebSource, FhirEndpoint, Study, TriageResult

# --- secret names -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_model_validation_refuses_the_database_url_as_an_emr_secret():
    endpoint = FhirEndpoint(name="emr", base_url="https://emr.example/fhir", secret_env="DATABASE_URL")
    with pytest.raises(ValidationError) as err:
        endpoint.full_clean()
    assert "secret_env" in err.value.message_dict


# --- tokens ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_token_is_stored_only_as_a_digest_with_an_expiry(api_client, settings):
    settings.TRIAGE_TOKEN_TTL_HOURS = 2
    UserFactory(username="svc")
    token = api_client.post("/api/v1/auth/token/", {"username": "svc", "password": "correct-horse-battery"}).json()
    row = AuthToken.objects.get()
    assert token["token"] not in (row.digest, row.token_key)
    assert timedelta(hours=1.9) < row.expiry - timezone.now() <= timedelta(hours=2)


@pytest.mark.django_db
def test_expired_token_no_longer_authenticates(api_client):
    UserFactory(username="svc")
    token = api_client.post("/api/v1/auth/token/", {"username": "svc", "password": "correct-horse-battery"}).json()
    AuthToken.objects.update(expiry=timezone.now() - timedelta(seconds=1))
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token['token']}")
    assert api_client.get("/api/v1/worklist/").status_code in (401, 403)


@pytest.mark.django_db
def test_token_command_prints_a_token_that_authenticates(api_client):
    UserFactory(username="pacs-hook")
    out = io.StringIO()
    call_command("triage_token_create", "--user", "pacs-hook", "--ttl-hours", "3", stdout=out)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {out.getvalue().strip()}")
    assert api_client.get("/api/v1/worklist/").status_code == 200
    assert AuditEvent.objects.filter(action="token.create").count() == 1


@pytest.mark.django_db
def test_token_command_registers_a_chosen_token_from_the_environment(api_client, monkeypatch):
    UserFactory(username="pacs-hook")
    monkeypatch.setenv("HOOK_TOKEN", "a1" * 20)
    call_command("triage_token_create", "--user", "pacs-hook", "--from-env", "HOOK_TOKEN", stdout=io.StringIO())
    api_client.credentials(HTTP_AUTHORIZATION="Token " + "a1" * 20)
    assert api_client.get("/api/v1/worklist/").status_code == 200


@pytest.mark.django_db
def test_token_command_refuses_a_short_chosen_token(monkeypatch):
    UserFactory(username="pacs-hook")
    monkeypatch.setenv("HOOK_TOKEN", "short")
    with pytest.raises(CommandError, match="at least 32"):
        call_command("triage_token_create", "--user", "pacs-hook", "--from-env", "HOOK_TOKEN")


@pytest.mark.django_db
def test_tokens_cannot_be_added_or_read_in_the_admin(admin_web):
    assert admin_web.get(reverse("admin:knox_authtoken_add")).status_code == 403


# --- lockout -----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_token_endpoint_locks_a_username_out_after_repeated_failures(api_client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="rad9")
    for _ in range(3):
        api_client.post("/api/v1/auth/token/", {"username": "rad9", "password": "wrong"})
    response = api_client.post("/api/v1/auth/token/", {"username": "rad9", "password": "correct-horse-battery"})
    assert (response.status_code, response.json()["error"]["code"]) == (429, "locked_out")


@pytest.mark.django_db
def test_login_form_locks_a_username_out_after_repeated_failures(client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="rad9")
    for _ in range(3):
        client.post("/accounts/login/", {"username": "rad9", "password": "wrong"})
    response = client.post("/accounts/login/", {"username": "rad9", "password": "correct-horse-battery"})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_token_endpoint_is_throttled_per_client(api_client, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    # DRF reads the rates once, when the throttle class is defined.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"token": "2/minute"})
    codes = [api_client.post("/api/v1/auth/token/", {"username": "x", "password": "y"}).status_code for _ in range(3)]
    cache.clear()
    assert codes == [400, 400, 429]


# --- CSV exports -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx", "-x"])
def test_csv_cells_that_would_start_a_formula_get_a_leading_quote(value):
    assert csv_cell(value) == "'" + value


@pytest.mark.parametrize("value", [-0.5, 3, "-0.25", "+12", "1e-3", "ich", "", None])
def test_csv_numbers_and_plain_text_are_left_as_they_are(value):
    assert csv_cell(value) == ("" if value is None else value)


# --- admin deletions ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["study", "triageresult", "triagejob", "outboxmessage"])
def test_clinical_rows_cannot_be_deleted_in_the_admin(admin_web, model):
    result = ResultFactory(series__study=StudyFactory())
    object_id = {"study": result.study.pk, "triageresult": result.pk}.get(model, 1)
    response = admin_web.post(reverse(f"admin:triage_{model}_delete", args=[object_id]), {"post": "yes"})
    assert response.status_code == 403
    assert (Study.objects.count(), TriageResult.objects.count()) == (1, 1)


@pytest.mark.django_db
def test_bulk_delete_of_configuration_writes_an_audit_row_per_object(admin_web):
    sources = [DicomWebSource.objects.create(name=f"s{i}", url="http://127.0.0.1:9/dicom-web") for i in range(2)]
    data = {"action": "delete_selected", "_selected_action": [s.pk for s in sources], "post": "yes"}
    admin_web.post(reverse("admin:triage_dicomwebsource_changelist"), data)
    assert not DicomWebSource.objects.exists()
    assert AuditEvent.objects.filter(action="admin.dicomwebsource.delete").count() == 2

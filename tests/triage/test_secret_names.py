"""What admins and the PACS may hand the app: secret names from an allow-list, http(s) endpoint URLs, DICOM UIDs."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ValidationError

from triage.core.validators import validate_endpoint_url, validate_secret_env
from triage.fhir import client as fhirclient
from triage.ingest import dicomweb
from triage.ingest.poll import source_poll
from triage.models import DicomWebSource, FhirAuth, FhirEndpoint

# --- secret names and URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["TRIAGE_FHIR_TOKEN", "TRIAGE_PACS2_PASSWORD", "TRIAGE_EMR_PRIVATE_KEY", ""])
def test_triage_secret_names_are_allowed(name):
    validate_secret_env(name)


@pytest.mark.parametrize(
    "name", ["DATABASE_URL", "SECRET_KEY", "REDIS_URL", "TRIAGE_DEBUG", "TRIAGE_FHIR_TOKEN_FILE", "triage_x_token"]
)
def test_other_environment_variables_are_refused_as_secret_names(name):
    with pytest.raises(ValidationError, match="not an allowed secret name"):
        validate_secret_env(name)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://pacs/x", "http://", "gopher://h/"])
def test_endpoint_urls_other_than_http_with_a_host_are_refused(url):
    with pytest.raises(ValidationError, match="http"):
        validate_endpoint_url(url)


@pytest.mark.django_db
def test_emr_client_refuses_a_secret_name_outside_the_list_even_when_stored(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "do-not-send")
    endpoint = FhirEndpoint.objects.create(
        name="emr", base_url="https://emr.example/fhir", auth=FhirAuth.BEARER, secret_env="SECRET_KEY"
    )
    with pytest.raises(fhirclient.FhirAuthError, match="not an allowed secret name") as err:
        fhirclient.auth_headers(endpoint)
    assert err.value.retryable is False


def test_pacs_client_refuses_a_secret_name_outside_the_list(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db/x")
    source = DicomWebSource(name="p", url="http://127.0.0.1:9", username="u", password_env="DATABASE_URL")
    with pytest.raises(dicomweb.PacsConfigError, match="not an allowed secret name"):
        dicomweb.session_for_source(source)


def test_pacs_password_is_read_from_a_file_named_by_the_file_variable(monkeypatch, tmp_path):
    (tmp_path / "pw").write_text("from-a-file\n")
    monkeypatch.setenv("TRIAGE_PACS_PASSWORD_FILE", str(tmp_path / "pw"))
    source = DicomWebSource(name="p", url="http://127.0.0.1:9", username="u", password_env="TRIAGE_PACS_PASSWORD")
    assert dicomweb.session_for_source(source).auth == ("u", "from-a-file")


# --- UIDs from the PACS ------------------------------------------------------------------------------------------


class ListingPacs:
    """A PACS whose study search answers one page of the given UIDs."""

    def __init__(self, uids: list[str]) -> None:
        self.items = [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in uids]

    def search_studies(self, *, filters, limit, offset, fields=None):
        return self.items if offset == 0 else []


@pytest.mark.django_db
def test_poller_skips_uids_that_are_not_dicom_uids_and_logs_only_their_count(caplog, settings):
    settings.TRIAGE_POLL_LOOKBACK_DAYS = 0  # one scan, no rolling sweep of older days
    source = DicomWebSource.objects.create(name="pacs", url="http://127.0.0.1:9/dicom-web")
    bad = ["1.2.3/../x", "1..2", "1.2." + "3" * 70, "DOE^JOHN"]
    with caplog.at_level(logging.WARNING, logger="triage.ingest.poll"):
        report = source_poll(source=source, pacs=ListingPacs([*bad, "1.2.840.99.1"]))  # type: ignore[arg-type]
    assert (report.queued, report.skipped_invalid) == (["1.2.840.99.1"], 4)
    assert "skipped 4 study" in caplog.text
    assert not any(uid in caplog.text for uid in bad)


@pytest.mark.django_db
def test_a_source_with_a_refused_secret_name_records_the_reason_instead_of_polling():
    source = DicomWebSource.objects.create(
        name="pacs", url="http://127.0.0.1:9/dicom-web", username="u", password_env="SECRET_KEY"
    )
    report = source_poll(source=source)
    source.refresh_from_db()
    assert "not an allowed secret name" in report.error
    assert "not an allowed secret name" in source.last_error

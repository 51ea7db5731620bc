"""The DICOMweb client against a real Orthanc behind a fault-injecting proxy: retries, errors, credentials."""

from __future__ import annotations

import logging

import pytest

from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from triage.core.exceptions import PacsError
from triage.ingest.dicomweb import Pacs, PacsNotFound, PacsRequestRejected, session_for_source
from triage.models import DicomWebSource

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(orthanc) -> StudySpec:
    return upload_study(orthanc, StudySpec(series=[SeriesSpec(slices=3, size=8)]))


def test_5xx_is_retried_until_the_pacs_answers(study, proxy, proxied_source, quick_retries):
    proxy.script.fail_next, proxy.script.fail_status = 2, 503

    found = Pacs.for_source(proxied_source).search_studies(filters={}, limit=10, offset=0)

    assert [item["0020000D"]["Value"][0] for item in found] == [study.study_uid]
    assert len(proxy.script.seen) == 3


def test_timeout_is_retried(study, proxy, proxied_source, quick_retries):
    proxy.script.delay_next, proxy.script.delay_seconds = 1, 2.0

    series = Pacs.for_source(proxied_source).search_series(study.study_uid)

    assert len(series) == 1
    assert proxy.script.seen[0] == proxy.script.seen[1]


def test_persistent_5xx_is_a_pacs_error_without_the_url(study, proxy, proxied_source, quick_retries, caplog):
    proxy.script.fail_next, proxy.script.fail_status = 10, 502
    caplog.set_level(logging.WARNING)

    with pytest.raises(PacsError) as raised:
        Pacs.for_source(proxied_source).search_studies(filters={"PatientID": "PID1"}, limit=5, offset=0)

    assert "502" in raised.value.message
    assert len(proxy.script.seen) == 3
    assert "PID1" not in caplog.text
    assert "PID1" not in raised.value.message


def test_missing_series_is_not_found_and_not_retried(study, proxy, proxied_source, quick_retries):
    with pytest.raises(PacsNotFound):
        Pacs.for_source(proxied_source).series_metadata(study.study_uid, "1.2.3.999")

    assert len(proxy.script.seen) == 1


def test_a_refused_request_is_not_retried(study, proxy, proxied_source, quick_retries):
    proxy.script.fail_next, proxy.script.fail_status = 1, 400

    with pytest.raises(PacsRequestRejected):
        Pacs.for_source(proxied_source).search_series(study.study_uid)

    assert len(proxy.script.seen) == 1


def test_unreachable_pacs_is_a_pacs_error(quick_retries):
    source = DicomWebSource.objects.create(name="gone", url="http://127.0.0.1:9/dicom-web")

    with pytest.raises(PacsError, match="cannot be reached"):
        Pacs.for_source(source).search_studies(filters={}, limit=1, offset=0)


def test_retrieval_returns_the_stored_transfer_syntax(study, proxy, proxied_source):
    series_uid = study.series[0].series_uid

    datasets = Pacs.for_source(proxied_source).retrieve_series(study.study_uid, series_uid)

    assert len(datasets) == 3
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {"1.2.840.10008.1.2.1"}


def test_bearer_token_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("TRIAGE_PACS_TOKEN", "s3cret")
    source = DicomWebSource(name="t", url="http://127.0.0.1:9", token_env="TRIAGE_PACS_TOKEN")

    assert session_for_source(source).headers["Authorization"] == "Bearer s3cret"


def test_basic_credentials_come_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("TRIAGE_PACS_PASSWORD", "pw")
    source = DicomWebSource(name="b", url="http://127.0.0.1:9", username="triage", password_env="TRIAGE_PACS_PASSWORD")

    assert session_for_source(source).auth == ("triage", "pw")

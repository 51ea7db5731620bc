"""Fixtures shared by the triage tests: PACS sources (direct and behind a fault-injecting proxy), a stand-in for the
networks, the EMR endpoint, and clients for a site admin and a radiologist."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.triage.fhir_helpers import PATIENT_SYSTEM
from tests.triage.ingest_helpers import FakeRunner
from tools.faultproxy import FaultProxy


@pytest.fixture(autouse=True)
def fresh_throttle_counts():
    """The token endpoint's throttle counts requests per client in the cache; each test starts from zero."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def fake_models(monkeypatch):
    """In-process tests: a deterministic stand-in for the networks (the runner has its own tests)."""
    from triage.ingest import pipeline, runners

    FakeRunner.calls = []
    monkeypatch.setattr(runners, "runner_load", lambda *, finding, **_: FakeRunner(finding))
    monkeypatch.setattr(pipeline, "key_image", lambda *, volume, output: b"\x89PNG fake")
    return FakeRunner


@pytest.fixture
def pacs_source(db, orthanc):
    from triage.models import DicomWebSource

    return DicomWebSource.objects.create(name="pacs", url=orthanc.dicomweb_url)


@pytest.fixture
def proxy(orthanc_server) -> Iterator[FaultProxy]:
    server = FaultProxy(orthanc_server.url).start()
    yield server
    server.stop()


@pytest.fixture
def proxied_source(db, orthanc, proxy):
    from triage.models import DicomWebSource

    return DicomWebSource.objects.create(name="pacs", url=proxy.dicomweb_url)


@pytest.fixture
def quick_retries(settings):
    """Backoffs short enough for a test, the same code paths as production."""
    settings.TRIAGE_PACS_RETRY_BASE_SECONDS = 0.0
    settings.TRIAGE_PACS_HTTP_ATTEMPTS = 3
    settings.TRIAGE_HTTP_TIMEOUT_SECONDS = 1.0
    return settings


@pytest.fixture
def no_settle(settings):
    """Studies uploaded whole before their job runs: nothing to wait for (the settle tests set their own)."""
    settings.TRIAGE_STUDY_SETTLE_SECONDS = 0
    return settings


@pytest.fixture
def fhir_emr(fhir_server):
    fhir_server.clear()
    return fhir_server


@pytest.fixture
def endpoint(db, fhir_emr, settings):
    """The EMR as a configured endpoint (not from the environment), identifying patients in ``PATIENT_SYSTEM``."""
    from triage.models import FhirEndpoint

    settings.TRIAGE_FHIR_BASE_URL = None
    return FhirEndpoint.objects.create(
        name="emr", base_url=fhir_emr.base_url, patient_id_system=PATIENT_SYSTEM, timeout_seconds=5
    )


@pytest.fixture
def site_admin(db):
    """An admin by role (not superuser): the role alone carries the permissions."""
    from tests.factories import UserFactory
    from triage.core import services

    user = UserFactory(username="siteadmin", role="radiologist")
    return services.user_role_set(user=user, role="admin", actor=None)


@pytest.fixture
def admin_web(site_admin):
    from django.test import Client

    client = Client()
    client.force_login(site_admin)
    return client


@pytest.fixture
def rad_web(radiologist):
    from django.test import Client

    client = Client()
    client.force_login(radiologist)
    return client


def _test_card() -> dict:
    """A small ICH model card, version 1.0: sensitivity and specificity 0.94 at 0.5, so 10-28% flagged at 5-25%
    prevalence. Negatives score low and positives high on ten bins of 0.1."""
    negatives = [40, 30, 15, 5, 4, 3, 2, 1, 0, 0]
    positives = [0, 0, 1, 2, 3, 4, 5, 10, 25, 50]
    counts = [n + p for n, p in zip(negatives, positives, strict=True)]
    point = {"sensitivity": {"estimate": 0.94, "low": 0.87, "high": 0.97},
             "specificity": {"estimate": 0.94, "low": 0.87, "high": 0.97}}  # fmt: skip
    return {
        "name": "ich-test",
        "version": "1.0",
        "finding": "ich",
        "threshold": 0.5,
        "validation": {
            "operating_point": point,
            "calibration": {
                "bin_edges": [i / 10 for i in range(11)],
                "counts": counts,
                "observed_rate": [p / c if c else None for p, c in zip(positives, counts, strict=True)],
            },
        },
    }


@pytest.fixture
def model_card(settings, tmp_path):
    """The test card as the only card in TRIAGE_MODEL_DIR (the shipped cards name other versions)."""
    import json

    card = _test_card()
    (tmp_path / "ich-test.card.json").write_text(json.dumps(card), encoding="utf-8")
    settings.TRIAGE_MODEL_DIR = str(tmp_path)
    return card

"""Shared fixtures: real services (Orthanc, Redis) started on loopback ports for the session, users and clients.

PostgreSQL is started by ``make test`` (tools/testrun.py) and reached through DATABASE_URL; without it the suite
runs on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """PBKDF2's deliberate slowness costs about a second per test user; tests need no strong hashes."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def orthanc_server(service_dir: Path) -> Iterator:
    """One Orthanc with DICOMweb for the session; tests that need an empty PACS call ``orthanc.clear()``."""
    from tools.orthanc import OrthancServer

    server = OrthancServer(service_dir / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server):
    orthanc_server.clear()
    return orthanc_server


@pytest.fixture(scope="session")
def redis_server(service_dir: Path) -> Iterator:
    from tools.redis import RedisServer

    server = RedisServer(service_dir / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fhir_server(service_dir: Path) -> Iterator:
    """One in-memory FHIR R4 server (the EMR side) for the session; tests that need it empty call ``clear()``."""
    from tools.fhirserver import FhirServer

    server = FhirServer(service_dir / "fhir").start()
    yield server
    server.stop()


@pytest.fixture
def radiologist(db):
    from tests.factories import UserFactory

    return UserFactory(username="rad1", role="radiologist")


@pytest.fixture
def admin_user(db):
    from tests.factories import UserFactory

    return UserFactory(username="admin1", role="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def radiologist_client(api_client, radiologist):
    api_client.force_authenticate(radiologist)
    return api_client


@pytest.fixture
def admin_client_api(admin_user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(admin_user)
    return client

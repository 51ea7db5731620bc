"""Shared fixtures: real services (Orthanc, Redis, FHIR) started on loopback ports for the session, users and
clients, and for the browser tests a daphne server on the test database and Chromium.

PostgreSQL is started by ``make test`` (tools/testrun.py) and reached through DATABASE_URL; without it the suite
runs on SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


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
def viewer_orthanc_server(service_dir: Path) -> Iterator:
    """An Orthanc with DICOMweb and the Orthanc Web Viewer plugin (Debian orthanc-webviewer), for the viewer tests."""
    from tools.orthanc import WEBVIEWER_PLUGIN, OrthancServer

    if not Path(WEBVIEWER_PLUGIN).exists():
        pytest.skip("the Orthanc Web Viewer is not installed: apt-get install -y orthanc-webviewer")
    server = OrthancServer(service_dir / "orthanc-viewer", plugins=[WEBVIEWER_PLUGIN]).start()
    yield server
    server.stop()


@pytest.fixture
def viewer_orthanc(viewer_orthanc_server):
    viewer_orthanc_server.clear()
    return viewer_orthanc_server


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


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    return f"postgres://{quote(db['USER'])}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def live_server_url(transactional_db, redis_server, settings, tmp_path) -> Iterator[str]:
    """daphne (WebSockets) in a subprocess on the test database, the Redis channel layer between it and this process."""
    from channels.layers import channel_layers
    from django.db import connection

    from tools.procs import free_port, port_open, wait_until

    if connection.vendor != "postgresql":
        pytest.skip("the server process shares the test database only on PostgreSQL")
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [redis_server.url]}}
    }
    channel_layers.backends.clear()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": redis_server.url, "TRIAGE_DEBUG": "1"}
    log = (tmp_path / "daphne.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "triage.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_open(port), timeout=30, what="daphne")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
        channel_layers.backends.clear()


@pytest.fixture
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()

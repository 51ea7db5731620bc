"""The write-back worker killed mid-run, then restarted: the PACS holds one SR series and one key image series per
triaged study, each with one instance, none duplicated.

Runs ``manage.py triage_writeback`` as a subprocess against the test database (committed rows, PostgreSQL only) and
a real Orthanc behind a small proxy that lets one STOW-RS reach Orthanc and then holds its answer: the worker is
killed while the PACS holds that version and the app has no acknowledgement, the hardest moment to restart from.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.db import connection
from django.utils import timezone

from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from tests.triage.writeback_helpers import result_recorded, write_back_source
from tools.procs import free_port, wait_until
from triage.models import WritebackMessage, WritebackState
from triage.writeback.documents import version_uids

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STUDIES = 4
HELD_STORE = 2  # the second STOW-RS of the run is stored by the PACS, and the worker dies waiting for its answer
WORKER = ["triage_writeback", "--batch", "20", "--idle", "0.2"]


class StowHoldingProxy:
    """Forwards every request to Orthanc; the ``hold``-th STOW-RS is stored, then its answer waits for ``release``."""

    def __init__(self, upstream: str, *, hold: int) -> None:
        self.upstream, self.hold, self.stores = upstream.rstrip("/"), hold, 0
        self.held = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _store_number(self) -> int:
        with self.lock:
            self.stores += 1
            return self.stores

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                self._forward("GET", None)

            def do_POST(self) -> None:
                body = self._body()
                number = proxy._store_number()
                self._forward("POST", body, hold=number == proxy.hold)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length", 0)))
                chunks = []
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)

            def _forward(self, method: str, body: bytes | None, *, hold: bool = False) -> None:
                skip = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                upstream = requests.request(method, proxy.upstream + self.path, data=body, headers=headers, timeout=60)
                if hold:
                    proxy.held.set()
                    proxy.release.wait(timeout=120)
                kept = {k: v for k, v in upstream.headers.items() if k.lower() not in skip}
                try:
                    self.send_response(upstream.status_code)
                    for key, value in kept.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(upstream.content)))
                    self.end_headers()
                    self.wfile.write(upstream.content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the worker was killed while it waited

        return Handler


def database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s["PASSWORD"] else ""
    return f"postgres://{s['USER']}{password}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.fixture
def stow_proxy(orthanc) -> Iterator[StowHoldingProxy]:
    proxy = StowHoldingProxy(orthanc.url, hold=HELD_STORE)
    yield proxy
    proxy.stop()


@pytest.fixture
def workers(transactional_db) -> Iterator:
    if connection.vendor != "postgresql":
        pytest.skip("the worker subprocess needs a database it can share (PostgreSQL)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_DICOMWEB")}
    env |= {"DATABASE_URL": database_url(), "TRIAGE_DEBUG": "1", "TRIAGE_LOG_LEVEL": "WARNING"}
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "manage.py", *WORKER], cwd=ROOT, env=env, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
    connection.close()


def series_in_pacs(orthanc, study_uid: str) -> dict[str, list[list[str]]]:
    """Modality → one list of SOP Instance UIDs per series of the study, as the PACS answers QIDO-RS."""
    found: dict[str, list[list[str]]] = {}
    for series in requests.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series", timeout=10).json():
        uid, modality = series["0020000E"]["Value"][0], series["00080060"]["Value"][0]
        instances = requests.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{uid}/instances", timeout=10)
        found.setdefault(modality, []).append(sorted(i["00080018"]["Value"][0] for i in instances.json()))
    return found


def states() -> list[str]:
    return sorted(WritebackMessage.objects.values_list("state", flat=True))


def test_sop_instance_uids_are_the_same_on_every_attempt_and_new_for_each_version():
    first = version_uids(study_instance_uid="1.2.3", finding="ich", result_id=5, version=1)
    again = version_uids(study_instance_uid="1.2.3", finding="ich", result_id=5, version=1)
    amended = version_uids(study_instance_uid="1.2.3", finding="ich", result_id=6, version=2)

    assert first == again
    assert (amended.sr_series, amended.sc_series) == (first.sr_series, first.sc_series)
    assert len({first.sr_instance, first.sc_instance, amended.sr_instance, amended.sc_instance}) == 4


def test_a_worker_killed_mid_run_and_restarted_leaves_one_sr_and_one_key_image_series_per_study(
    orthanc, stow_proxy, workers
):
    source = write_back_source(stow_proxy.dicomweb_url)
    specs = [upload_study(orthanc, StudySpec(accession=f"W{i}", series=[SeriesSpec(slices=4)])) for i in range(STUDIES)]
    for spec in specs:
        result_recorded(source, study_uid=spec.study_uid, series_uid=spec.series[0].series_uid, key_slice=1)

    doomed = workers()
    assert stow_proxy.held.wait(timeout=90), "the worker never stored a second version"
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    stow_proxy.release.set()
    mid_run = states()
    in_pacs_mid_run = sum("SR" in series_in_pacs(orthanc, spec.study_uid) for spec in specs)
    # The dead worker's leases run out (4 x the HTTP timeout + 30 s); fast-forwarded rather than waited for.
    WritebackMessage.objects.filter(state=WritebackState.SENDING).update(lease_expires_at=timezone.now())
    survivor = workers()
    wait_until(lambda: states() == [WritebackState.SENT] * STUDIES, timeout=120, what="every version stored")
    os.killpg(survivor.pid, signal.SIGTERM)
    survivor.wait(timeout=15)

    assert mid_run == [WritebackState.SENDING] * (STUDIES - 1) + [WritebackState.SENT]
    assert in_pacs_mid_run == HELD_STORE  # the PACS held one version more than the app knew of
    for message in WritebackMessage.objects.select_related("study"):
        found = series_in_pacs(orthanc, message.study.study_instance_uid)
        assert found["SR"] == [[message.sr_instance_uid]]
        assert found["OT"] == [[message.sc_instance_uid]]
        assert len(found["CT"]) == 1
    assert sorted(WritebackMessage.objects.values_list("attempts", flat=True)) == [1, 2, 2, 2]

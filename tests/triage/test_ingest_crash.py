"""A real task worker killed with SIGKILL in the middle of a retrieval: every study still finishes exactly once.

Runs ``manage.py db_worker`` and ``manage.py triage_poll`` as subprocesses against the test database, so the rows
must be committed (``transactional_db``) and the database shared: PostgreSQL only (pytest-django's SQLite test
database lives in memory).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from tests.triage.dicom_build import StudySpec
from tests.triage.ingest_helpers import upload_study
from triage.ingest.services import study_request_triage
from triage.models import AuditEvent, DicomWebSource, JobState, TriageJob, TriageResult

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s["PASSWORD"] else ""
    return f"postgres://{s['USER']}{password}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.fixture
def untrained_weights(tmp_path: Path) -> Path:
    """Real networks with random weights: the runner's code path, at test speed."""
    import torch

    from inference.networks import DEFAULT_ARCHITECTURE, build_network

    torch.manual_seed(0)
    for finding, architecture in DEFAULT_ARCHITECTURE.items():
        torch.save(build_network(architecture).state_dict(), tmp_path / f"{architecture}.pt")
        card = {"architecture": architecture, "name": f"{finding}-untrained", "version": "test", "threshold": 0.5}
        (tmp_path / f"{architecture}.card.json").write_text(json.dumps(card))
    return tmp_path


@pytest.fixture
def processes(untrained_weights: Path) -> Iterator:
    if connection.vendor != "postgresql":
        pytest.skip("the worker subprocess needs a database it can share (PostgreSQL)")
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "TRIAGE_DEBUG": "1",
        "TRIAGE_JOB_LEASE_SECONDS": "2",
        "TRIAGE_POLL_SECONDS": "0.5",
        "TRIAGE_PACS_RETRY_BASE_SECONDS": "0",
        "TRIAGE_STUDY_SETTLE_SECONDS": "0",
        "TRIAGE_MODEL_DIR": str(untrained_weights),
        "TRIAGE_LOG_LEVEL": "WARNING",
    }
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, start_new_session=True
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
    connection.close()


def all_final(count: int) -> bool:
    return TriageJob.objects.filter(state__in=[JobState.DONE, JobState.REJECTED, JobState.FAILED]).count() == count


def wait_for(check, *, timeout: float) -> bool:
    """Wait on a database condition that another process makes true (no event crosses the process boundary)."""
    done = threading.Event()
    deadline = timeout
    while deadline > 0:
        if check():
            return True
        done.wait(0.2)
        deadline -= 0.2
    return check()


WORKER = ["db_worker", "--queue-name", "ingest", "--interval", "0.1", "--no-startup-delay", "--no-reload"]


def test_worker_killed_during_retrieval_leaves_every_study_done_exactly_once(
    transactional_db,
    orthanc,
    proxy,
    processes,
):
    DicomWebSource.objects.create(name="pacs", url=proxy.dicomweb_url)
    specs = [upload_study(orthanc, StudySpec(accession=f"K{i}")) for i in range(3)]
    for spec in specs:
        study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")
    proxy.script.gate_retrievals = True

    first = processes(*WORKER, "--worker-id", "doomed")
    assert proxy.script.retrieval_started.wait(timeout=60), "the worker never started a retrieval"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    proxy.script.gate_retrievals = False
    proxy.script.gate.set()
    interrupted = TriageJob.objects.get(state=JobState.FETCHING)
    processes(*WORKER, "--worker-id", "survivor")
    processes("triage_poll", "--no-poll")

    assert wait_for(lambda: all_final(3), timeout=120), list(TriageJob.objects.values("state", "error_code"))
    interrupted.refresh_from_db()
    assert set(TriageJob.objects.values_list("state", flat=True)) == {JobState.DONE}
    assert interrupted.attempts == 2
    for spec in specs:
        assert TriageResult.objects.filter(study__study_instance_uid=spec.study_uid).count() == 1
    assert AuditEvent.objects.filter(action="results.recorded").count() == 3

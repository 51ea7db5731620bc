"""The ingest worker (``manage.py triage_ingest``): db_worker made ready before its first study."""

from __future__ import annotations

import logging
import platform
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django_tasks_db.models import DBTaskResult

from tests.factories import JobFactory
from triage.core.exceptions import ModelUnavailable
from triage.ingest import jobs, runners
from triage.management.commands import triage_ingest
from triage.models import JobState, ModelConfig

ROOT = Path(__file__).resolve().parents[2]
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Record each model the worker loads instead of loading it."""
    loaded: list[str] = []

    def fake_load(*, finding: str, **_: object) -> object:
        loaded.append(finding)
        return object()

    monkeypatch.setattr(runners, "runner_load", fake_load)
    return loaded


@pytest.fixture
def worker_signals_restored() -> Iterator[None]:
    """db_worker installs its own SIGINT/SIGTERM handlers; give pytest its own back afterwards."""
    signums = [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT]
    saved = {signum: signal.getsignal(signum) for signum in signums}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.django_db
def test_preload_loads_every_enabled_model(loads):
    assert runners.runners_preload() == ["ich", "lvo"]
    assert loads == ["ich", "lvo"]


@pytest.mark.django_db
def test_preload_skips_a_disabled_model(loads):
    ModelConfig.objects.create(finding="lvo", enabled=False, name="lvo3d-v1", version="1.1.0", threshold=0.5)

    assert runners.runners_preload() == ["ich"]


@pytest.mark.django_db
def test_a_model_that_cannot_be_loaded_is_left_to_the_job(monkeypatch, caplog):
    def broken(*, finding: str, **_: object) -> object:
        raise ModelUnavailable(finding, "weights_missing", "No file")

    monkeypatch.setattr(runners, "runner_load", broken)
    with caplog.at_level(logging.WARNING, logger="triage.ingest.runners"):
        assert runners.runners_preload() == []
    assert "not loaded at start-up" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_ingest_worker_loads_its_models_then_runs_queued_jobs(loads, worker_signals_restored, monkeypatch):
    # The memory setting would last for the rest of this test process; the tests below check it in their own.
    monkeypatch.setattr(triage_ingest, "memory_keep_freed", lambda: True)
    # A study with no DICOMweb source: the job ends failed with a recorded reason, no PACS involved.
    job = JobFactory(study__source=None)
    task_id = jobs.job_enqueue(job_id=job.pk)

    call_command(
        "triage_ingest", "--batch", "--queue-name", "ingest", "--interval", "0", "--no-startup-delay",
        "--no-reload", "--worker-id", "ingest-test", verbosity=0,
    )  # fmt: skip

    job.refresh_from_db()
    assert loads == ["ich", "lvo"]
    assert (DBTaskResult.objects.get(id=task_id).status, job.state) == ("SUCCESSFUL", JobState.FAILED)


# Allocate and free a 256 MiB array, then print how much of it the process still holds (MiB).
_KEPT_SCRIPT = """
import sys
import numpy as np
from triage.core.workers import memory_keep_freed
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "keep":
    assert memory_keep_freed()
before = rss_mib()
block = np.ones(64 * 2**20, dtype=np.float32)
del block
print(round(rss_mib() - before))
"""


def _held_after_free(mode: str) -> int:
    command = [sys.executable, "-c", _KEPT_SCRIPT, mode]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@glibc_only
def test_a_worker_keeps_freed_memory_for_the_next_study():
    assert _held_after_free("keep") >= 200


@glibc_only
def test_by_default_freed_memory_goes_back_to_the_kernel():
    assert _held_after_free("default") < 50

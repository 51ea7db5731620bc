"""Fixtures and helpers shared by the ingest tests (imported by name into each test module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import requests

from tests.triage.dicom_build import StudySpec, study_datasets, to_bytes
from tests.triage.pacs_proxy import PacsProxy


def upload_study(orthanc, spec: StudySpec, *, mutate: Callable | None = None) -> StudySpec:
    """Store a synthetic study in Orthanc; ``mutate(index, dataset)`` may alter or drop (return None) an instance."""
    for index, ds in enumerate(study_datasets(spec)):
        if mutate is not None:
            ds = mutate(index, ds)
            if ds is None:
                continue
        body = ds if isinstance(ds, bytes) else to_bytes(ds)
        requests.post(f"{orthanc.url}/instances", data=body, timeout=30).raise_for_status()
    return spec


@dataclass
class FakeOutput:
    """The fields of inference.runner.TriageOutput that the pipeline and results_record use."""

    finding: str
    model_name: str
    model_version: str
    score: float
    threshold: float
    positive: bool
    key_slice: int = 0
    box: list | None = None
    heatmap: object = None
    heatmap_extent: list | None = None
    timings: dict | None = None
    advisory: bool = True

    def as_dict(self) -> dict:
        return {"finding": self.finding, "key_slice": self.key_slice, "box": self.box, "timings": self.timings or {}}


class FakeRunner:
    """Stands in for a loaded model: scores a volume by its mean HU so results depend on the pixels received."""

    threshold = 0.5
    calls: list[tuple] = []

    def __init__(self, finding: str) -> None:
        self.finding = finding

    def run(self, volume_hu: np.ndarray, spacing_mm: tuple) -> FakeOutput:
        FakeRunner.calls.append((self.finding, volume_hu.shape))
        score = float(np.clip((volume_hu.mean() + 1000.0) / 2000.0, 0, 1))
        return FakeOutput(self.finding, "fake", "1.0", score, self.threshold, score >= self.threshold)


@pytest.fixture
def fake_models(monkeypatch):
    """In-process tests: a deterministic stand-in for the networks (the runner has its own tests)."""
    from triage.ingest import pipeline

    FakeRunner.calls = []
    monkeypatch.setattr(pipeline, "runner_get", lambda *, finding, **_: FakeRunner(finding))
    monkeypatch.setattr(pipeline, "key_image", lambda *, volume, output: b"\x89PNG fake")
    return FakeRunner


@pytest.fixture
def pacs_source(db, orthanc):
    from triage.models import DicomWebSource

    return DicomWebSource.objects.create(name="pacs", url=orthanc.dicomweb_url)


@pytest.fixture
def proxy(orthanc_server) -> Iterator[PacsProxy]:
    server = PacsProxy(orthanc_server.url).start()
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

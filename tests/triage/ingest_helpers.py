"""Helpers shared by the ingest tests: a study uploaded to Orthanc, a stand-in for the model runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import requests

from tests.triage.dicom_build import StudySpec, study_datasets, to_bytes


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

"""Results written back to a real Orthanc the way the app does it: a stored result, its outbox version, one delivery."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
from django.utils import timezone
from PIL import Image

from tests.factories import ResultFactory
from triage.ingest.dicomweb import client_for_source
from triage.models import DicomWebSource, Series, Study, TriageResult, WritebackMessage, WritebackState
from triage.writeback.delivery import writeback_deliver_due
from triage.writeback.outbox import writeback_enqueue


def grey_png(height: int = 48, width: int = 64, level: int = 200) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), level, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_back_source(url: str, name: str = "pacs") -> DicomWebSource:
    source, _ = DicomWebSource.objects.update_or_create(name=name, defaults={"url": url, "write_back": True})
    return source


def result_recorded(
    source: DicomWebSource, *, study_uid: str, series_uid: str, key_slice: int, png: bytes | None = None, **fields
) -> TriageResult:
    """A current result for the study's series, queued for write-back in the same transaction as the app does."""
    study, _ = Study.objects.get_or_create(study_instance_uid=study_uid, defaults={"source": source})
    series, _ = Series.objects.get_or_create(study=study, series_instance_uid=series_uid)
    details = {"key_slice": key_slice, **fields.pop("details", {})}
    result = ResultFactory(series=series, details=details, key_image_png=png or grey_png(), **fields)
    writeback_enqueue(study=study, finding=result.finding)
    return result


def deliver_due() -> None:
    """One delivery round for every queued version, due or not."""
    WritebackMessage.objects.filter(state=WritebackState.PENDING).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    writeback_deliver_due(client_for=client_for_source)

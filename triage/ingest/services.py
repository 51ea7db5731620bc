"""Writes of the ingest layer: queueing a study, the default source, and recording a job's results.

``results_record`` owns the flow of a result: it stores it, syncs the study's worklist item and queues its reports,
all in one transaction, so a critical finding and its rank commit together.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction

from triage.core.audit import audit_record
from triage.core.exceptions import NotFound
from triage.fhir.outbox import outbox_enqueue_report
from triage.ingest.jobs import job_enqueue_on_commit, job_mark_complete
from triage.models import DicomWebSource, Series, Study, TriageJob, TriageResult, User
from triage.writeback.outbox import writeback_enqueue
from worklist.services import worklist_item_sync

if TYPE_CHECKING:
    from inference.runner import TriageOutput

logger = logging.getLogger(__name__)


def source_default() -> DicomWebSource | None:
    """The source a notification without a source name is for: ``default`` if it exists, else the first enabled."""
    sources = DicomWebSource.objects.filter(enabled=True)
    return sources.filter(name="default").first() or sources.order_by("id").first()


@transaction.atomic
def source_ensure_from_env() -> DicomWebSource | None:
    """Create or update the source named ``default`` from TRIAGE_DICOMWEB_URL; run at start-up by the workers."""
    url = settings.TRIAGE_DICOMWEB_URL
    if not url:
        return None
    source, _ = DicomWebSource.objects.update_or_create(
        name="default",
        defaults={
            "url": url.rstrip("/"),
            "username": settings.TRIAGE_DICOMWEB_USERNAME or "",
            "password_env": "TRIAGE_DICOMWEB_PASSWORD" if settings.TRIAGE_DICOMWEB_PASSWORD else "",
            "token_env": "TRIAGE_DICOMWEB_TOKEN" if settings.TRIAGE_DICOMWEB_TOKEN else "",
            "write_back": settings.TRIAGE_PACS_WRITE_BACK,
        },
    )
    return source


@transaction.atomic
def study_request_triage(
    *, study_instance_uid: str, source_name: str | None = None, actor: User | None = None, complete: bool = False
) -> TriageJob:
    """Queue a study once, however often the PACS hook and the poller report it.

    ``complete``: the sender (a PACS's stable-study hook) vouches that the study is complete, so the job skips the
    settle wait; a job already waiting to settle is released at once.
    """
    if source_name:
        source = DicomWebSource.objects.filter(name=source_name).first()
        if source is None:
            raise NotFound(f"No DICOMweb source is named {source_name!r}.")
    else:
        source = source_default()
    study, _ = Study.objects.get_or_create(study_instance_uid=study_instance_uid, defaults={"source": source})
    job, created = TriageJob.objects.get_or_create(study=study, defaults={"complete": complete})
    if created:
        data = {"source": getattr(source, "name", ""), "complete": complete}
        audit_record(action="study.queued", actor=actor, obj=job, data=data)
        job_enqueue_on_commit(job_id=job.pk)
    elif complete and not job.complete:
        job_mark_complete(job_id=job.pk)
    return job


# Fields of a runner's output that have their own columns; the rest goes into ``details``.
_RESULT_COLUMNS = {"finding", "model_name", "model_version", "score", "threshold", "positive", "heatmap", "advisory"}


def result_details(*, series: Series, output: TriageOutput) -> dict:
    """The output's fields that have no column of their own, in the shape the reports and the viewer read."""
    details = {k: v for k, v in output.as_dict().items() if k not in _RESULT_COLUMNS}
    details["series_instance_uid"] = series.series_instance_uid
    details["localisation"] = {"box": details.pop("box", None), "heatmap_extent": details.pop("heatmap_extent", None)}
    return details


@transaction.atomic
def results_record(*, job: TriageJob, outputs: list[tuple[Series, TriageOutput, bytes | None]]) -> list[TriageResult]:
    """Store a job's model outputs as the study's current results, then resync its worklist item and queue reports.

    ``outputs`` holds (series, inference.runner.TriageOutput, key image PNG). Earlier current results for the same
    finding stop being current in the same transaction, so a rerun amends rather than duplicates.
    """
    study = job.study
    results = []
    for series, output, png in outputs:
        TriageResult.objects.filter(study=study, finding=output.finding, is_current=True).update(is_current=False)
        results.append(
            TriageResult.objects.create(
                study=study,
                series=series,
                job=job,
                finding=output.finding,
                model_name=output.model_name,
                model_version=output.model_version,
                score=float(output.score),
                threshold=float(output.threshold),
                positive=bool(output.positive),
                details=result_details(series=series, output=output),
                key_image_png=png,
            )
        )
    audit_record(
        action="results.recorded",
        obj=job,
        data={"results": [{"finding": r.finding, "model": r.model_name, "version": r.model_version} for r in results]},
    )
    worklist_item_sync(study=study)
    for finding in sorted({r.finding for r in results}):
        outbox_enqueue_report(study=study, finding=finding)
        writeback_enqueue(study=study, finding=finding)
    return results

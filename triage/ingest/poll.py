"""Incremental QIDO-RS polling of each enabled source for CT studies.

The cursor (watermark, rolling sweep, paging probe): docs/architecture.md (Polling).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from triage.core.exceptions import TriageError
from triage.ingest.dicomweb import NUMBER_OF_STUDY_INSTANCES, Pacs, json_int, json_value
from triage.ingest.jobs import job_requeue_grown
from triage.ingest.services import study_request_triage
from triage.models import FINAL_JOB_STATES, DicomWebSource, Study, TriageJob

logger = logging.getLogger(__name__)

STUDY_UID = "0020000D"
LEGACY_PAGING = "offset_within_limit"
DATE_FORMAT = "%Y%m%d"
DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64


@dataclass
class PollReport:
    seen: int = 0
    queued: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    pages: int = 0
    skipped_invalid: int = 0
    error: str = ""


@dataclass
class Pager:
    pacs: Pacs
    page_size: int
    legacy: bool = False

    def page(self, filters: dict, offset: int, *, previous_full: bool) -> list[dict]:
        items = self._fetch(filters, offset, legacy=self.legacy)
        if not items and offset > 0 and previous_full and not self.legacy:
            items = self._fetch(filters, offset, legacy=True)
            if items:
                logger.info("the PACS counts limit from the first result; paging accordingly")
                self.legacy = True
        return items

    def _fetch(self, filters: dict, offset: int, *, legacy: bool) -> list[dict]:
        limit = offset + self.page_size if legacy else self.page_size
        return self.pacs.search_studies(
            filters=filters, limit=limit, offset=offset, fields=["NumberOfStudyRelatedInstances"]
        )[: self.page_size]


def _today() -> dt.date:
    return timezone.localdate()


def _date(text: str | None, default: dt.date) -> dt.date:
    try:
        return dt.datetime.strptime(text or "", DATE_FORMAT).date()
    except ValueError:
        return default


def uid_is_valid(uid: object) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters; the API and URLs address nothing else."""
    return isinstance(uid, str) and len(uid) <= MAX_UID_LENGTH and DICOM_UID.fullmatch(uid) is not None


def _uids(items: list[dict], report: PollReport) -> list[str]:
    found = [uid for uid in (json_value(item, STUDY_UID) for item in items) if uid]
    valid = [uid for uid in found if uid_is_valid(uid)]
    if len(valid) < len(found):
        # The count only: a malformed UID may carry whatever the sender put in it.
        logger.warning("skipped %d study(ies) whose StudyInstanceUID is not a valid DICOM UID", len(found) - len(valid))
        report.skipped_invalid += len(found) - len(valid)
    return valid


def _queue_new(source: DicomWebSource, items: list[dict], report: PollReport) -> None:
    uids = _uids(items, report)
    known = set(Study.objects.filter(study_instance_uid__in=uids).values_list("study_instance_uid", flat=True))
    for uid in uids:
        if uid in known:
            continue
        study_request_triage(study_instance_uid=uid, source_name=source.name)
        known.add(uid)
        report.queued.append(uid)
    _requeue_grown(items, report)


def _requeue_grown(items: list[dict], report: PollReport) -> None:
    """Queue again the finished studies that the PACS now holds more instances of than their job saw."""
    reported = {json_value(item, STUDY_UID): json_int(item, NUMBER_OF_STUDY_INSTANCES) for item in items}
    counts: dict[str, int] = {uid: count for uid, count in reported.items() if uid_is_valid(uid) and count}
    finished = TriageJob.objects.filter(
        study__study_instance_uid__in=list(counts), state__in=FINAL_JOB_STATES, instance_count__isnull=False
    ).values_list("pk", "study__study_instance_uid", "instance_count")
    for job_id, uid, seen in finished:
        if seen is not None and counts[uid] > seen and job_requeue_grown(job_id=job_id, instance_count=counts[uid]):
            logger.info("job %s queued again: the study grew from %d to %d instances", job_id, seen, counts[uid])
            report.requeued.append(uid)


def _scan_all(pager: Pager, source: DicomWebSource, filters: dict, report: PollReport) -> None:
    offset, previous_full = 0, False
    while True:
        items = pager.page(filters, offset, previous_full=previous_full)
        report.pages += 1
        report.seen += len(items)
        _queue_new(source, items, report)
        if len(items) < pager.page_size:
            return
        offset += len(items)
        previous_full = True


def _sweep_page(pager: Pager, source: DicomWebSource, filters: dict, offset: int, report: PollReport) -> int:
    """One page of the rolling sweep; returns the next offset (0 when the cycle is complete)."""
    items = pager.page(filters, offset, previous_full=offset > 0)
    report.pages += 1
    report.seen += len(items)
    _queue_new(source, items, report)
    return offset + len(items) if len(items) == pager.page_size else 0


def source_poll(*, source: DicomWebSource, pacs: Pacs | None = None) -> PollReport:
    """Find new CT studies on one source and queue each once. PACS failures are recorded on the source, not raised."""
    report = PollReport()
    cursor = dict(source.poll_cursor or {})
    legacy = cursor.get("paging") == LEGACY_PAGING
    today = _today()
    watermark = _date(cursor.get("watermark"), today)
    recent_from = watermark - dt.timedelta(days=settings.TRIAGE_POLL_OVERLAP_DAYS)
    pager: Pager | None = None
    try:
        pager = Pager(pacs or Pacs.for_source(source), settings.TRIAGE_POLL_PAGE_SIZE, legacy)
        _scan_all(pager, source, {"ModalitiesInStudy": "CT", "StudyDate": f"{recent_from:%Y%m%d}-"}, report)
        cursor["watermark"] = f"{today:%Y%m%d}"
        oldest = today - dt.timedelta(days=settings.TRIAGE_POLL_LOOKBACK_DAYS)
        if oldest < recent_from:
            sweep_to = recent_from - dt.timedelta(days=1)
            sweep = {"ModalitiesInStudy": "CT", "StudyDate": f"{oldest:%Y%m%d}-{sweep_to:%Y%m%d}"}
            cursor["sweep_offset"] = _sweep_page(pager, source, sweep, int(cursor.get("sweep_offset", 0)), report)
    except TriageError as err:
        report.error = err.message
    if pager is not None:
        legacy = pager.legacy
    cursor["paging"] = LEGACY_PAGING if legacy else "standard"
    _source_save_poll(source=source, cursor=cursor, error=report.error)
    return report


def _source_save_poll(*, source: DicomWebSource, cursor: dict, error: str) -> None:
    source.poll_cursor = cursor
    source.last_polled_at = timezone.now()
    source.last_error = error
    source.save(update_fields=["poll_cursor", "last_polled_at", "last_error"])
    if error:
        logger.warning("polling source %s failed: %s", source.pk, error)


def sources_poll() -> dict[str, PollReport]:
    """Poll every enabled source (the default one from the environment is ensured at start-up)."""
    return {source.name: source_poll(source=source) for source in DicomWebSource.objects.filter(enabled=True)}

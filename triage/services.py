"""Writes to the pipeline's clinical state. Each service is one transaction that writes its audit row."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from triage.exceptions import NotFound
from triage.models import AuditEvent, DicomWebSource, Study, TriageJob, User

logger = logging.getLogger(__name__)


def audit_record(*, action: str, actor: User | None = None, obj: Any = None, data: dict | None = None) -> AuditEvent:
    """Audit rows carry identifiers and values only; callers never pass patient data in ``data``."""
    actor_row = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        actor=actor_row,
        action=action,
        object_type=type(obj).__name__ if obj is not None else "",
        object_id=str(getattr(obj, "pk", "")) if obj is not None else "",
        data=data or {},
    )


def source_get_default() -> DicomWebSource | None:
    """The source named by TRIAGE_DICOMWEB_URL, created or updated to match the environment."""
    url = settings.TRIAGE_DICOMWEB_URL
    if not url:
        return DicomWebSource.objects.filter(enabled=True).order_by("id").first()
    source, _ = DicomWebSource.objects.update_or_create(
        name="default",
        defaults={
            "url": url.rstrip("/"),
            "username": settings.TRIAGE_DICOMWEB_USERNAME or "",
            "password_env": "TRIAGE_DICOMWEB_PASSWORD" if settings.TRIAGE_DICOMWEB_PASSWORD else "",
            "token_env": "TRIAGE_DICOMWEB_TOKEN" if settings.TRIAGE_DICOMWEB_TOKEN else "",
        },
    )
    return source


@transaction.atomic
def study_request_triage(
    *, study_instance_uid: str, source_name: str | None = None, actor: User | None = None
) -> TriageJob:
    """Queue a study once, however often the PACS hook and the poller report it."""
    if source_name:
        source = DicomWebSource.objects.filter(name=source_name).first()
        if source is None:
            raise NotFound(f"No DICOMweb source is named {source_name!r}.")
    else:
        source = source_get_default()
    study, _ = Study.objects.get_or_create(study_instance_uid=study_instance_uid, defaults={"source": source})
    job, created = TriageJob.objects.get_or_create(study=study)
    if created:
        audit_record(action="study.queued", actor=actor, obj=job, data={"source": getattr(source, "name", "")})
    return job


def worker_heartbeat(*, worker_id: str, kind: str) -> None:
    """Record that a worker process is alive; /readyz reads the newest beat."""
    from django.utils import timezone

    from triage.models import WorkerHeartbeat

    WorkerHeartbeat.objects.update_or_create(worker_id=worker_id, defaults={"kind": kind, "last_seen": timezone.now()})

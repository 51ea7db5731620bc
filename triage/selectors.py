"""Reads for the pipeline, already scoped to what the caller may see."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Max

from triage.models import WorkerHeartbeat


def worker_heartbeat_latest() -> datetime | None:
    return WorkerHeartbeat.objects.aggregate(latest=Max("last_seen"))["latest"]

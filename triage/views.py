"""Health endpoints: /healthz (process up) and /readyz (database and workers up)."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.db.utils import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from triage.core.selectors import task_queue_oldest_ready_enqueued_at, worker_heartbeat_latest

WORKER_HEARTBEAT_MAX_AGE = timedelta(seconds=60)
TASK_QUEUE_MAX_AGE = timedelta(seconds=300)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        return JsonResponse({"status": "unavailable", "reason": "database unreachable"}, status=503)
    now = timezone.now()
    beat = worker_heartbeat_latest()
    if beat is None or now - beat > WORKER_HEARTBEAT_MAX_AGE:
        return JsonResponse({"status": "unavailable", "reason": "no worker heartbeat in the last 60 s"}, status=503)
    oldest = task_queue_oldest_ready_enqueued_at()
    if oldest is not None and now - oldest > TASK_QUEUE_MAX_AGE:
        reason = f"task queue stalled: oldest task waiting {int((now - oldest).total_seconds())} s"
        return JsonResponse({"status": "unavailable", "reason": reason}, status=503)
    return JsonResponse({"status": "ok"})

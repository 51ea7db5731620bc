"""Health endpoints: /healthz (process up) and /readyz (database and workers up)."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.db.utils import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from triage.selectors import worker_heartbeat_latest

WORKER_HEARTBEAT_MAX_AGE = timedelta(seconds=60)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        return JsonResponse({"status": "unavailable", "reason": "database unreachable"}, status=503)
    beat = worker_heartbeat_latest()
    if beat is None or timezone.now() - beat > WORKER_HEARTBEAT_MAX_AGE:
        return JsonResponse({"status": "unavailable", "reason": "no worker heartbeat in the last 60 s"}, status=503)
    return JsonResponse({"status": "ok"})

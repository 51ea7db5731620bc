from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def worklist_page(request: HttpRequest) -> HttpResponse:
    config = {
        "username": request.user.get_username(),
        "api": "/api/v1/",
        "ws_path": "/ws/worklist/",
        "max_wait_minutes": settings.TRIAGE_MAX_WAIT_MINUTES,
        "ack_timeout_minutes": settings.TRIAGE_ACK_TIMEOUT_MINUTES,
        "page_size": 200,
    }
    return render(request, "worklist/worklist.html", {"worklist_config": config})

"""The escalation hook: a JSON POST an admin can point at a pager or chat webhook (TRIAGE_ESCALATION_WEBHOOK_URL).

The body names the worklist item, the advisory findings and a link, never the patient: whoever follows the link
logs in to see the study.
"""

from __future__ import annotations

import logging

import requests
from django.conf import settings

from triage.models import TriageResult
from worklist.models import WorklistItem

logger = logging.getLogger(__name__)


def item_link(item: WorklistItem) -> str:
    base = settings.TRIAGE_PUBLIC_URL or ""
    return f"{base.rstrip('/')}/?item={item.pk}"


def escalation_body(*, item: WorklistItem, findings: list[TriageResult]) -> dict:
    return {
        "event": "critical_finding_unacknowledged",
        "item_id": item.pk,
        "critical_since": item.critical_at.isoformat() if item.critical_at else None,
        "escalated_at": item.escalated_at.isoformat() if item.escalated_at else None,
        "findings": [
            {
                "finding": r.finding,
                "model": r.model_name,
                "model_version": r.model_version,
                "score": round(r.score, 4),
                "threshold": r.threshold,
                "advisory": True,
            }
            for r in findings
        ],
        "link": item_link(item),
        "text": (
            f"Unacknowledged AI-flagged study (advisory) on the worklist: "
            f"{', '.join(f'{r.finding.upper()} score {r.score:.2f}' for r in findings)}. {item_link(item)}"
        ),
    }


def escalation_post(body: dict) -> bool:
    """POST after commit with a timeout; a failure is logged (the flag and event already reached the worklist)."""
    url = settings.TRIAGE_ESCALATION_WEBHOOK_URL
    if not url:
        return False
    try:
        response = requests.post(url, json=body, timeout=settings.TRIAGE_ESCALATION_WEBHOOK_TIMEOUT_SECONDS)
        response.raise_for_status()
    except requests.RequestException as err:
        logger.warning("escalation webhook failed for item %s: %s", body.get("item_id"), type(err).__name__)
        return False
    return True

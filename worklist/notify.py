"""The escalation hook: a JSON POST an admin can point at a pager or chat webhook (TRIAGE_ESCALATION_WEBHOOK_URL).

The body names the worklist item, the advisory findings and a link, never the patient: whoever follows the link
logs in to see the study. Only a 2xx answer counts as delivered; the escalation loop retries anything else
(``worklist.services.worklist_escalations_notify``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class WebhookOutcome:
    """One POST: delivered (a 2xx answer) or why not, in words that hold no patient data."""

    delivered: bool
    error: str = ""


def webhook_post(body: dict) -> WebhookOutcome:
    """POST once with a timeout; never raises for what the network or the receiver does. Redirects are not
    followed: a redirected POST would arrive as a GET without its body."""
    url = settings.TRIAGE_ESCALATION_WEBHOOK_URL
    if not url:
        return WebhookOutcome(delivered=False, error="TRIAGE_ESCALATION_WEBHOOK_URL is not set")
    try:
        response = requests.post(
            url, json=body, timeout=settings.TRIAGE_ESCALATION_WEBHOOK_TIMEOUT_SECONDS, allow_redirects=False
        )
    except requests.RequestException as err:
        return WebhookOutcome(delivered=False, error=f"Network error: {type(err).__name__}")
    if not 200 <= response.status_code < 300:
        return WebhookOutcome(delivered=False, error=f"HTTP {response.status_code}")
    return WebhookOutcome(delivered=True)


def escalation_post(body: dict) -> bool:
    """POST once, for notices that are not retried (model alerts); a failure is logged."""
    outcome = webhook_post(body)
    if not outcome.delivered:
        logger.warning("webhook post for %s failed: %s", body.get("event"), outcome.error)
    return outcome.delivered

"""Writes of the governance layer: moving a model's operating point and applying it to the open worklist; raising
and clearing model alerts."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from triage.core.audit import audit_record
from triage.core.exceptions import InvalidInput
from triage.fhir.outbox import outbox_enqueue_report
from triage.governance import metrics, monitoring
from triage.governance.validation import ground_truth_from_feedback
from triage.models import (
    AlertKind,
    DicomWebSource,
    Finding,
    ModelAlert,
    ModelConfig,
    ThresholdOverride,
    TriageResult,
    User,
)
from triage.writeback.outbox import writeback_enqueue
from worklist.models import ItemStatus
from worklist.notify import escalation_post
from worklist.services import worklist_items_resync

logger = logging.getLogger(__name__)

# Significance of the one-sided binomial tests of the flag rate; checked every poll cycle, so kept strict.
FLAG_RATE_ALPHA = 0.01


def _results_under_threshold(*, model_config: ModelConfig, source: DicomWebSource | None) -> QuerySet[TriageResult]:
    """Current results that the operating point governs: those of studies still to be read.

    A reported study keeps the threshold it was read under; re-flagging it would only amend a closed case.
    """
    results = TriageResult.objects.filter(finding=model_config.finding, is_current=True).exclude(
        study__worklist_item__status=ItemStatus.REPORTED
    )
    if source is not None:
        return results.filter(study__source=source)
    # The site-wide threshold does not govern sources that carry their own override.
    overridden = ThresholdOverride.objects.filter(model=model_config).values("source_id")
    return results.exclude(study__source_id__in=overridden)


def _threshold_store(
    *, model_config: ModelConfig, threshold: float | None, source: DicomWebSource | None
) -> tuple[float | None, float]:
    """Save the new operating point; returns (old, effective). ``threshold=None`` with a source drops its override."""
    if source is None:
        if threshold is None:
            raise InvalidInput("The site-wide threshold cannot be removed.")
        old: float | None = model_config.threshold
        model_config.threshold = threshold
        model_config.save(update_fields=["threshold", "updated_at"])
        return old, threshold
    override = ThresholdOverride.objects.select_for_update().filter(model=model_config, source=source).first()
    old = override.threshold if override else None
    if threshold is None:
        if override:
            override.delete()
        return old, model_config.threshold
    ThresholdOverride.objects.update_or_create(model=model_config, source=source, defaults={"threshold": threshold})
    return old, threshold


@transaction.atomic
def model_threshold_set(
    *,
    model_config: ModelConfig,
    threshold: float | None,
    actor: User | None,
    source: DicomWebSource | None = None,
) -> list[TriageResult]:
    """Move an operating point and apply it at once to every study still to be read.

    With ``source`` the per-source override is set (or removed when ``threshold`` is None). Current results are
    re-evaluated, open worklist items resynced, and an amended report queued for each study whose flag flipped.
    Returns the results whose ``positive`` flipped.
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InvalidInput(f"A threshold must lie between 0 and 1, got {threshold}.")
    model_config = ModelConfig.objects.select_for_update().get(pk=model_config.pk)
    # Feedback labels depend on the flag the radiologist saw; freeze them before the flag can change.
    ground_truth_from_feedback(finding=model_config.finding, actor=actor)
    old, new = _threshold_store(model_config=model_config, threshold=threshold, source=source)
    flipped = _results_reevaluate(model_config=model_config, threshold=new, source=source)
    audit_record(
        action="model.threshold_set",
        actor=actor,
        obj=model_config,
        data={
            "finding": model_config.finding,
            "source": source.name if source else None,
            "old": old,
            "new": threshold,
            "effective": new,
            "flipped": len(flipped),
        },
    )
    results_propagate(finding=model_config.finding, changed=flipped)
    model_alerts_check(finding=model_config.finding)
    return flipped


def _results_reevaluate(
    *, model_config: ModelConfig, threshold: float, source: DicomWebSource | None
) -> list[TriageResult]:
    results = list(_results_under_threshold(model_config=model_config, source=source).select_for_update(of=("self",)))
    flipped = []
    for result in results:
        positive = result.score >= threshold
        if positive != result.positive:
            flipped.append(result)
        result.threshold, result.positive = threshold, positive
    TriageResult.objects.bulk_update(results, ["threshold", "positive"])
    return flipped


def results_propagate(*, finding: str, changed: list[TriageResult], reason: str = "threshold_change") -> None:
    """Ranks and reports follow changed results (a new threshold; a promoted or rolled-back model version), inside
    the caller's transaction (both notify after commit): open items are re-ranked, each changed report amended."""
    worklist_items_resync(finding=finding)
    for result in changed:
        outbox_enqueue_report(study=result.study, finding=finding, reason=reason)
        writeback_enqueue(study=result.study, finding=finding, reason=reason)


# --- model alerts ------------------------------------------------------------------------------------------------

_VERDICT_KIND = {"high": AlertKind.FLAG_RATE_HIGH, "low": AlertKind.FLAG_RATE_LOW}


@transaction.atomic
def model_alerts_check(*, finding: str | None = None) -> list[ModelAlert]:
    """Test each finding's recent flag rate against its model card; raise or clear alerts. Returns those changed.

    Run by the poll loop every cycle and after a threshold change (inside that transaction).
    """
    changed: list[ModelAlert] = []
    for code in [finding] if finding else Finding.values:
        changed += _alerts_check(finding=code)
    return changed


def _alerts_check(*, finding: str) -> list[ModelAlert]:
    # The model's row serialises checkers of one finding (the poll loop and a threshold change).
    list(ModelConfig.objects.select_for_update().filter(finding=finding))
    window = monitoring.flag_rate_window(finding=finding, size=settings.TRIAGE_FLAG_RATE_WINDOW)
    if window is None:
        return []
    verdict, p_value = metrics.flag_rate_test(
        flagged=window.flagged,
        window=window.window,
        low=window.expected_low,
        high=window.expected_high,
        alpha=FLAG_RATE_ALPHA,
    )
    wanted = _VERDICT_KIND.get(verdict) if verdict else None
    changed = []
    for alert in ModelAlert.objects.select_for_update().filter(finding=finding, cleared_at__isnull=True):
        if alert.kind == wanted:
            wanted = None  # already open
        else:
            changed.append(_alert_clear(alert=alert, window=window))
    if wanted is not None:
        changed.append(_alert_raise(kind=wanted, window=window, p_value=p_value))
    return changed


def _alert_raise(*, kind: AlertKind, window: monitoring.FlagRateWindow, p_value: float) -> ModelAlert:
    alert = ModelAlert.objects.create(
        finding=window.finding,
        model_version=window.model_version,
        kind=kind,
        flagged=window.flagged,
        window=window.window,
        expected_low=window.expected_low,
        expected_high=window.expected_high,
        p_value=p_value,
    )
    audit_record(action="model.alert_raised", obj=alert, data=_alert_data(alert))
    logger.warning(
        "model alert %s: %s %s flagged %d of the last %d studies, the model card expects %.0f-%.0f%% (p=%.2g)",
        kind,
        window.finding,
        window.model_version,
        window.flagged,
        window.window,
        100 * window.expected_low,
        100 * window.expected_high,
        p_value,
    )
    body = _alert_body(alert, event="model_alert_raised")
    transaction.on_commit(lambda: escalation_post(body))
    return alert


def _alert_clear(*, alert: ModelAlert, window: monitoring.FlagRateWindow) -> ModelAlert:
    alert.cleared_at = timezone.now()
    alert.save(update_fields=["cleared_at"])
    audit_record(action="model.alert_cleared", obj=alert, data={**_alert_data(alert), "now_flagged": window.flagged})
    logger.info("model alert %s cleared: %s flagged %d of the last %d", alert.kind, alert.finding, window.flagged,
                window.window)  # fmt: skip
    body = _alert_body(alert, event="model_alert_cleared")
    transaction.on_commit(lambda: escalation_post(body))
    return alert


def _alert_data(alert: ModelAlert) -> dict:
    return {
        "finding": alert.finding,
        "model_version": alert.model_version,
        "kind": alert.kind,
        "flagged": alert.flagged,
        "window": alert.window,
        "expected_low": round(alert.expected_low, 4),
        "expected_high": round(alert.expected_high, 4),
        "p_value": alert.p_value,
    }


def _alert_body(alert: ModelAlert, *, event: str) -> dict:
    """The webhook's JSON: the alert's figures and a link to the monitoring page, never a study or a patient."""
    link = f"{(settings.TRIAGE_PUBLIC_URL or '').rstrip('/')}{reverse('console-monitoring')}?finding={alert.finding}"
    what = AlertKind(alert.kind).label.lower()
    return {
        "event": event,
        "alert_id": alert.pk,
        **_alert_data(alert),
        "link": link,
        "text": (
            f"AI model {alert.finding.upper()} {alert.model_version}: {what}, {alert.flagged} of the last "
            f"{alert.window} (the model card expects {alert.expected_low:.0%}-{alert.expected_high:.0%})"
            f"{'' if alert.cleared_at is None else '; cleared, the rate is plausible again'}. {link}"
        ),
    }

"""Writes of the governance layer: moving a model's operating point and applying it to the open worklist."""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet

from triage.core.audit import audit_record
from triage.core.exceptions import InvalidInput
from triage.fhir.outbox import outbox_enqueue_report
from triage.governance.validation import ground_truth_from_feedback
from triage.models import DicomWebSource, ModelConfig, ThresholdOverride, TriageResult, User
from worklist.models import ItemStatus
from worklist.services import worklist_items_resync


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
    _threshold_propagate(finding=model_config.finding, flipped=flipped)
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


def _threshold_propagate(*, finding: str, flipped: list[TriageResult]) -> None:
    """Ranks and reports follow the new flags, inside the same transaction (both notify after commit)."""
    worklist_items_resync(finding=finding)
    for result in flipped:
        outbox_enqueue_report(study=result.study, finding=finding, reason="threshold_change")

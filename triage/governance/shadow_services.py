"""Writes of shadow mode: registering a candidate version, withdrawing it, promoting it to live and rolling a
promotion back. Promotion and rollback re-evaluate the open worklist from stored scores and then follow the same
path as a threshold change (``services.results_propagate``): re-rank, amend the reports (docs/shadow-mode.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from inference.modelcard import read_card, sha256_file, shipped_card
from triage.core.audit import audit_record
from triage.core.exceptions import Conflict, InvalidInput, NotFound
from triage.core.selectors import threshold_for
from triage.governance.services import model_alerts_check, results_propagate
from triage.governance.shadow import shadow_latest_promoted, shadow_results_latest
from triage.governance.validation import ground_truth_from_feedback
from triage.ingest.runners import weights_path
from triage.models import Finding, ModelConfig, ShadowModel, ShadowState, TriageResult, User
from worklist.models import ItemStatus

LIVE_FIELDS = ("name", "version", "weights_path", "weights_sha256", "threshold")


@dataclass(frozen=True)
class Stored:
    """A score already computed for a study by the version becoming live, with what a result needs beside it."""

    series_id: int
    job_id: int | None
    model_name: str
    model_version: str
    score: float
    details: dict
    key_image_png: bytes | memoryview | None


# --- registration ------------------------------------------------------------------------------------------------


def _card_checked(*, finding: str, path: Path, digest: str) -> dict[str, Any]:
    try:
        card = read_card(path)
    except ValueError as err:
        raise InvalidInput(str(err)) from err
    if not card:
        raise InvalidInput(f"No model card beside the weights ({path.stem}.card.json).")
    if card.get("finding") not in (None, finding):
        raise InvalidInput(f"The card is for {card.get('finding')!r}, not {finding!r}.")
    if card.get("sha256") and str(card["sha256"]).lower() != digest:
        raise InvalidInput("The card's SHA-256 differs from the weights file's.")
    if not card.get("name") or not card.get("version"):
        raise InvalidInput("The card names no model name and version.")
    return card


def _json_safe(value: Any) -> Any:
    """The card as PostgreSQL's JSON takes it: non-finite numbers (a card may hold NaN) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _weights_checked(*, finding: str, path: str, sha256: str) -> tuple[Path, str]:
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InvalidInput("A SHA-256 is 64 hexadecimal characters.")
    resolved = Path(weights_path(finding=finding, configured=path.strip()) or "")
    if not path.strip() or not resolved.is_file():
        raise InvalidInput("No weights file at this path on this server.")
    if sha256_file(resolved) != digest:
        raise InvalidInput("The file's SHA-256 differs from this value.")
    return resolved, digest


@transaction.atomic(durable=True)
def shadow_register(
    *, finding: str, weights: str, sha256: str, actor: User | None, threshold: float | None = None
) -> ShadowModel:
    """Register weights on disk, pinned by SHA-256 and described by the card beside them, as the finding's shadow.

    The worker loads them on the next routed series; a version that cannot be loaded shows as failed runs.
    """
    if finding not in Finding.values:
        raise InvalidInput(f"Unknown finding {finding!r}.")
    path, digest = _weights_checked(finding=finding, path=weights, sha256=sha256)
    card = _card_checked(finding=finding, path=path, digest=digest)
    threshold = float(card.get("threshold", 0.5)) if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInput(f"A threshold must lie between 0 and 1, got {threshold}.")
    live = ModelConfig.objects.filter(finding=finding).first()
    if live is not None and live.version == str(card["version"]):
        raise InvalidInput(f"Version {live.version} is live already; a candidate needs a version of its own.")
    if ShadowModel.objects.select_for_update().filter(finding=finding, state=ShadowState.SHADOW).exists():
        raise Conflict("A shadow model is registered for this finding already; withdraw it first.")
    candidate = ShadowModel.objects.create(
        finding=finding, name=str(card["name"])[:64], version=str(card["version"])[:32], weights_path=weights.strip(),
        weights_sha256=digest, threshold=threshold, card=_json_safe(card), registered_by=actor,
    )  # fmt: skip
    audit_record(action="model.shadow_registered", actor=actor, obj=candidate, data=_identity(candidate))
    return candidate


@transaction.atomic(durable=True)
def shadow_withdraw(*, shadow_model_id: int, actor: User | None) -> ShadowModel:
    candidate = _candidate_locked(shadow_model_id)
    candidate.state, candidate.ended_at = ShadowState.WITHDRAWN, timezone.now()
    candidate.save(update_fields=["state", "ended_at"])
    audit_record(action="model.shadow_withdrawn", actor=actor, obj=candidate, data=_identity(candidate))
    return candidate


def _candidate_locked(shadow_model_id: int) -> ShadowModel:
    candidate = ShadowModel.objects.select_for_update().filter(pk=shadow_model_id).first()
    if candidate is None:
        raise NotFound("No such shadow model.")
    if candidate.state != ShadowState.SHADOW:
        raise Conflict(f"This version is {candidate.get_state_display().lower()}, not in shadow.", code="not_shadow")
    return candidate


def _identity(candidate: ShadowModel) -> dict[str, Any]:
    return {
        "finding": candidate.finding,
        "name": candidate.name,
        "version": candidate.version,
        "sha256": candidate.weights_sha256,
        "threshold": candidate.threshold,
    }


# --- promotion and rollback --------------------------------------------------------------------------------------


def _live_locked(finding: str) -> ModelConfig:
    """The finding's live configuration; the shipped card's, written down, where the site never configured one."""
    config = ModelConfig.objects.select_for_update().filter(finding=finding).first()
    if config is not None:
        return config
    card = shipped_card(finding)
    return ModelConfig.objects.create(
        finding=finding, name=str(card.get("name", finding))[:64], version=str(card.get("version", ""))[:32],
        threshold=float(card.get("threshold", 0.5)),
    )  # fmt: skip


def _live_snapshot(config: ModelConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in LIVE_FIELDS}


def _live_set(config: ModelConfig, values: dict[str, Any]) -> None:
    for name in LIVE_FIELDS:
        setattr(config, name, values[name])
    config.save(update_fields=[*LIVE_FIELDS, "updated_at"])


@transaction.atomic(durable=True)
def shadow_promote(*, shadow_model_id: int, actor: User | None) -> list[TriageResult]:
    """Make the shadow version live: the ModelConfig takes its weights, version and threshold (per-source overrides
    stay), open studies it has read take its stored result, and ranks and reports follow. Returns the new results."""
    candidate = _candidate_locked(shadow_model_id)
    config = _live_locked(candidate.finding)
    ground_truth_from_feedback(finding=candidate.finding, actor=actor)  # labels from the flags radiologists saw
    previous = _live_snapshot(config)
    _live_set(config, {name: getattr(candidate, name) for name in LIVE_FIELDS})
    candidate.state, candidate.promoted_at, candidate.previous_live = ShadowState.PROMOTED, timezone.now(), previous
    candidate.save(update_fields=["state", "promoted_at", "previous_live"])
    stored = {
        study_id: Stored(r.series_id, r.job_id, r.model_name, r.model_version, float(r.score or 0.0), r.details,
                         r.key_image_png)
        for study_id, r in shadow_results_latest(shadow_model=candidate).items()
    }  # fmt: skip
    return _switch(finding=candidate.finding, stored=stored, actor=actor, action="model.promoted", obj=candidate,
                   data={"from": _short(previous), "to": _short(_live_snapshot(config))})  # fmt: skip


@transaction.atomic(durable=True)
def model_rollback(*, finding: str, actor: User | None) -> list[TriageResult]:
    """Put back the live version the newest promotion replaced; open studies take that version's stored results."""
    config = ModelConfig.objects.select_for_update().filter(finding=finding).first()
    promoted = shadow_latest_promoted(finding=finding)
    if config is None or promoted is None or not promoted.previous_live:
        raise Conflict("No promotion of this finding's model to roll back.", code="nothing_to_roll_back")
    if (config.version, config.weights_sha256) != (promoted.version, promoted.weights_sha256):
        raise Conflict("The live model has changed since the promotion; roll back by hand.", code="live_changed")
    promoted = ShadowModel.objects.select_for_update().get(pk=promoted.pk)
    previous = promoted.previous_live
    ground_truth_from_feedback(finding=finding, actor=actor)
    _live_set(config, previous)
    promoted.state, promoted.ended_at = ShadowState.ROLLED_BACK, timezone.now()
    promoted.save(update_fields=["state", "ended_at"])
    stored = _stored_live_results(finding=finding, name=previous["name"], version=previous["version"])
    return _switch(finding=finding, stored=stored, actor=actor, action="model.rolled_back", obj=promoted,
                   data={"from": _short(_identity(promoted)), "to": _short(previous)})  # fmt: skip


def _short(values: dict[str, Any]) -> dict[str, Any]:
    return {k: values.get(k) for k in ("name", "version", "weights_sha256", "sha256", "threshold") if k in values}


def _stored_live_results(*, finding: str, name: str, version: str) -> dict[int, Stored]:
    """Study id → the newest result the restored version recorded for it (no longer current since the promotion)."""
    rows = TriageResult.objects.filter(finding=finding, model_name=name, model_version=version, is_current=False)
    stored = {}
    for r in rows.filter(study_id__in=_open_results(finding).values("study_id")).order_by("study_id", "id"):
        stored[r.study_id] = Stored(r.series_id, r.job_id, r.model_name, r.model_version, r.score, r.details,
                                    r.key_image_png)  # fmt: skip
    return stored


def _open_results(finding: str) -> Any:
    """Current results of studies still to be read: a reported study keeps the result it was read with."""
    return TriageResult.objects.filter(finding=finding, is_current=True).exclude(
        study__worklist_item__status=ItemStatus.REPORTED
    )


def _switch(
    *, finding: str, stored: dict[int, Stored], actor: User | None, action: str, obj: ShadowModel, data: dict
) -> list[TriageResult]:
    """Replace each open current result that has a stored score of the new live version, audit, and propagate."""
    replaced: list[TriageResult] = []
    flipped = kept = 0
    for old in _open_results(finding).select_for_update(of=("self",)).select_related("study__source").order_by("id"):
        source = stored.get(old.study_id)
        if source is None or (source.model_version, source.score) == (old.model_version, old.score):
            kept += 1
            continue
        new = _result_replace(old=old, source=source)
        flipped += new.positive != old.positive
        replaced.append(new)
    counts = {"replaced": len(replaced), "flipped": flipped, "kept": kept}
    audit_record(action=action, actor=actor, obj=obj, data={"finding": finding, **data, **counts})
    results_propagate(finding=finding, changed=replaced, reason=action.replace(".", "_"))
    model_alerts_check(finding=finding)
    return replaced


def _result_replace(*, old: TriageResult, source: Stored) -> TriageResult:
    threshold = threshold_for(finding=old.finding, source=old.study.source)
    threshold = old.threshold if threshold is None else threshold
    old.is_current = False
    old.save(update_fields=["is_current"])
    return TriageResult.objects.create(
        study=old.study, series_id=source.series_id, job_id=source.job_id, finding=old.finding,
        model_name=source.model_name, model_version=source.model_version, score=source.score, threshold=threshold,
        positive=source.score >= threshold, details=source.details, key_image_png=source.key_image_png,
    )  # fmt: skip

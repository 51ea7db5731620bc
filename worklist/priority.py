"""The reading-order rule, as plain functions (no database): docs/architecture.md (Reading order)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

LEVEL_ROUTINE = 0
LEVEL_HIGH = 1
LEVEL_ASAP = 2
LEVEL_STAT = 3
LEVEL_CRITICAL = 4
LEVELS = (LEVEL_ROUTINE, LEVEL_HIGH, LEVEL_ASAP, LEVEL_STAT, LEVEL_CRITICAL)
LEVEL_LABELS = {
    LEVEL_ROUTINE: "routine",
    LEVEL_HIGH: "high",
    LEVEL_ASAP: "asap",
    LEVEL_STAT: "stat",
    LEVEL_CRITICAL: "critical",
}

# Order priority codes seen in DICOM (RequestedProcedurePriority: STAT, HIGH, ROUTINE, MEDIUM, LOW),
# HL7 v2 ORC-7/TQ1-9 (S, A, R) and FHIR ServiceRequest.priority (routine, urgent, asap, stat).
_URGENCY_BY_CODE = {
    "STAT": LEVEL_STAT,
    "S": LEVEL_STAT,
    "ASAP": LEVEL_ASAP,
    "A": LEVEL_ASAP,
    "HIGH": LEVEL_HIGH,
    "URGENT": LEVEL_HIGH,
    "U": LEVEL_HIGH,
}

_LEVEL_WEIGHT = 1_000_000
_PINNED_WEIGHT = 100_000
_URGENCY_WEIGHT = 10_000
_SCORE_STEPS = 1000  # scores are compared to 1/1000; finer differences are noise


@dataclass(frozen=True)
class FindingScore:
    score: float
    positive: bool


class ResultLike(Protocol):
    score: float
    positive: bool

    @property
    def in_validated_range(self) -> bool: ...


def finding_score(result: ResultLike) -> FindingScore:
    """A finding raises priority only when positive on an input inside the model's validated ranges."""
    return FindingScore(score=result.score, positive=result.positive and result.in_validated_range)


@dataclass(frozen=True)
class PriorityInput:
    item_id: int
    received_at: datetime
    urgency: int = LEVEL_ROUTINE
    findings: tuple[FindingScore, ...] = ()
    pinned_level: int | None = None
    waiting: bool = True  # only items not yet claimed or reported can starve


def urgency_from_code(code: str | None) -> int:
    """Clinical urgency (0..3) from an order or DICOM priority code; unknown codes count as routine."""
    return _URGENCY_BY_CODE.get((code or "").strip().upper(), LEVEL_ROUTINE)


def critical_from(findings: Iterable[FindingScore]) -> bool:
    return any(f.positive for f in findings)


def level_for(*, urgency: int, findings: Iterable[FindingScore], pinned_level: int | None = None) -> int:
    if pinned_level is not None:
        return pinned_level
    return LEVEL_CRITICAL if critical_from(findings) else urgency


def sort_key(*, urgency: int, findings: Iterable[FindingScore], pinned_level: int | None = None) -> int:
    """One integer, higher read first, that orders items within the starving and non-starving tiers."""
    if pinned_level is not None and pinned_level not in LEVELS:
        raise ValueError(f"pinned level {pinned_level} is not one of {LEVELS}")
    if urgency not in LEVELS[:-1]:
        raise ValueError(f"urgency {urgency} is not between 0 and {LEVEL_STAT}")
    findings = tuple(findings)
    key = level_for(urgency=urgency, findings=findings, pinned_level=pinned_level) * _LEVEL_WEIGHT
    key += urgency * _URGENCY_WEIGHT
    if pinned_level is not None:
        return key + _PINNED_WEIGHT
    positive_scores = [f.score for f in findings if f.positive]
    if positive_scores:
        key += round(min(max(max(positive_scores), 0.0), 1.0) * _SCORE_STEPS)
    return key


def is_starving(*, received_at: datetime, now: datetime, max_wait: timedelta, waiting: bool = True) -> bool:
    return waiting and received_at < now - max_wait


def reading_order_key(item: PriorityInput, *, now: datetime, max_wait: timedelta) -> tuple:
    """A key for ``sorted``: ascending order is reading order. The database ordering mirrors it."""
    starving = is_starving(received_at=item.received_at, now=now, max_wait=max_wait, waiting=item.waiting)
    key = sort_key(urgency=item.urgency, findings=item.findings, pinned_level=item.pinned_level)
    return (not starving, -key, item.received_at, item.item_id)


def reading_order(items: Iterable[PriorityInput], *, now: datetime, max_wait: timedelta) -> list[PriorityInput]:
    return sorted(items, key=lambda item: reading_order_key(item, now=now, max_wait=max_wait))

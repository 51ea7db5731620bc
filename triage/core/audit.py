"""The audit log: one row per change of clinical state or configuration, written inside the change's transaction."""

from __future__ import annotations

from typing import Any

from triage.models import AuditEvent, User


def audit_record(*, action: str, actor: User | None = None, obj: Any = None, data: dict | None = None) -> AuditEvent:
    """Audit rows carry identifiers and values only; callers never pass patient data in ``data``."""
    actor_row = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        actor=actor_row,
        action=action,
        object_type=type(obj).__name__ if obj is not None else "",
        object_id=str(getattr(obj, "pk", "")) if obj is not None else "",
        data=data or {},
    )

"""Writes that belong to no one layer: users' roles and workers' heartbeats."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from triage.core.audit import audit_record
from triage.core.exceptions import InvalidInput
from triage.models import Role, User, WorkerHeartbeat


def worker_heartbeat(*, worker_id: str, kind: str) -> None:
    """Record that a worker process is alive; /readyz reads the newest beat."""
    WorkerHeartbeat.objects.update_or_create(worker_id=worker_id, defaults={"kind": kind, "last_seen": timezone.now()})


@transaction.atomic
def user_role_set(*, user: User, role: str, actor: User | None) -> User:
    """Change a user's role; staff status (Django admin access) follows it, and a radiologist is never superuser."""
    if role not in Role.values:
        raise InvalidInput(f"Unknown role {role!r}.")
    user = User.objects.select_for_update().get(pk=user.pk)
    old = {"role": user.role, "is_staff": user.is_staff, "is_superuser": user.is_superuser}
    user.role = role
    user.is_staff = role == Role.ADMIN
    if role != Role.ADMIN:
        user.is_superuser = False
    user.save(update_fields=["role", "is_staff", "is_superuser"])
    new = {"role": user.role, "is_staff": user.is_staff, "is_superuser": user.is_superuser}
    audit_record(action="user.role_set", actor=actor, obj=user, data={"old": old, "new": new})
    return user

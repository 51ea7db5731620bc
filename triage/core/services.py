"""Writes that belong to no one layer: users' roles, API tokens and workers' heartbeats."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS

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


# A token chosen by a caller (a PACS hook configured before the app starts) must be as hard to guess as ours.
MIN_CHOSEN_TOKEN_LENGTH = 32


@transaction.atomic(durable=True)
def token_create(*, user: User, ttl: timedelta | None = None, actor: User | None = None) -> str:
    """A new random API token for ``user``; only its digest is stored. Expired tokens of the user are dropped."""
    AuthToken.objects.filter(user=user, expiry__lt=timezone.now()).delete()
    row, token = AuthToken.objects.create(user=user, expiry=ttl or _token_ttl())
    audit_record(action="token.create", actor=actor or user, obj=user, data={"expiry": row.expiry.isoformat()})
    return token


@transaction.atomic(durable=True)
def token_register(*, user: User, token: str, ttl: timedelta | None = None, actor: User | None = None) -> None:
    """Store the digest of a token the caller generated (tools that must hand it to a PACS before the app runs)."""
    if len(token) < MIN_CHOSEN_TOKEN_LENGTH or not token.isalnum():
        raise InvalidInput(f"A chosen token needs at least {MIN_CHOSEN_TOKEN_LENGTH} letters and digits.")
    expiry = timezone.now() + (ttl or _token_ttl())
    AuthToken.objects.filter(user=user, expiry__lt=timezone.now()).delete()
    AuthToken.objects.filter(digest=hash_token(token)).delete()  # registering the same token again renews it
    digest, key = hash_token(token), token[: CONSTANTS.TOKEN_KEY_LENGTH]
    AuthToken(digest=digest, token_key=key, user=user, expiry=expiry).save(force_insert=True)
    audit_record(action="token.create", actor=actor or user, obj=user, data={"expiry": expiry.isoformat()})


def _token_ttl() -> timedelta:
    return timedelta(hours=settings.TRIAGE_TOKEN_TTL_HOURS)

"""Who may do what: the one definition of a site admin that the admin site and the console share."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from rest_framework.request import Request

from triage.models import User


def user_is_site_admin(user: Any) -> bool:
    """Admins hold the admin role (or are superusers) and are staff; is_staff follows the role (user_role_set)."""
    return bool(
        getattr(user, "is_authenticated", False)
        and user.is_active
        and user.is_staff
        and getattr(user, "is_triage_admin", False)
    )


def request_user(request: HttpRequest | Request) -> User:
    """The signed-in user of a request that a login check already guards; anyone else is refused."""
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied("Sign in first.")
    return user

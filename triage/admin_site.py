"""The admin site: triage admins only. A signed-in user without the admin role gets 403, not a login page."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from triage.core.permissions import user_is_site_admin

_View = TypeVar("_View", bound=Callable[..., Any])


class TriageAdminSite(admin.AdminSite):
    site_header = "CT triage administration"
    site_title = "CT triage admin"
    index_title = "Configuration"

    def has_permission(self, request: HttpRequest) -> bool:
        return user_is_site_admin(request.user)

    def admin_view(self, view: _View, cacheable: bool = False) -> _View:
        inner = super().admin_view(view, cacheable)

        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            # Django would redirect to its login form, which a signed-in radiologist cannot get past.
            if request.user.is_authenticated and not self.has_permission(request):
                raise PermissionDenied
            return inner(request, *args, **kwargs)

        return cast(_View, guarded)

    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if request.user.is_authenticated and not self.has_permission(request):
            raise PermissionDenied
        return super().login(request, extra_context)

"""The Django admin app, pointed at the triage site (its own module: triage/apps.py must hold one AppConfig)."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class TriageAdminConfig(AdminConfig):
    """The Django admin with a site that answers 403 to signed-in users who are not triage admins."""

    default_site = "triage.admin_site.TriageAdminSite"

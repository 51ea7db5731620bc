from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models as db_models
from django.http import HttpRequest, HttpResponse
from knox.models import AuthToken

from inference.modelcard import sha256_file
from triage import models
from triage.core import audit
from triage.core import services as core_services
from triage.core.permissions import request_user
from triage.fhir.outbox import outbox_requeue
from triage.governance import services as governance_services
from triage.ingest.jobs import job_retry_by_admin
from triage.writeback.outbox import writeback_requeue

# Values of these fields never reach the audit trail; only the fact that they changed does.
REDACTED_FIELD_SUFFIXES = ("password", "secret", "token", "private_key")


def _audit_snapshot(obj: db_models.Model, exclude: tuple[str, ...]) -> dict[str, Any]:
    """Editable field values as JSON-safe data (foreign keys and many-to-many as primary keys)."""
    snap: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if not field.editable or field.primary_key or field.name in exclude:
            continue
        snap[field.name] = field.value_from_object(obj)
    if obj.pk is not None:
        for field in obj._meta.many_to_many:
            if field.name not in exclude:
                snap[field.name] = sorted(getattr(obj, field.name).values_list("pk", flat=True))
    return json.loads(json.dumps(snap, cls=DjangoJSONEncoder))


def _audit_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    changes = {}
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if name.endswith(REDACTED_FIELD_SUFFIXES):
            before, after = "(redacted)", "(changed)"
        changes[name] = {"old": before, "new": after}
    return changes


class ClinicalRecordAdmin(admin.ModelAdmin):
    """Clinical rows are never deleted by hand: a study's results feed its worklist item and the reports already
    sent to the EMR, and deleting them here would leave both stale with no audit row. Retraction and corrections
    go through the pipeline's services (docs/security.md, "Admin")."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AuditedModelAdmin(admin.ModelAdmin):
    """Writes an AuditEvent with old and new values for every add, change and delete made in the admin.

    Django runs these hooks inside the change view's transaction, so the audit row commits with the change.
    Fields in ``audit_exclude`` are audited by the service that writes them instead.
    """

    audit_exclude: tuple[str, ...] = ()

    def _snapshot(self, obj: db_models.Model) -> dict[str, Any]:
        return _audit_snapshot(obj, self.audit_exclude)

    def _audit(self, request: HttpRequest, verb: str, obj: db_models.Model, changes: dict) -> None:
        audit.audit_record(
            action=f"admin.{obj._meta.model_name}.{verb}",
            actor=request_user(request),
            obj=obj,
            data={"changes": changes},
        )

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        stored = type(obj)._default_manager.filter(pk=obj.pk).first() if change else None
        request._audit_before = self._snapshot(stored) if stored is not None else {}  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        obj = form.instance
        obj.refresh_from_db()
        changes = _audit_diff(getattr(request, "_audit_before", {}), self._snapshot(obj))
        if changes:
            self._audit(request, "change" if change else "add", obj, changes)

    def delete_model(self, request: HttpRequest, obj: db_models.Model) -> None:
        changes = _audit_diff(self._snapshot(obj), {})
        self._audit(request, "delete", obj, changes)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self._audit(request, "delete", obj, _audit_diff(self._snapshot(obj), {}))
        super().delete_queryset(request, queryset)


@admin.register(models.User)
class TriageUserAdmin(AuditedModelAdmin, UserAdmin):
    """Role is the one control for admin access: staff status follows it (services.user_role_set)."""

    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Access", {"fields": ("role", "is_active", "is_staff", "is_superuser", "groups")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("username", "role", "password1", "password2")}),)
    readonly_fields = ("is_staff", "is_superuser", "last_login", "date_joined")
    list_display = ("username", "role", "is_staff", "is_active", "last_login")
    list_filter = ("role", "is_active")
    actions = ["make_admin", "make_radiologist"]
    audit_exclude = ("role", "is_staff", "is_superuser", "last_login", "date_joined")

    def save_model(self, request: HttpRequest, obj: models.User, form: Any, change: bool) -> None:
        role = obj.role
        if change and "role" in form.changed_data:
            obj.role = type(obj).objects.only("role").get(pk=obj.pk).role
        super().save_model(request, obj, form, change)
        if not change or "role" in form.changed_data:
            core_services.user_role_set(user=obj, role=role, actor=request_user(request))
            obj.refresh_from_db()

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:  # noqa: A002
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:
            user = models.User.objects.get(pk=id)
            self._audit(request, "change", user, {"password": {"old": "(redacted)", "new": "(changed)"}})
        return response

    @admin.action(description="Give the admin role (staff access)")
    def make_admin(self, request: HttpRequest, queryset: Any) -> None:
        for user in queryset:
            core_services.user_role_set(user=user, role=models.Role.ADMIN, actor=request_user(request))

    @admin.action(description="Give the radiologist role (no admin access)")
    def make_radiologist(self, request: HttpRequest, queryset: Any) -> None:
        for user in queryset:
            core_services.user_role_set(user=user, role=models.Role.RADIOLOGIST, actor=request_user(request))


@admin.register(models.AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "object_type", "object_id")
    list_filter = ("action",)
    readonly_fields = [f.name for f in models.AuditEvent._meta.fields]

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(models.DicomWebSource)
class DicomWebSourceAdmin(AuditedModelAdmin):
    list_display = ("name", "url", "enabled", "last_polled_at")
    # Runtime state kept by the poller, not configuration.
    readonly_fields = ("poll_cursor", "last_polled_at", "last_error", "created_at")


class SeriesInline(admin.TabularInline):
    model = models.Series
    extra = 0
    can_delete = False
    fields = (
        "series_instance_uid",
        "modality",
        "description",
        "slice_thickness_mm",
        "instance_count",
        "routed_model",
        "routing_reason",
    )
    readonly_fields = fields


@admin.register(models.Study)
class StudyAdmin(ClinicalRecordAdmin):
    """Read only: studies change through the pipeline's services, never by hand."""

    list_display = ("study_instance_uid", "accession_number", "study_description", "received_at")
    search_fields = ("study_instance_uid", "accession_number")
    inlines = [SeriesInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(models.RoutingRule)
class RoutingRuleAdmin(AuditedModelAdmin):
    list_display = ("name", "model", "order", "enabled", "modality", "contrast")


class ModelConfigForm(forms.ModelForm):
    """Weights are pinned: a file named here must exist and match its SHA-256, so a swapped file cannot slip in."""

    class Meta:
        model = models.ModelConfig
        fields = ("finding", "enabled", "name", "version", "weights_path", "weights_sha256", "threshold")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        path, digest = data.get("weights_path", ""), (data.get("weights_sha256") or "").lower()
        if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
            self.add_error("weights_sha256", "A SHA-256 is 64 hexadecimal characters.")
        elif path:
            if not digest:
                self.add_error("weights_sha256", "Give the SHA-256 of the weights file to pin it.")
            elif not Path(path).is_file():
                self.add_error("weights_path", "No file at this path on this server.")
            elif sha256_file(Path(path)) != digest:
                self.add_error("weights_sha256", "The file's SHA-256 differs from this value.")
        data["weights_sha256"] = digest
        return data


@admin.register(models.ModelConfig)
class ModelConfigAdmin(AuditedModelAdmin):
    """A threshold edit goes through services.model_threshold_set, so it applies to open studies at once."""

    form = ModelConfigForm
    list_display = ("finding", "name", "version", "threshold", "enabled")
    audit_exclude = ("threshold",)

    def save_model(self, request: HttpRequest, obj: models.ModelConfig, form: Any, change: bool) -> None:
        if not change or "threshold" not in form.changed_data:
            super().save_model(request, obj, form, change)
            return
        threshold = obj.threshold
        obj.threshold = type(obj).objects.only("threshold").get(pk=obj.pk).threshold
        super().save_model(request, obj, form, change)
        governance_services.model_threshold_set(model_config=obj, threshold=threshold, actor=request_user(request))
        obj.refresh_from_db()


@admin.register(models.ThresholdOverride)
class ThresholdOverrideAdmin(admin.ModelAdmin):
    """Per-source operating points; every write goes through services.model_threshold_set, which audits it."""

    list_display = ("model", "source", "threshold")
    list_filter = ("model",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("model", "source") if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: models.ThresholdOverride, form: Any, change: bool) -> None:
        governance_services.model_threshold_set(
            model_config=obj.model, source=obj.source, threshold=obj.threshold, actor=request_user(request)
        )
        obj.pk = models.ThresholdOverride.objects.get(model=obj.model, source=obj.source).pk

    def delete_model(self, request: HttpRequest, obj: models.ThresholdOverride) -> None:
        governance_services.model_threshold_set(
            model_config=obj.model, source=obj.source, threshold=None, actor=request_user(request)
        )

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset.select_related("model", "source"):
            self.delete_model(request, obj)


@admin.register(models.GroundTruth)
class GroundTruthAdmin(AuditedModelAdmin):
    list_display = ("study", "finding", "label", "source", "imported_by", "created_at")
    list_filter = ("finding", "source", "label")
    raw_id_fields = ("study",)
    readonly_fields = ("imported_by", "created_at")

    def save_model(self, request: HttpRequest, obj: models.GroundTruth, form: Any, change: bool) -> None:
        if not change:
            obj.imported_by = request_user(request)
        super().save_model(request, obj, form, change)


@admin.register(models.TriageJob)
class TriageJobAdmin(ClinicalRecordAdmin):
    list_display = ("id", "study", "state", "attempts", "error_code", "created_at", "finished_at")
    list_filter = ("state", "error_code")
    readonly_fields = [f.name for f in models.TriageJob._meta.fields]
    actions = ["retry"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Triage again (failed or rejected jobs)")
    def retry(self, request: HttpRequest, queryset: Any) -> None:
        done = sum(job_retry_by_admin(job_id=job.pk, actor=request_user(request)) for job in queryset)
        self.message_user(request, f"{done} queued again; {queryset.count() - done} skipped (not failed or rejected).")


@admin.register(models.TriageResult)
class TriageResultAdmin(ClinicalRecordAdmin):
    """Read only: results change through the pipeline and model_threshold_set, never by hand."""

    list_display = ("study", "finding", "model_name", "model_version", "score", "threshold", "positive")
    exclude = ("key_image_png",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(models.FhirEndpoint)
class FhirEndpointAdmin(AuditedModelAdmin):
    list_display = ("name", "base_url", "fhir_version", "auth", "enabled", "verify_tls")
    list_filter = ("enabled", "auth", "fhir_version")
    fieldsets = (
        (None, {"fields": ("name", "base_url", "fhir_version", "enabled", "timeout_seconds", "verify_tls")}),
        ("Patient", {"fields": ("patient_id_system", "resolve_patient")}),
        (
            "Authentication",
            {
                "fields": ("auth", "username", "secret_env", "client_id", "token_url", "scope", "jwt_key_id"),
                "description": "Secrets are never stored here: name the environment variable that holds the "
                "token, password or PEM private key.",
            },
        ),
    )


@admin.register(models.OutboxMessage)
class OutboxMessageAdmin(ClinicalRecordAdmin):
    list_display = (
        "id",
        "endpoint",
        "study",
        "finding",
        "report_version",
        "report_status",
        "state",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "sent_at",
    )
    list_filter = ("state", "endpoint", "report_status", "finding")
    search_fields = ("study__study_instance_uid", "resource_id")
    list_select_related = ("endpoint", "study")
    actions = ["requeue"]
    exclude = ("payload", "operation_outcome")
    readonly_fields = (
        *[f.name for f in models.OutboxMessage._meta.fields if f.name not in ("payload", "operation_outcome")],
        "operation_outcome_pretty",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

    @admin.display(description="OperationOutcome from the EMR")
    def operation_outcome_pretty(self, obj: models.OutboxMessage) -> str:
        from django.utils.html import format_html

        if not obj.operation_outcome:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(obj.operation_outcome, indent=2))

    @admin.action(description="Requeue dead letters (rebuilt from current data)", permissions=["view"])
    def requeue(self, request: HttpRequest, queryset: Any) -> None:
        done = sum(outbox_requeue(message=m, actor=request_user(request)) for m in queryset)
        skipped = queryset.count() - done
        self.message_user(request, f"{done} requeued; {skipped} skipped (not dead, or a newer version exists).")


@admin.register(models.WritebackMessage)
class WritebackMessageAdmin(ClinicalRecordAdmin):
    """Results stored back in the PACS (docs/dicom-sr.md): read only, with a requeue action for dead letters."""

    list_display = (
        "id",
        "source",
        "study",
        "finding",
        "version",
        "retract",
        "state",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "sent_at",
    )
    list_filter = ("state", "source", "finding", "retract")
    search_fields = ("study__study_instance_uid", "sr_instance_uid")
    list_select_related = ("source", "study")
    actions = ["requeue"]
    readonly_fields = [f.name for f in models.WritebackMessage._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

    @admin.action(description="Requeue dead letters", permissions=["view"])
    def requeue(self, request: HttpRequest, queryset: Any) -> None:
        done = sum(writeback_requeue(message=m, actor=request_user(request)) for m in queryset)
        skipped = queryset.count() - done
        self.message_user(request, f"{done} requeued; {skipped} skipped (not dead, or a newer version exists).")


admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class ApiTokenAdmin(AuditedModelAdmin):
    """Who holds an API token and until when. Tokens are made by ``POST /api/v1/auth/token/`` or
    ``manage.py triage_token_create``, never here; deleting one here revokes it, audited."""

    list_display = ("user", "created", "expiry")
    list_filter = ("user",)
    fields = ("user", "created", "expiry")
    readonly_fields = fields
    # The digest is the primary key (never in the audit's values); the key prefix only helps to find a token.
    audit_exclude = ("token_key",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from triage import models


@admin.register(models.User)
class TriageUserAdmin(UserAdmin):
    fieldsets = (*UserAdmin.fieldsets, ("Role", {"fields": ("role",)}))
    list_display = ("username", "role", "is_active", "last_login")


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
class DicomWebSourceAdmin(admin.ModelAdmin):
    list_display = ("name", "url", "enabled", "last_polled_at")


class SeriesInline(admin.TabularInline):
    model = models.Series
    extra = 0
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
class StudyAdmin(admin.ModelAdmin):
    list_display = ("study_instance_uid", "accession_number", "study_description", "received_at")
    search_fields = ("study_instance_uid", "accession_number")
    inlines = [SeriesInline]


@admin.register(models.RoutingRule)
class RoutingRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "model", "order", "enabled", "modality", "contrast")


@admin.register(models.ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ("finding", "name", "version", "threshold", "enabled")


@admin.register(models.TriageJob)
class TriageJobAdmin(admin.ModelAdmin):
    list_display = ("id", "study", "state", "attempts", "error_code", "created_at", "finished_at")
    list_filter = ("state", "error_code")


@admin.register(models.TriageResult)
class TriageResultAdmin(admin.ModelAdmin):
    list_display = ("study", "finding", "model_name", "model_version", "score", "threshold", "positive")
    exclude = ("key_image_png",)


@admin.register(models.FhirEndpoint)
class FhirEndpointAdmin(admin.ModelAdmin):
    list_display = ("name", "base_url", "fhir_version", "auth", "enabled")


@admin.register(models.OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "endpoint", "finding", "report_status", "state", "attempts", "last_status_code")
    list_filter = ("state",)

"""The admin console's pages, under /console/."""

from __future__ import annotations

from django.urls import path

from triage.governance import console, export_views, shadow_views, turnaround_views

urlpatterns = [
    path("", console.console_index, name="console"),
    path("validation/<str:finding>/", console.validation_page, name="console-validation"),
    path("validation/<str:finding>/apply/", console.threshold_apply, name="console-threshold-apply"),
    path("validation/<str:finding>/<str:table>.csv", console.validation_csv, name="console-validation-csv"),
    path("ground-truth/", console.ground_truth_import, name="console-ground-truth"),
    path("monitoring/", console.monitoring_page, name="console-monitoring"),
    path("monitoring/<str:table>.csv", console.monitoring_csv, name="console-monitoring-csv"),
    path("turnaround/", turnaround_views.turnaround_page, name="console-turnaround"),
    path("exports/", export_views.exports_page, name="console-exports"),
    path("exports/<int:pk>/download/", export_views.export_download, name="console-export-download"),
    path("turnaround/<str:table>.csv", turnaround_views.turnaround_csv, name="console-turnaround-csv"),
    path("shadow/", shadow_views.shadow_page, name="console-shadow"),
    path("shadow/<int:pk>/", shadow_views.shadow_compare, name="console-shadow-compare"),
    path("shadow/<int:pk>/promote/", shadow_views.shadow_promote, name="console-shadow-promote"),
    path("shadow/<int:pk>/withdraw/", shadow_views.shadow_withdraw, name="console-shadow-withdraw"),
    path("shadow/<int:pk>/<str:table>.csv", shadow_views.shadow_csv, name="console-shadow-csv"),
    path("shadow/rollback/<str:finding>/", shadow_views.model_rollback, name="console-model-rollback"),
]

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from triage import api, views
from triage.governance import console

api_v1 = [
    path("auth/token/", api.TokenCreateApi.as_view(), name="api-token"),
    path("studies/notify/", api.StudyNotifyApi.as_view(), name="api-study-notify"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("", include("worklist.urls_api")),
]

console_urls = [
    path("", console.console_index, name="console"),
    path("validation/<str:finding>/", console.validation_page, name="console-validation"),
    path("validation/<str:finding>/apply/", console.threshold_apply, name="console-threshold-apply"),
    path("validation/<str:finding>/<str:table>.csv", console.validation_csv, name="console-validation-csv"),
    path("ground-truth/", console.ground_truth_import, name="console-ground-truth"),
    path("monitoring/", console.monitoring_page, name="console-monitoring"),
    path("monitoring/<str:table>.csv", console.monitoring_csv, name="console-monitoring-csv"),
]

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include(api_v1)),
    path("console/", include(console_urls)),
    path("", include("worklist.urls")),
]

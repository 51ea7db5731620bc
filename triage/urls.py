from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView

from triage import api, viewer, views

api_v1: list[URLPattern | URLResolver] = [
    path("auth/token/", api.TokenCreateApi.as_view(), name="api-token"),
    path("studies/notify/", api.StudyNotifyApi.as_view(), name="api-study-notify"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("", include("worklist.urls_api")),
]

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include(api_v1)),
    path("console/", include("triage.governance.urls")),
    path("viewer/<str:study_instance_uid>/", viewer.viewer_open, name="viewer-open"),
    path("", include("worklist.urls")),
]

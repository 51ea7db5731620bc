from __future__ import annotations

from django.urls import path

from worklist import api

urlpatterns = [path("worklist/", api.WorklistApi.as_view(), name="api-worklist")]

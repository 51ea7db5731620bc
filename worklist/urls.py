from __future__ import annotations

from django.urls import path

from worklist import views

urlpatterns = [path("", views.worklist_page, name="worklist")]

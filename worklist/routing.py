from __future__ import annotations

from django.urls import path

from worklist import consumers

websocket_urlpatterns = [path("ws/worklist/", consumers.WorklistConsumer.as_asgi())]

"""Worklist API (issue 4 fills in claims, feedback and filters)."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class WorklistApi(APIView):
    def get(self, request: Request) -> Response:
        return Response({"results": []})

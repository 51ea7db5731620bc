"""Pipeline API: token login and the PACS notification hook."""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from triage.core.exceptions import TriageError
from triage.core.permissions import request_user
from triage.core.schema import ErrorSerializer
from triage.core.services import token_create
from triage.ingest import services


class LoginLockedOut(TriageError):
    code = "locked_out"
    status = 429


class TokenCreateApi(APIView):
    """A new expiring API token per call (django-rest-knox keeps only its digest). Failed logins count towards the
    same lockout as the login form (django-axes); requests are throttled per client address on top."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"

    @extend_schema_serializer(component_name="TokenCreateInput")
    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        password = serializers.CharField(style={"input_type": "password"})

    @extend_schema_serializer(component_name="TokenCreateOutput")
    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request, **data.validated_data)
        if user is None and getattr(request, "axes_locked_out", False):
            raise LoginLockedOut("Too many failed logins: try again later.")
        if user is None:
            raise TriageError("Unknown username or wrong password.", code="invalid_credentials")
        return Response({"token": token_create(user=user)})


class StudyNotifyApi(APIView):
    @extend_schema_serializer(component_name="StudyNotifyInput")
    class InputSerializer(serializers.Serializer):
        study_instance_uid = serializers.RegexField(r"^[0-9]+(\.[0-9]+)*$", max_length=64)
        # The wire name is "source", which DRF's Field also uses for an attribute of its own.
        source = serializers.CharField(  # type: ignore[assignment]
            required=False, help_text="Source name; the default source if omitted"
        )
        complete = serializers.BooleanField(
            required=False,
            default=False,
            help_text="The sender vouches that the study is complete (e.g. Orthanc's OnStableStudy): no settle wait",
        )

    @extend_schema_serializer(component_name="StudyNotifyOutput")
    class OutputSerializer(serializers.Serializer):
        study_instance_uid = serializers.CharField()
        job_state = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={202: OutputSerializer, 404: ErrorSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = services.study_request_triage(
            study_instance_uid=data.validated_data["study_instance_uid"],
            source_name=data.validated_data.get("source"),
            complete=data.validated_data["complete"],
            actor=request_user(request),
        )
        body = {"study_instance_uid": job.study.study_instance_uid, "job_state": job.state}
        return Response(body, status=status.HTTP_202_ACCEPTED)

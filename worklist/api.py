"""Worklist REST API: one view per operation, thin (parse, call one service or selector, serialize)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from triage.core.permissions import request_user
from triage.core.schema import ErrorSerializer
from triage.models import Finding, Verdict
from worklist import selectors, services
from worklist.models import WorklistItem
from worklist.serializers import StudyDetailSerializer, WorklistItemSerializer


def _item_response(item: WorklistItem) -> Response:
    now = timezone.now()
    fresh = selectors.worklist_item_for_payload(item_id=item.pk, now=now)
    return Response(WorklistItemSerializer(fresh, context={"now": now}).data)


class WorklistPagination(LimitOffsetPagination):
    """Limit/offset links from whether another page follows, since ``count`` stops counting at a bound."""

    default_limit = 50
    max_limit = 500
    has_more = False

    def get_next_link(self) -> str | None:
        if not self.has_more or self.request is None or self.limit is None or self.offset is None:
            return None
        url = replace_query_param(self.request.build_absolute_uri(), self.limit_query_param, self.limit)
        return replace_query_param(url, self.offset_query_param, self.offset + self.limit)


class WorklistApi(APIView):
    """The worklist in reading order. ``seq`` is the last event number the snapshot includes."""

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=list(selectors.STATUS_FILTERS), default="open")
        modality = serializers.CharField(required=False, max_length=16)
        finding = serializers.ChoiceField(choices=Finding.values, required=False)
        claimed_by = serializers.ChoiceField(choices=["me"], required=False)
        department = serializers.CharField(
            required=False, max_length=128, help_text="Institutional Department Name, exact (any case)"
        )
        institution = serializers.CharField(required=False, max_length=128, help_text="Institution Name, exact")
        offset = serializers.IntegerField(min_value=0, max_value=selectors.MAX_OFFSET, required=False)

    @extend_schema(
        parameters=[
            FilterSerializer,
            OpenApiParameter("limit", int, description="Page size (default 50, at most 500)"),
        ],
        responses={
            200: inline_serializer(
                "WorklistPage",
                {
                    "count": serializers.IntegerField(
                        help_text=f"Items matching the filters; exact up to {selectors.COUNT_EXACT_UP_TO:,}, "
                        "a lower bound beyond (see count_exact)"
                    ),
                    "count_exact": serializers.BooleanField(),
                    "next": serializers.CharField(allow_null=True),
                    "previous": serializers.CharField(allow_null=True),
                    "seq": serializers.IntegerField(),
                    "max_wait_minutes": serializers.IntegerField(),
                    "results": WorklistItemSerializer(many=True),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        now = timezone.now()
        seq = selectors.worklist_seq()
        items = selectors.worklist_items(
            user=request_user(request),
            status=filters.validated_data["status"],
            modality=filters.validated_data.get("modality"),
            finding=filters.validated_data.get("finding"),
            claimed_by_me=filters.validated_data.get("claimed_by") == "me",
            department=filters.validated_data.get("department"),
            institution=filters.validated_data.get("institution"),
            now=now,
        )
        paginator = WorklistPagination()
        paginator.request, paginator.limit = request, paginator.get_limit(request) or paginator.default_limit
        paginator.offset = filters.validated_data.get("offset", 0)
        page = selectors.worklist_page(items=items, offset=paginator.offset, limit=paginator.limit, now=now)
        paginator.count, paginator.has_more = page.count, page.has_more
        for position, item in enumerate(page.items, start=paginator.offset + 1):
            item.rank = position
        data = WorklistItemSerializer(page.items, many=True, context={"now": now}).data
        response = paginator.get_paginated_response(data)
        response.data["count_exact"] = page.count_exact
        response.data["seq"] = seq
        response.data["max_wait_minutes"] = int(selectors.max_wait().total_seconds() // 60)
        return response


class StudyDetailApi(APIView):
    """A study's series and current advisory findings. Opening it is audited."""

    @extend_schema(responses={200: StudyDetailSerializer})
    def get(self, request: Request, study_instance_uid: str) -> Response:
        study = selectors.study_detail_get(study_instance_uid=study_instance_uid)
        services.study_view_record(study=study, user=request_user(request))
        verdicts = selectors.feedback_by_user(
            user=request_user(request), result_ids=[r.pk for r in study.current_results]
        )
        context = {"now": timezone.now(), "verdicts": verdicts}
        return Response(StudyDetailSerializer(study, context=context).data)


class _ItemActionApi(APIView):
    service: ClassVar[Callable[..., WorklistItem]]

    @extend_schema(request=None, responses={200: WorklistItemSerializer, 409: ErrorSerializer})
    def post(self, request: Request, study_instance_uid: str) -> Response:
        item = type(self).service(study_instance_uid=study_instance_uid, user=request_user(request))
        return _item_response(item)


class ItemClaimApi(_ItemActionApi):
    """Claim a study for reading. 409 when another radiologist holds it."""

    service = staticmethod(services.worklist_item_claim)


class ItemReleaseApi(_ItemActionApi):
    """Give a claimed study back to the worklist."""

    service = staticmethod(services.worklist_item_release)


class ItemReportApi(_ItemActionApi):
    """Mark a study as reported; it leaves the open worklist."""

    service = staticmethod(services.worklist_item_report)


class ItemAcknowledgeApi(_ItemActionApi):
    """Acknowledge a critical (advisory) finding, which stops its escalation."""

    service = staticmethod(services.worklist_item_acknowledge)


class ItemPinApi(APIView):
    """Pin a priority level by hand (0 routine … 4 critical), or null to let the rule decide again."""

    @extend_schema_serializer(component_name="ItemPinInput")
    class InputSerializer(serializers.Serializer):
        level = serializers.IntegerField(min_value=0, max_value=4, allow_null=True)

    @extend_schema(request=InputSerializer, responses={200: WorklistItemSerializer})
    def post(self, request: Request, study_instance_uid: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        item = services.worklist_item_pin(
            study_instance_uid=study_instance_uid, user=request_user(request), level=data.validated_data["level"]
        )
        return _item_response(item)


class ResultFeedbackApi(APIView):
    """One-click verdict on one advisory finding, recorded with the model version that produced it."""

    @extend_schema_serializer(component_name="ResultFeedbackInput")
    class InputSerializer(serializers.Serializer):
        verdict = serializers.ChoiceField(choices=Verdict.values)
        comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")

    @extend_schema_serializer(component_name="ResultFeedbackOutput")
    class OutputSerializer(serializers.Serializer):
        result_id = serializers.IntegerField()
        verdict = serializers.CharField()
        comment = serializers.CharField()
        model = serializers.CharField(source="model_name")
        model_version = serializers.CharField()
        updated_at = serializers.DateTimeField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request: Request, result_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        feedback = services.result_feedback_set(result_id=result_id, user=request_user(request), **data.validated_data)
        return Response(self.OutputSerializer(feedback).data)


class ResultKeyImageApi(APIView):
    """The key image (PNG) with the model's heatmap overlay, marked as AI output."""

    @extend_schema(responses={(200, "image/png"): bytes})
    def get(self, request: Request, result_id: int) -> HttpResponse:
        png = selectors.result_key_image(result_id=result_id)
        response = HttpResponse(png, content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response

from __future__ import annotations

from django.urls import path, register_converter

from worklist import api


class UidConverter:
    regex = r"[0-9][0-9.]{0,63}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UidConverter, "uid")

urlpatterns = [
    path("worklist/", api.WorklistApi.as_view(), name="api-worklist"),
    path("studies/<uid:study_instance_uid>/", api.StudyDetailApi.as_view(), name="api-study-detail"),
    path("studies/<uid:study_instance_uid>/claim/", api.ItemClaimApi.as_view(), name="api-item-claim"),
    path("studies/<uid:study_instance_uid>/release/", api.ItemReleaseApi.as_view(), name="api-item-release"),
    path("studies/<uid:study_instance_uid>/report/", api.ItemReportApi.as_view(), name="api-item-report"),
    path(
        "studies/<uid:study_instance_uid>/acknowledge/", api.ItemAcknowledgeApi.as_view(), name="api-item-acknowledge"
    ),
    path("studies/<uid:study_instance_uid>/pin/", api.ItemPinApi.as_view(), name="api-item-pin"),
    path("results/<int:result_id>/feedback/", api.ResultFeedbackApi.as_view(), name="api-result-feedback"),
    path("results/<int:result_id>/key-image.png", api.ResultKeyImageApi.as_view(), name="api-result-key-image"),
]

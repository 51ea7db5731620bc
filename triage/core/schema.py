"""The OpenAPI schema's shared part: every operation documents the errors the API can answer it with, in the one
shape that ``api_exception_handler`` renders, so a client (and schemathesis in the tests) finds every status there."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny


@extend_schema_serializer(component_name="ErrorBody")
class _ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable error code, e.g. invalid_input, not_found, already_claimed")
    message = serializers.CharField(help_text="For people; holds no patient data")
    # The wire name is "fields", which DRF's Serializer also uses for a property of its own (the metaclass keeps both).
    fields = serializers.DictField(  # type: ignore[assignment]
        required=False, help_text="Per-field problems (invalid_input only)"
    )


@extend_schema_serializer(component_name="Error")
class ErrorSerializer(serializers.Serializer):
    error = _ErrorBodySerializer()


ERROR_DESCRIPTIONS = {
    400: "The request is not valid; `error.fields` names the fields for invalid_input.",
    401: "No valid session or token.",
    403: "Not signed in, or the user may not do this.",
    404: "No such object.",
    409: "The object's state does not allow this now (e.g. another radiologist holds the study).",
    429: "Too many requests, or too many failed logins: try again later.",
}


class TriageAutoSchema(AutoSchema):
    """drf-spectacular's schema plus the error responses each operation can give, derived from the view: input
    (400), login (401/403), path parameters (404) and throttling (429). Errors a service raises beyond these (409, a
    404 without path parameters) are declared on the view with ``extend_schema(responses=...)``."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status in self._error_statuses():
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(ErrorSerializer, str(status), direction=direction)
                responses[str(status)]["description"] = ERROR_DESCRIPTIONS[status]
        return responses

    def _error_statuses(self) -> list[int]:
        statuses = []
        if self._takes_input():
            statuses.append(400)
        if self._needs_login():
            statuses += [401, 403] if self._answers_401() else [403]
        if "{" in self.path:
            statuses.append(404)
        if getattr(self.view, "throttle_classes", None):
            statuses.append(429)
        return statuses

    def _takes_input(self) -> bool:
        has_body = self.method in {"POST", "PUT", "PATCH"} and self.get_request_serializer() is not None
        return has_body or any(parameter.get("in") == "query" for parameter in self._get_parameters())

    def _needs_login(self) -> bool:
        return not any(isinstance(permission, AllowAny) for permission in self.view.get_permissions())

    def _answers_401(self) -> bool:
        """DRF answers 401 only when the first authenticator names a WWW-Authenticate challenge; else 403."""
        authenticators = self.view.get_authenticators()
        return bool(authenticators) and bool(authenticators[0].authenticate_header(self.view.request))

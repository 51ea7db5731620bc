"""Errors with a stable code and an HTTP status, rendered by one DRF handler as {"error": {"code", "message"}}."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler


class TriageError(Exception):
    code = "triage_error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(TriageError):
    code = "not_found"
    status = 404


class Conflict(TriageError):
    code = "conflict"
    status = 409


class PermissionDenied(TriageError):
    code = "permission_denied"
    status = 403


class InvalidInput(TriageError):
    code = "invalid_input"
    status = 400


class PacsError(TriageError):
    """The PACS failed in a way that may pass (timeout, 5xx): retry later."""

    code = "pacs_unavailable"
    status = 502


class PacsNotFound(TriageError):
    """The PACS answered that the study or series does not exist (any more)."""

    code = "pacs_not_found"
    status = 404


class PacsRequestRejected(TriageError):
    """The PACS refused the request itself (4xx): retrying the same request cannot help."""

    code = "pacs_rejected"
    status = 502


class RejectedInput(TriageError):
    """The study cannot be triaged as it is (corrupt, incomplete, too large): do not retry."""

    code = "rejected"
    status = 422


class ModelUnavailable(TriageError):
    """A finding's model cannot be loaded; the message names the finding and the problem, never the patient."""

    code = "model_unavailable"
    status = 503

    def __init__(self, finding: str, problem: str, detail: str) -> None:
        super().__init__(
            f"The {finding} model cannot be loaded ({problem}): {detail.rstrip('. ')}. "
            "The study is retried later; install or fix the weights in the model configuration."
        )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, TriageError):
        return Response({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.ValidationError):
        code, message = "invalid_input", "The request is not valid."
        detail = response.data
    else:
        code = getattr(exc, "default_code", "error")
        message = str(getattr(exc, "detail", exc))
        detail = None
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if detail is not None:
        body["error"]["fields"] = detail
    response.data = body
    return response

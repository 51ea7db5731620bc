"""The OpenAPI schema documents the error responses each operation can give, in the one error shape."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture
def schema(radiologist_client) -> dict:
    return radiologist_client.get("/api/v1/schema/?format=json").json()


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def _error_ref(operation: dict, status: str) -> str | None:
    return (
        operation["responses"]
        .get(status, {})
        .get("content", {})
        .get("application/json", {})
        .get("schema", {})
        .get("$ref")
    )


def test_every_operation_behind_the_login_documents_403_in_the_error_shape(schema):
    missing = [
        f"{method} {path}"
        for method, path, op in _operations(schema)
        if path != "/api/v1/auth/token/" and _error_ref(op, "403") != ERROR_REF
    ]

    assert missing == []


def test_every_operation_on_a_path_parameter_documents_404(schema):
    missing = [
        f"{method} {path}" for method, path, op in _operations(schema) if "{" in path and "404" not in op["responses"]
    ]

    assert missing == []


def test_conflicts_throttling_and_unknown_sources_are_documented(schema):
    paths = schema["paths"]

    assert "409" in paths["/api/v1/studies/{study_instance_uid}/claim/"]["post"]["responses"]
    assert {"400", "429"} <= paths["/api/v1/auth/token/"]["post"]["responses"].keys()
    assert "404" in paths["/api/v1/studies/notify/"]["post"]["responses"]
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]

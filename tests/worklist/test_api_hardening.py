"""Worklist API inputs and links that must not be abused: huge offsets, viewer links, the schema."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_an_offset_beyond_any_worklist_is_refused_with_the_error_body(radiologist_client):
    response = radiologist_client.get("/api/v1/worklist/?offset=99999999999999999999")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert "offset" in response.json()["error"]["fields"]


def test_viewer_url_values_are_url_encoded(radiologist_client, make_study, settings):
    settings.TRIAGE_VIEWER_URL = "http://viewer/view?uid={study_instance_uid}&acc={accession_number}"
    make_study(accession_number="A&B/#1 ?x=2")
    url = radiologist_client.get("/api/v1/worklist/").json()["results"][0]["viewer_url"]
    assert url.endswith("&acc=A%26B%2F%231%20%3Fx%3D2")


def test_the_schema_needs_a_login(api_client):
    assert api_client.get("/api/v1/schema/").status_code in (401, 403)


def test_a_signed_in_user_gets_the_schema(radiologist_client):
    assert radiologist_client.get("/api/v1/schema/").status_code == 200

"""The worklist page is served by Django with its configuration and script, to logged-in users only."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_page_needs_login(client):
    response = client.get("/")
    assert (response.status_code, response["Location"].split("?")[0]) == (302, "/accounts/login/")


def test_page_carries_config_and_script(client, radiologist, settings):
    settings.TRIAGE_MAX_WAIT_MINUTES = 45
    client.force_login(radiologist)
    html = client.get("/").content.decode()
    assert 'id="worklist-config"' in html
    assert '"max_wait_minutes": 45' in html
    assert "js/worklist.js" in html


def test_page_states_that_ai_findings_are_advisory(client, radiologist):
    client.force_login(radiologist)
    assert "AI findings are advisory" in client.get("/").content.decode()

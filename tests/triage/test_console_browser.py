"""End to end in Chromium: an admin moves a threshold on the console page; an open worklist page re-orders without
reload, and the EMR (the local FHIR server) receives the amended report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tests.browser import logged_in_page, off_loop
from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory
from triage.core import services as core_services
from triage.fhir import resources as fhir
from triage.fhir.delivery import outbox_deliver_due
from triage.fhir.outbox import outbox_enqueue_report
from triage.models import FhirEndpoint, ModelConfig
from worklist.services import worklist_item_sync

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def site_with_two_open_studies(fhir_base_url: str) -> tuple[str, str]:
    """An older negative study and a newer one flagged at 0.60 (read first), both reported to the EMR."""
    ModelConfig.objects.update_or_create(finding="ich", defaults={"name": "ich2d", "version": "1.0", "threshold": 0.5})
    FhirEndpoint.objects.create(name="emr", base_url=fhir_base_url, timeout_seconds=5)
    now = timezone.now()
    studies = []
    for minutes_ago, score in ((10, 0.3), (1, 0.6)):
        study = StudyFactory(received_at=now - timedelta(minutes=minutes_ago), requested_priority="ROUTINE")
        ResultFactory(series=SeriesFactory(study=study), score=score, threshold=0.5)
        worklist_item_sync(study=study)
        outbox_enqueue_report(study=study, finding="ich")
        studies.append(study.study_instance_uid)
    assert outbox_deliver_due(limit=10).sent == 2
    return studies[0], studies[1]


def admin_cookie() -> str:
    client = Client()
    client.force_login(core_services.user_role_set(user=UserFactory(username="boss"), role="admin", actor=None))
    return client.cookies["sessionid"].value


def test_threshold_change_reorders_the_open_worklist_and_amends_the_report(live_server_url, chromium, fhir_server):
    fhir_server.clear()
    routine_uid, flagged_uid = off_loop(site_with_two_open_studies, fhir_server.base_url)
    worklist = logged_in_page(chromium, live_server_url, "rad_a")
    worklist.wait_for_selector(f'#rows tr:first-child[data-uid="{flagged_uid}"]', timeout=10000)
    worklist.evaluate("window.__sameDocument = true")

    console = chromium.new_context(viewport={"width": 1280, "height": 800})
    console.add_cookies([{"name": "sessionid", "value": off_loop(admin_cookie), "url": live_server_url}])
    page = console.new_page()
    page.goto(live_server_url + "/console/validation/ich/")
    page.fill("#id_apply_threshold", "0.7")
    page.click("button:has-text('Apply threshold')")
    page.wait_for_selector(".messages li.success", timeout=10000)

    worklist.wait_for_selector(f'#rows tr:first-child[data-uid="{routine_uid}"]', timeout=10000)
    assert worklist.evaluate("window.__sameDocument") is True
    assert off_loop(lambda: outbox_deliver_due(limit=10).sent) == 1
    report_id = fhir.report_id(study_instance_uid=flagged_uid, finding="ich")
    stored = fhir_server.read("DiagnosticReport", report_id).json()
    assert stored["status"] == "amended"
    assert "not suspected (score 0.60, threshold 0.70" in stored["conclusion"]
    assert "1 open flags changed" in page.locator(".messages").inner_text()

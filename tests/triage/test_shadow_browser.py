"""End to end in Chromium: an admin promotes a shadow model on the console; a radiologist's open worklist page
re-orders without reload, from the shadow's stored scores."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tests.browser import logged_in_page, off_loop
from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory
from triage.core import services as core_services
from triage.models import ModelConfig, ShadowModel, ShadowResult
from worklist.services import worklist_item_sync

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def site_with_a_shadow_model() -> tuple[int, str, str]:
    """Live ich2d 1.0 at 0.5 flags the newer study (0.6), not the older (0.3); the shadow candidate at 0.4 read
    them the other way round (0.1 and 0.9)."""
    ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.5)
    shadow = ShadowModel.objects.create(finding="ich", name="ich-next", version="2.0", weights_path="next.pt",
                                        weights_sha256="ab" * 32, threshold=0.4)  # fmt: skip
    now = timezone.now()
    uids = []
    for minutes_ago, live, shadow_score in ((10, 0.3, 0.9), (1, 0.6, 0.1)):
        study = StudyFactory(received_at=now - timedelta(minutes=minutes_ago), requested_priority="ROUTINE")
        result = ResultFactory(series=SeriesFactory(study=study), score=live, threshold=0.5, model_version="1.0")
        ShadowResult.objects.create(
            shadow_model=shadow, study=study, series=result.series, finding="ich", status="done", model_name="ich-next",
            model_version="2.0", score=shadow_score, threshold=0.4, positive=shadow_score >= 0.4,
        )  # fmt: skip
        worklist_item_sync(study=study)
        uids.append(study.study_instance_uid)
    return shadow.pk, uids[0], uids[1]


def admin_cookie() -> str:
    client = Client()
    client.force_login(core_services.user_role_set(user=UserFactory(username="boss"), role="admin", actor=None))
    return client.cookies["sessionid"].value


def test_promoting_a_shadow_model_re_ranks_an_open_worklist_live(live_server_url, chromium):
    shadow_id, older_uid, newer_uid = off_loop(site_with_a_shadow_model)
    worklist = logged_in_page(chromium, live_server_url, "rad_a")
    worklist.wait_for_selector(f'#rows tr:first-child[data-uid="{newer_uid}"]', timeout=10000)
    worklist.evaluate("window.__sameDocument = true")
    assert "ich-next" not in worklist.locator("#rows").inner_text()  # the shadow model is nowhere on the worklist

    console = chromium.new_context(viewport={"width": 1280, "height": 800})
    console.add_cookies([{"name": "sessionid", "value": off_loop(admin_cookie), "url": live_server_url}])
    page = console.new_page()
    page.goto(f"{live_server_url}/console/shadow/{shadow_id}/")
    page.click("#promote")
    page.wait_for_selector(".messages li.success", timeout=10000)

    worklist.wait_for_selector(f'#rows tr:first-child[data-uid="{older_uid}"]', timeout=10000)
    assert worklist.evaluate("window.__sameDocument") is True
    assert "2 open studies re-evaluated" in page.locator(".messages").inner_text()
    assert page.locator("#promote").count() == 0

"""End to end in Chromium: a real daphne server (WebSockets) on the test database, the Redis channel layer between
the test process (which commits changes) and the server (which pushes them to the browsers)."""

from __future__ import annotations

import os

import pytest

from tests.browser import logged_in_page, off_loop
from tests.factories import ResultFactory, SeriesFactory, StudyFactory
from worklist.services import worklist_item_sync

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = os.environ.get("WORKLIST_SCREENSHOT")


def critical_study(score: float = 0.93):
    study = StudyFactory(study_description="CT HEAD WO CONTRAST", requested_priority="ROUTINE")
    ResultFactory(series=SeriesFactory(study=study), score=score, threshold=0.5, key_image_png=tiny_png())
    return worklist_item_sync(study=study)


def tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def first_row_uid(page) -> str:
    return page.locator("#rows tr").first.get_attribute("data-uid")


def test_two_radiologists_see_critical_study_rise_and_claim(live_server_url, chromium):
    for _ in range(3):
        off_loop(lambda: worklist_item_sync(study=StudyFactory(study_description="CT HEAD ROUTINE")))
    page_a = logged_in_page(chromium, live_server_url, "rad_a")
    page_b = logged_in_page(chromium, live_server_url, "rad_b")
    page_a.wait_for_selector("#rows tr:nth-child(3)")

    item = off_loop(critical_study)
    uid = item.study.study_instance_uid
    for page in (page_a, page_b):
        page.wait_for_selector(f'#rows tr:first-child[data-uid="{uid}"]', timeout=10000)
    alert_text = page_a.locator("#alert").inner_text()
    row_text = page_b.locator("#rows tr").first.inner_text()
    thumb = f'#rows tr[data-uid="{uid}"] td.thumb img'
    page_b.wait_for_function(f"() => document.querySelector('{thumb}')?.naturalWidth === 8", timeout=10000)

    page_a.locator(f'#rows tr[data-uid="{uid}"]').click()
    page_a.keyboard.press("c")
    page_b.wait_for_selector(f'#rows tr[data-uid="{uid}"] td.status:has-text("Claimed by rad_a")', timeout=10000)
    if SCREENSHOT:
        page_a.screenshot(path=SCREENSHOT)

    assert "Suspected ICH — AI advisory, score 0.93 ≥ 0.50" in row_text
    assert "New critical study" in alert_text
    assert first_row_uid(page_b) == uid


def test_escalation_feedback_and_acknowledgement_in_the_browser(live_server_url, chromium):
    from datetime import timedelta

    from django.utils import timezone

    from worklist.models import Feedback, WorklistItem
    from worklist.services import worklist_items_escalate

    item = off_loop(critical_study)
    uid = item.study.study_instance_uid
    page = logged_in_page(chromium, live_server_url, "rad_c")
    page.wait_for_selector(f'#rows tr[data-uid="{uid}"]')

    late = timezone.now() - timedelta(hours=2)
    off_loop(lambda: WorklistItem.objects.filter(pk=item.pk).update(critical_at=late))
    assert off_loop(worklist_items_escalate) == [item.pk]
    page.wait_for_selector(f'#rows tr[data-uid="{uid}"] .badge.escalated', timeout=10000)
    alert_text = page.locator("#alert").inner_text()

    page.locator(f'#rows tr[data-uid="{uid}"]').click()
    page.wait_for_selector('.feedback button[data-verdict="agree"]')
    page.locator('.feedback button[data-verdict="agree"]').click()
    page.wait_for_selector('.feedback button[data-verdict="agree"][aria-pressed="true"]', timeout=10000)
    page.keyboard.press("a")
    page.wait_for_selector(f'#rows tr[data-uid="{uid}"] .badge.ack', timeout=10000)

    verdicts = off_loop(lambda: list(Feedback.objects.values_list("verdict", "model_version", "user__username")))
    acknowledged_by = off_loop(lambda: WorklistItem.objects.get(pk=item.pk).acknowledged_by.username)
    assert "Unacknowledged — escalated" in alert_text
    assert verdicts == [("agree", "0.1.0", "rad_c")]
    assert acknowledged_by == "rad_c"


def test_anonymous_websocket_is_refused_by_the_server(live_server_url, chromium):
    page = chromium.new_page()
    page.goto(live_server_url + "/accounts/login/")
    outcome = page.evaluate(
        """url => new Promise(resolve => {
            const socket = new WebSocket(url);
            socket.onopen = () => resolve("open");
            socket.onclose = () => resolve("refused");
        })""",
        live_server_url.replace("http", "ws") + "/ws/worklist/",
    )
    assert outcome == "refused"


def test_anonymous_page_redirects_to_login(live_server_url, chromium):
    page = chromium.new_page()
    page.goto(live_server_url + "/")
    assert "/accounts/login/" in page.url

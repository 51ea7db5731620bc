"""End to end in Chromium: a real daphne server (WebSockets) on the test database, the Redis channel layer between
the test process (which commits changes) and the server (which pushes them to the browsers)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from django.test import Client

from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory
from tools.procs import free_port, port_open, wait_until
from worklist.services import worklist_item_sync

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOT = os.environ.get("WORKLIST_SCREENSHOT")


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    return f"postgres://{quote(db['USER'])}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def live_server_url(transactional_db, redis_server, settings, tmp_path) -> Iterator[str]:
    if connection.vendor != "postgresql":
        pytest.skip("the server process shares the test database only on PostgreSQL")
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [redis_server.url]}}
    }
    channel_layers.backends.clear()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": redis_server.url, "TRIAGE_DEBUG": "1"}
    log = (tmp_path / "daphne.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "triage.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_open(port), timeout=30, what="daphne")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
        channel_layers.backends.clear()


@pytest.fixture
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def off_loop(fn, *args):
    """Playwright's sync API keeps an event loop in this thread; database and channel-layer calls run beside it."""

    def call():
        try:
            return fn(*args)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result(timeout=30)


def session_cookie(username: str) -> str:
    client = Client()
    client.force_login(UserFactory(username=username))
    return client.cookies["sessionid"].value


def logged_in_page(browser, base_url: str, username: str):
    cookie = off_loop(session_cookie, username)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": cookie, "url": base_url}])
    page = context.new_page()
    page.goto(base_url + "/")
    page.wait_for_selector("#connection.conn-live", timeout=15000)
    return page


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

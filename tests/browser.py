"""Helpers for the Chromium tests (the server and browser fixtures are in ``tests/conftest.py``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from django.db import connection
from django.test import Client

from tests.factories import UserFactory


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

"""Who may open what: every URL in the URLconf (path parameters filled with existing objects) and the WebSocket,
for an anonymous visitor, a radiologist and a site admin."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib import admin
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RegexPattern, RoutePattern

from tests.factories import ResultFactory, SourceFactory, StudyFactory
from triage.asgi import application

# Open to everyone: health checks, the login pages and the token endpoint (it checks the password itself).
PUBLIC = {"healthz", "readyz", "login", "logout", "api-token", "admin:login", "admin:logout"}
# Radiologists' own pages and API.
RADIOLOGIST = {"worklist", "viewer-open"} | {
    "api-worklist",
    "api-study-detail",
    "api-item-claim",
    "api-item-release",
    "api-item-report",
    "api-item-acknowledge",
    "api-item-pin",
    "api-result-feedback",
    "api-result-key-image",
    "api-study-notify",
    "api-schema",
}
LOGIN_PATHS = ("/accounts/login/", "/admin/login/")
# Django's autocomplete view answers 403 to a request that names no model field; it is checked for the others.
ADMIN_REFUSES_WITHOUT_PARAMETERS = {"admin:autocomplete"}


@dataclass(frozen=True)
class Url:
    name: str  # namespaced name, or the route itself for unnamed patterns
    path: str

    @property
    def area(self) -> str:
        if self.name in PUBLIC:
            return "public"
        if self.name in RADIOLOGIST:
            return "radiologist"
        return "admin"


def _fill_route(route: str, values: dict[str, str]) -> str:
    return re.sub(r"<(?:[^>:]+:)?([^>]+)>", lambda m: values[m.group(1)], route)


def _fill_regex(regex: str, values: dict[str, str]) -> str:
    text = re.sub(r"\(\?P<([^>]+)>[^)]*\)", lambda m: values[m.group(1)], regex)
    return text.replace("^", "").replace("\\Z", "").replace("$", "")


def _walk(patterns: list, prefix: str, namespace: str, values: dict[str, str]) -> list[Url]:
    urls = []
    for pattern in patterns:
        raw = str(pattern.pattern)
        if isinstance(pattern.pattern, RoutePattern):
            piece = _fill_route(raw, values)
        else:
            assert isinstance(pattern.pattern, RegexPattern)
            piece = _fill_regex(raw, values)
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}:{pattern.namespace}" if namespace and pattern.namespace else pattern.namespace
            urls += _walk(pattern.url_patterns, prefix + piece, inner or namespace, values)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else (pattern.name or raw)
            urls.append(Url(name=name, path="/" + prefix + piece))
    return urls


def _values(admin_pk: int) -> dict[str, str]:
    from django.contrib.contenttypes.models import ContentType

    from triage.models import Study

    source = SourceFactory()
    result = ResultFactory(series__study=StudyFactory(source=source))
    return {
        "study_instance_uid": result.study.study_instance_uid,
        "result_id": str(result.pk),
        "finding": "ich",
        "table": "roc",
        "object_id": str(admin_pk),
        "id": str(admin_pk),
        "pk": str(admin_pk),
        "app_label": "triage",
        "content_type_id": str(ContentType.objects.get_for_model(Study).pk),
        "url": "nothing-here/",
    }


def _every_url(admin_pk: int) -> list[Url]:
    urls = _walk(get_resolver().url_patterns, "", "", _values(admin_pk))
    for url in urls:
        resolve(url.path.split("?")[0])  # each filled-in path must reach its own view
    return urls


def _refused_by_model_admin(url: Url, request_user) -> bool:
    """Admin views the ModelAdmin refuses to everyone (clinical rows are never added or deleted by hand)."""
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = request_user
    for model, model_admin in admin.site._registry.items():
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}_"
        if url.name == prefix + "add" and not model_admin.has_add_permission(request):
            return True
        if url.name == prefix + "delete" and not model_admin.has_delete_permission(request):
            return True
    return False


def _denied(response) -> bool:
    if response.status_code in (401, 403):
        return True
    return response.status_code in (301, 302) and response["Location"].startswith(LOGIN_PATHS)


def _responses(client: Client, url: Url, user) -> list:
    out = []
    for method in ("get", "post"):
        if user is not None:
            client.force_login(user)  # a POST to a logout view must not end the next request's session
        out.append((method, getattr(client, method)(url.path)))
    return out


@pytest.fixture
def urls(admin_user) -> list[Url]:
    return _every_url(admin_user.pk)


def test_the_matrix_covers_every_area(urls):
    areas = {url.area for url in urls}
    assert areas == {"public", "radiologist", "admin"}
    assert len([u for u in urls if u.name.startswith("admin:")]) > 50


def test_anonymous_visitor_is_refused_everywhere_but_the_public_urls(urls):
    client = Client()
    allowed = [
        (url.path, method, response.status_code)
        for url in urls
        if url.area != "public"
        for method, response in _responses(client, url, None)
        # 405: the method is refused before any view code runs, so nothing is revealed either.
        if not _denied(response) and response.status_code != 405
    ]
    assert allowed == []


def test_radiologist_reaches_the_worklist_but_no_admin_or_console_page(urls, radiologist):
    client = Client()
    wrong = []
    for url in urls:
        for method, response in _responses(client, url, radiologist):
            if url.area == "admin" and response.status_code != 403:
                wrong.append((url.path, method, response.status_code, "expected 403"))
            if url.area == "radiologist" and _denied(response):
                wrong.append((url.path, method, response.status_code, "expected access"))
    assert wrong == []


def test_site_admin_reaches_everything_the_models_allow(urls, admin_user):
    client = Client()
    denied = [
        (url.path, method, response.status_code)
        for url in urls
        if url.area != "public" and url.name not in ADMIN_REFUSES_WITHOUT_PARAMETERS
        for method, response in _responses(client, url, admin_user)
        if _denied(response)
        and not (url.name.startswith("admin:") and _refused_by_model_admin(url, admin_user))
        # An admin POST to a read-only admin view is refused by design; its GET is checked.
        and not (method == "post" and url.name.startswith("admin:") and response.status_code == 403)
    ]
    assert denied == [], denied


@pytest.mark.django_db(transaction=True)
async def test_anonymous_websocket_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/worklist/", headers=[(b"origin", b"http://127.0.0.1:8000")])
    connected, code = await communicator.connect(timeout=5)
    assert (connected, code) == (False, 4401)


async def _socket_with_session_of(username: str, role: str) -> tuple[bool, object]:
    from channels.db import database_sync_to_async

    from tests.factories import UserFactory

    def session_cookie() -> str:
        client = Client()
        client.force_login(UserFactory(username=username, role=role))
        return client.cookies["sessionid"].value

    cookie = await database_sync_to_async(session_cookie)()
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"cookie", f"sessionid={cookie}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/worklist/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected, code


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ["radiologist", "admin"])
async def test_signed_in_user_websocket_is_accepted(role):
    from channels.db import database_sync_to_async
    from django.db import connection

    connected, _ = await _socket_with_session_of(f"ws-{role}", role)
    await database_sync_to_async(lambda: connection.close())()  # the worker thread's own connection
    assert connected

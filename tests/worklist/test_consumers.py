"""The /ws/worklist/ consumer: login required, one event per committed change, in sequence, and a heartbeat that
crosses the channel layer."""

from __future__ import annotations

import asyncio
import logging

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import connection

from tests.factories import StudyFactory, UserFactory
from triage.asgi import application
from worklist import consumers, services
from worklist.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = [(b"origin", b"http://127.0.0.1:8000")]


@pytest.fixture(autouse=True)
async def close_worker_connection():
    """The consumer reads from a worker thread; close its connection so the test database can be dropped."""
    yield
    await database_sync_to_async(lambda: connection.close())()


async def connected(username: str = "ws1") -> WebsocketCommunicator:
    user = await database_sync_to_async(UserFactory)(username=username)
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/worklist/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def test_anonymous_websocket_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/worklist/", headers=ORIGIN)
    connected, code = await communicator.connect(timeout=5)
    assert (connected, code) == (False, 4401)


async def test_logged_in_client_gets_hello_with_current_sequence():
    communicator = await connected()
    hello = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    assert hello == {"type": "hello", "seq": 0, "beat_seconds": consumers.BEAT_SECONDS}


async def test_new_study_is_pushed_after_commit_with_item_payload():
    communicator = await connected()
    await communicator.receive_json_from(timeout=5)
    item = await database_sync_to_async(lambda: services.worklist_item_sync(study=StudyFactory()))()
    event = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    assert (event["type"], event["kind"], event["seq"], event["item"]["id"], event["item"]["rank"]) == (
        "item",
        "added",
        1,
        item.pk,
        1,
    )


async def test_claim_is_pushed_to_every_client_in_sequence():
    first, second = await connected("ws1"), await connected("ws2")
    for c in (first, second):
        await c.receive_json_from(timeout=5)

    def add_and_claim():
        item = services.worklist_item_sync(study=StudyFactory())
        user = UserFactory(username="claimer")
        services.worklist_item_claim(study_instance_uid=item.study.study_instance_uid, user=user)

    await database_sync_to_async(add_and_claim)()
    seen = []
    for c in (first, second):
        added, claimed = await c.receive_json_from(timeout=5), await c.receive_json_from(timeout=5)
        seen.append((added["seq"], claimed["seq"], claimed["item"]["claimed_by"], "claim" in claimed["changes"]))
        await c.disconnect()
    assert seen == [(1, 2, "claimer", True)] * 2


async def test_ping_gets_pong():
    communicator = await connected()
    await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to({"type": "ping"})
    pong = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    assert pong == {"type": "pong"}


async def test_event_relay_skips_the_per_message_database_cleanup(monkeypatch):
    """Each relayed event would otherwise wait its turn in the single sync thread, one socket after another."""
    import channels.consumer
    from channels.layers import get_channel_layer

    from worklist import events

    calls = []

    async def counting_cleanup():
        calls.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting_cleanup)
    communicator = await connected()
    await communicator.receive_json_from(timeout=5)
    calls.clear()
    await get_channel_layer().group_send(events.WORKLIST_GROUP, {"type": events.EVENT_TYPE, "text": '{"seq": 7}'})
    relayed = await communicator.receive_json_from(timeout=5)
    during_relay = len(calls)
    await communicator.send_json_to({"type": "ping"})  # other messages still clean up first
    pong = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    assert (relayed, during_relay, pong, len(calls) >= 1) == ({"seq": 7}, 0, {"type": "pong"}, True)


@pytest.fixture
def quick_beats(monkeypatch):
    """Beats every 50 ms; a slow machine must not close the socket for beats merely late (the close has its test)."""
    monkeypatch.setattr(consumers, "BEAT_SECONDS", 0.05)
    monkeypatch.setattr(consumers, "BEAT_MISSES_BEFORE_CLOSE", 1000)


async def next_of_type(communicator: WebsocketCommunicator, kind: str) -> dict:
    """The next message of one type; beats and events interleave at a short beat interval."""
    async with asyncio.timeout(10):
        while True:
            message = await communicator.receive_json_from(timeout=5)
            if message["type"] == kind:
                return message


async def test_beat_crosses_the_layer_and_carries_the_current_sequence(quick_beats):
    communicator = await connected()
    await communicator.receive_json_from(timeout=5)
    first = await next_of_type(communicator, "beat")
    await database_sync_to_async(lambda: services.worklist_item_sync(study=StudyFactory()))()
    await next_of_type(communicator, "item")
    after_change = await next_of_type(communicator, "beat")
    await communicator.disconnect()
    assert (first, after_change) == ({"type": "beat", "seq": 0}, {"type": "beat", "seq": 1})


async def test_beat_that_cannot_be_sent_is_logged_once_and_the_socket_closed_for_a_fresh_subscription(
    quick_beats, monkeypatch, caplog
):
    from channels.layers import get_channel_layer

    async def layer_down(channel, message):
        raise ConnectionError("event path down")

    monkeypatch.setattr(consumers, "BEAT_MISSES_BEFORE_CLOSE", 2)
    communicator = await connected()
    await communicator.receive_json_from(timeout=5)
    monkeypatch.setattr(get_channel_layer(), "send", layer_down)
    with caplog.at_level(logging.WARNING, logger="worklist.consumers"):
        async with asyncio.timeout(10):
            closed = await communicator.receive_output(timeout=5)
            while closed["type"] != "websocket.close":  # a beat sent before the layer went down may come first
                closed = await communicator.receive_output(timeout=5)
    await communicator.wait(timeout=5)
    not_sent = [r for r in caplog.records if "could not be sent" in r.getMessage()]
    assert (closed, len(not_sent)) == ({"type": "websocket.close", "code": consumers.CLOSE_EVENT_PATH_LOST}, 1)


async def test_beat_task_ends_when_the_client_disconnects(quick_beats):
    communicator = await connected()
    await communicator.receive_json_from(timeout=5)
    await next_of_type(communicator, "beat")
    beats = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "WorklistConsumer.beat_loop"]
    await communicator.disconnect()
    await asyncio.wait(beats, timeout=5)
    assert [t.cancelled() for t in beats] == [True]


async def test_a_socket_closes_once_its_session_signs_out(quick_beats):
    from django.test import Client

    def signed_in() -> tuple[Client, str]:
        client = Client()
        client.force_login(UserFactory(username="leaving"))
        return client, client.cookies["sessionid"].value

    client, cookie = await database_sync_to_async(signed_in)()
    headers = [*ORIGIN, (b"cookie", f"sessionid={cookie}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/worklist/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    await communicator.receive_json_from(timeout=5)

    await database_sync_to_async(client.logout)()
    closed = await asyncio.wait_for(_closed(communicator), timeout=15)

    assert connected
    assert closed == {"type": "websocket.close", "code": consumers.CLOSE_UNAUTHENTICATED}


async def _closed(communicator: WebsocketCommunicator) -> dict:
    """The close message, skipping the beats sent before it."""
    while True:
        message = await communicator.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            return message

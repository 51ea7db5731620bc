"""WebSocket consumer for the live worklist: logged-in users only; relays committed events from the group and sends
a heartbeat that travels the event path itself, so the page can tell a live socket from a live event path."""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from triage.models import User
from worklist import events, selectors

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
# Closed by the server because its own heartbeats stopped coming back: the client reconnects and subscribes anew.
CLOSE_EVENT_PATH_LOST = 4503
BEAT_SECONDS = 5.0
# Beats sent without any coming back before the socket is closed (about BEAT_SECONDS * (this + 1) after a loss).
BEAT_MISSES_BEFORE_CLOSE = 2


class WorklistConsumer(AsyncJsonWebsocketConsumer):
    beat_task: asyncio.Task[None] | None = None
    beats_missing = 0
    layer_error_logged = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Closing before accept refuses the handshake (HTTP 403).
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.channel_layer.group_add(events.WORKLIST_GROUP, self.channel_name)
        await self.accept()
        seq = await database_sync_to_async(selectors.worklist_seq)()
        await self.send_json(events.hello_event(seq=seq, beat_seconds=BEAT_SECONDS))
        self.beat_task = asyncio.create_task(self.beat_loop())

    async def disconnect(self, code: int) -> None:
        if self.beat_task is not None:
            self.beat_task.cancel()
        try:
            await self.channel_layer.group_discard(events.WORKLIST_GROUP, self.channel_name)
        except Exception as err:  # noqa: BLE001 - each layer backend raises its own errors; the socket is gone anyway
            logger.warning("Worklist socket left its group uncleanly (%s)", type(err).__name__)

    async def receive_json(self, content: dict, **kwargs: object) -> None:
        """Clients only listen; a ping keeps proxies from closing an idle socket."""
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def dispatch(self, message: dict) -> None:
        if message["type"] == events.EVENT_TYPE:
            # Relaying an event that is already encoded touches no database, so the per-message connection
            # clean-up of AsyncConsumer.dispatch is skipped: it hops through the one thread that runs sync code,
            # which would queue the fan-out to every socket behind it (about half a millisecond each).
            await self.worklist_event(message)
            return
        if message["type"] == events.BEAT_TYPE:
            # The beat proves the layer's path when it arrives, not when the sync thread is next free.
            self.beats_missing = 0
        await super().dispatch(message)

    def sign_in_holds(self) -> bool:
        """The session that opened the socket still exists and its user is still active."""
        user, session = self.scope.get("user"), self.scope.get("session")
        if user is None or not User.objects.filter(pk=user.pk, is_active=True).exists():
            return False
        key = getattr(session, "session_key", None) if session is not None else None
        return session is None or (key is not None and session.exists(key))

    async def worklist_event(self, event: dict) -> None:
        await self.send(text_data=event["text"])

    async def worklist_beat(self, message: dict) -> None:
        """Our own beat came back through the layer: the path that carries events works; tell the client its seq."""
        seq = await database_sync_to_async(selectors.worklist_seq)()
        await self.send_json(events.beat_event(seq=seq))

    async def beat_loop(self) -> None:
        while True:
            await asyncio.sleep(BEAT_SECONDS)
            if not await database_sync_to_async(self.sign_in_holds)():
                # Signed out (or deactivated) elsewhere: a socket must not outlive the session that opened it.
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
            if self.beats_missing >= BEAT_MISSES_BEFORE_CLOSE:
                logger.warning("Worklist heartbeats stopped coming back: closing the socket so the client resubscribes")
                await self.close(code=CLOSE_EVENT_PATH_LOST)
                return
            self.beats_missing += 1
            await self.beat_send()

    async def beat_send(self) -> None:
        try:
            await self.channel_layer.send(self.channel_name, {"type": events.BEAT_TYPE})
        except Exception as err:  # noqa: BLE001 - each layer backend raises its own errors; all mean "path down"
            if not self.layer_error_logged:
                self.layer_error_logged = True
                logger.warning("Worklist heartbeat could not be sent (%s)", type(err).__name__)

"""WebSocket consumer for the live worklist: logged-in users only; relays committed events from the group."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from worklist import events, selectors

CLOSE_UNAUTHENTICATED = 4401


class WorklistConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Closing before accept refuses the handshake (HTTP 403).
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.channel_layer.group_add(events.WORKLIST_GROUP, self.channel_name)
        await self.accept()
        seq = await database_sync_to_async(selectors.worklist_seq)()
        await self.send_json(events.hello_event(seq=seq))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(events.WORKLIST_GROUP, self.channel_name)

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
        await super().dispatch(message)

    async def worklist_event(self, event: dict) -> None:
        await self.send(text_data=event["text"])

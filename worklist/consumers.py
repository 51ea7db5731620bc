"""WebSocket consumer for the live worklist (issue 4 fills in the events)."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

WORKLIST_GROUP = "worklist"


class WorklistConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(WORKLIST_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(WORKLIST_GROUP, self.channel_name)

    async def worklist_event(self, event: dict) -> None:
        await self.send_json(event["payload"])

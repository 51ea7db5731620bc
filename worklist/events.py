"""WebSocket events: the group name, the payload shapes and the broadcast (called only after commit).

Every event carries ``seq``, taken from WorklistEventCounter in the transaction that made the change: a client
that sees a gap (or an older number) reloads the REST snapshot, whose ``seq`` tells it where to resume.
"""

from __future__ import annotations

import json
from datetime import datetime

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from worklist.models import WorklistItem
from worklist.serializers import WorklistItemSerializer

WORKLIST_GROUP = "worklist"
EVENT_TYPE = "worklist.event"  # handled by WorklistConsumer.worklist_event
BEAT_TYPE = "worklist.beat"  # a consumer's heartbeat to itself, handled by WorklistConsumer.worklist_beat

KIND_ADDED = "added"
KIND_CHANGED = "changed"
KIND_ESCALATED = "escalated"

CHANGE_RANK = "rank"
CHANGE_STATUS = "status"
CHANGE_CLAIM = "claim"
CHANGE_FINDINGS = "findings"
CHANGE_ACKNOWLEDGED = "acknowledged"
CHANGE_ESCALATED = "escalated"
CHANGE_PIN = "pin"


def item_event(*, seq: int, kind: str, changes: list[str], item: WorklistItem, now: datetime) -> dict:
    return {
        "type": "item",
        "seq": seq,
        "kind": kind,
        "changes": sorted(set(changes)),
        "item": WorklistItemSerializer(item, context={"now": now}).data,
    }


def hello_event(*, seq: int, beat_seconds: float) -> dict:
    """Sent on connect: where the client resumes, and how often a beat proves the event path while connected."""
    return {"type": "hello", "seq": seq, "beat_seconds": beat_seconds}


def beat_event(*, seq: int) -> dict:
    """A heartbeat that crossed the channel layer; a ``seq`` ahead of the client's means it missed events."""
    return {"type": "beat", "seq": seq}


def broadcast(payload: dict) -> None:
    """Send one committed event to every connected worklist. Registered with ``on_commit(robust=True)``, so a
    channel-layer outage is logged and never undoes the change; clients resync on the next seq gap."""
    layer = get_channel_layer()
    if layer is None:
        return
    # Encoded once here rather than once per connected socket.
    async_to_sync(layer.group_send)(WORKLIST_GROUP, {"type": EVENT_TYPE, "text": json.dumps(payload)})

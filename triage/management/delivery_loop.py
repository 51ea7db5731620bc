"""The loop that ``manage.py triage_outbox`` and ``manage.py triage_writeback`` run until stopped: delivery rounds,
an idle wait when nothing was due, the worker heartbeat, and rounds that survive database errors."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import close_old_connections

from triage.core.outbox import DeliverySummary
from triage.core.services import worker_heartbeat
from triage.core.workers import this_worker_id

HEARTBEAT_SECONDS = 10.0


@dataclass(frozen=True)
class DeliveryLoop:
    kind: str  # the worker's role and heartbeat kind
    label: str  # names the loop in log lines
    sent_word: str  # what a delivered message is called in the round's log line
    deliver: Callable[[int, str], DeliverySummary]  # one round: (batch, worker_id)
    logger: logging.Logger


def delivery_loop_run(loop: DeliveryLoop, *, once: bool, batch: int, idle: float) -> None:
    """Deliver rounds of up to ``batch`` until SIGINT or SIGTERM; with ``once``, until a round claims less."""
    stop = threading.Event()
    if not once:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    worker_id = this_worker_id(loop.kind)
    last_beat = 0.0
    while not stop.is_set():
        if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
            last_beat = _beat(loop, worker_id)
        claimed = _round(loop, worker_id=worker_id, batch=batch)
        if once and claimed < batch:
            return
        if claimed == 0:
            stop.wait(idle)
        # Between rounds, so a database restart or a stale connection costs one round, not the process.
        close_old_connections()


def _beat(loop: DeliveryLoop, worker_id: str) -> float:
    try:
        worker_heartbeat(worker_id=worker_id, kind=loop.kind)
    except Exception as err:  # noqa: BLE001 - the loop boundary: the next beat may succeed
        loop.logger.error("%s heartbeat failed with %s", loop.label, type(err).__name__)
    return time.monotonic()


def _round(loop: DeliveryLoop, *, worker_id: str, batch: int) -> int:
    try:
        summary = loop.deliver(batch, worker_id)
    except Exception as err:  # noqa: BLE001 - the loop boundary: log the type (never payloads) and try again next round
        close_old_connections()
        loop.logger.error("%s round failed with %s", loop.label, type(err).__name__)
        return 0
    if summary.claimed:
        loop.logger.info(
            "%s: %d %s, %d to retry, %d dead-lettered",
            loop.label,
            summary.sent,
            loop.sent_word,
            summary.retried,
            summary.dead,
        )
    return summary.claimed

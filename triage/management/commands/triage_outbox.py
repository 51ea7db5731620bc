"""``manage.py triage_outbox``: deliver due FHIR reports to every enabled EMR endpoint, and beat the heartbeat."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from triage.core.services import worker_heartbeat
from triage.core.workers import this_worker_id
from triage.fhir.delivery import outbox_deliver_due
from triage.fhir.outbox import endpoint_ensure_from_env, endpoints_enabled, outbox_backfill

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


class Command(BaseCommand):
    help = "Deliver queued advisory FHIR reports (retries, backoff, dead letters) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Deliver what is due now, then exit.")
        parser.add_argument("--batch", type=int, default=50, help="Messages claimed per round (default 50).")
        parser.add_argument("--idle", type=float, default=1.0, help="Seconds to wait when nothing is due.")
        parser.add_argument(
            "--backfill",
            action="store_true",
            help="First queue current results that an enabled endpoint has never had a report for.",
        )

    def handle(self, *args: Any, once: bool, batch: int, idle: float, backfill: bool, **options: Any) -> None:
        endpoint_ensure_from_env()
        if backfill:
            for endpoint in endpoints_enabled():
                while queued := outbox_backfill(endpoint=endpoint):
                    logger.info("outbox: %d earlier result(s) queued for %s", queued, endpoint.name)
        stop = threading.Event()
        if not once:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
        worker_id = this_worker_id("outbox")
        last_beat = 0.0
        while not stop.is_set():
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = self._beat(worker_id)
            claimed = self._round(worker_id=worker_id, batch=batch)
            if once and claimed < batch:
                return
            if claimed == 0:
                stop.wait(idle)
            # Between rounds, so a database restart or a stale connection costs one round, not the process.
            close_old_connections()

    def _beat(self, worker_id: str) -> float:
        try:
            worker_heartbeat(worker_id=worker_id, kind="outbox")
        except Exception as err:  # noqa: BLE001 - the loop boundary: the next beat may succeed
            logger.error("outbox heartbeat failed with %s", type(err).__name__)
        return time.monotonic()

    def _round(self, *, worker_id: str, batch: int) -> int:
        try:
            summary = outbox_deliver_due(limit=batch, worker_id=worker_id)
        except Exception as err:  # noqa: BLE001 - the loop boundary: log the type (never payloads) and try again next round
            close_old_connections()
            logger.error("outbox round failed with %s", type(err).__name__)
            return 0
        if summary.claimed:
            logger.info("outbox: %d sent, %d to retry, %d dead-lettered", summary.sent, summary.retried, summary.dead)
        return summary.claimed

"""``manage.py triage_writeback``: store due AI results (DICOM SR + key image) back in their PACS, and beat the
heartbeat."""

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
from triage.ingest.dicomweb import client_for_source
from triage.ingest.services import source_ensure_from_env
from triage.writeback.delivery import writeback_deliver_due

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


class Command(BaseCommand):
    help = "Store queued AI results in the PACS by STOW-RS (retries, backoff, dead letters) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Deliver what is due now, then exit.")
        parser.add_argument("--batch", type=int, default=20, help="Versions claimed per round (default 20).")
        parser.add_argument("--idle", type=float, default=1.0, help="Seconds to wait when nothing is due.")

    def handle(self, *args: Any, once: bool, batch: int, idle: float, **options: Any) -> None:
        source_ensure_from_env()  # applies TRIAGE_PACS_WRITE_BACK to the default source
        stop = threading.Event()
        if not once:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
        worker_id = this_worker_id("writeback")
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
            worker_heartbeat(worker_id=worker_id, kind="writeback")
        except Exception as err:  # noqa: BLE001 - the loop boundary: the next beat may succeed
            logger.error("write-back heartbeat failed with %s", type(err).__name__)
        return time.monotonic()

    def _round(self, *, worker_id: str, batch: int) -> int:
        try:
            summary = writeback_deliver_due(client_for=client_for_source, limit=batch, worker_id=worker_id)
        except Exception as err:  # noqa: BLE001 - the loop boundary: log the type (never payloads), try next round
            close_old_connections()
            logger.error("write-back round failed with %s", type(err).__name__)
            return 0
        if summary.claimed:
            logger.info(
                "write-back: %d stored, %d to retry, %d dead-lettered", summary.sent, summary.retried, summary.dead
            )
        return summary.claimed

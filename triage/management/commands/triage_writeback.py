"""``manage.py triage_writeback``: store due AI results (DICOM SR + key image) back in their PACS, and beat the
heartbeat."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from triage.ingest.dicomweb import client_for_source
from triage.ingest.services import source_ensure_from_env
from triage.management.delivery_loop import DeliveryLoop, delivery_loop_run
from triage.writeback.delivery import writeback_deliver_due

logger = logging.getLogger(__name__)

LOOP = DeliveryLoop(
    kind="writeback",
    label="write-back",
    sent_word="stored",
    deliver=lambda batch, worker_id: writeback_deliver_due(
        client_for=client_for_source, limit=batch, worker_id=worker_id
    ),
    logger=logger,
)


class Command(BaseCommand):
    help = "Store queued AI results in the PACS by STOW-RS (retries, backoff, dead letters) until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Deliver what is due now, then exit.")
        parser.add_argument("--batch", type=int, default=20, help="Versions claimed per round (default 20).")
        parser.add_argument("--idle", type=float, default=1.0, help="Seconds to wait when nothing is due.")

    def handle(self, *args: Any, once: bool, batch: int, idle: float, **options: Any) -> None:
        source_ensure_from_env()  # applies TRIAGE_PACS_WRITE_BACK to the default source
        delivery_loop_run(LOOP, once=once, batch=batch, idle=idle)

"""``manage.py triage_outbox``: deliver due FHIR reports to every enabled EMR endpoint, and beat the heartbeat."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from triage.fhir.delivery import outbox_deliver_due
from triage.fhir.outbox import endpoint_ensure_from_env, endpoints_enabled, outbox_backfill
from triage.management.delivery_loop import DeliveryLoop, delivery_loop_run

logger = logging.getLogger(__name__)

LOOP = DeliveryLoop(
    kind="outbox",
    label="outbox",
    sent_word="sent",
    deliver=lambda batch, worker_id: outbox_deliver_due(limit=batch, worker_id=worker_id),
    logger=logger,
)


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
        delivery_loop_run(LOOP, once=once, batch=batch, idle=idle)

"""``manage.py triage_escalate``: escalates critical findings left unacknowledged and posts (and retries) their
webhook notifications, beating a heartbeat each round."""

from __future__ import annotations

import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from triage.core.services import worker_heartbeat
from triage.core.workers import this_worker_id
from worklist.services import worklist_escalations_notify, worklist_items_escalate

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Escalate critical AI findings not acknowledged within TRIAGE_ACK_TIMEOUT_MINUTES, and post each escalation "
        "to TRIAGE_ESCALATION_WEBHOOK_URL until it answers 2xx (retried with backoff, a bounded number of times)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One round, then exit")
        parser.add_argument("--interval", type=float, default=10.0, help="Seconds between rounds (default 10)")

    def handle(self, *args: object, once: bool = False, interval: float = 10.0, **options: object) -> None:
        worker_id = this_worker_id("escalate")
        stop = threading.Event()
        if not once:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.is_set():
            self._round(worker_id)
            if once:
                return
            stop.wait(interval)
            close_old_connections()  # a long-lived loop must not keep a broken or stale connection

    def _round(self, worker_id: str) -> None:
        try:
            worker_heartbeat(worker_id=worker_id, kind="escalate")
            escalated = worklist_items_escalate()
        except Exception:
            logger.exception("escalation round failed")
            return
        if escalated:
            logger.info("escalated %d unacknowledged critical item(s)", len(escalated))
        try:
            # After the escalations' commit, and each round: failed posts come due again with backoff.
            notified = worklist_escalations_notify()
        except Exception:
            logger.exception("escalation notification round failed")
            return
        if notified:
            logger.info("notified the escalation webhook of %d item(s)", len(notified))

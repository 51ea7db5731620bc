"""``manage.py triage_poll``: poll every enabled source, sweep expired job leases, check the models' flag rates, and
beat the heartbeat."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from triage.core.services import worker_heartbeat
from triage.core.workers import this_worker_id
from triage.governance.services import model_alerts_check
from triage.ingest.jobs import jobs_sweep
from triage.ingest.poll import sources_poll
from triage.ingest.services import source_ensure_from_env

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


class Command(BaseCommand):
    help = "Poll DICOMweb sources for new CT studies and recover jobs whose worker died."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One poll and one sweep, then exit.")
        parser.add_argument("--no-poll", action="store_true", help="Only sweep leases and beat (no QIDO-RS).")

    def handle(self, *args: Any, once: bool, no_poll: bool, **options: Any) -> None:
        stop = threading.Event()
        if not once:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
        worker_id = this_worker_id("poll")
        source_ensure_from_env()
        while not stop.is_set():
            if not once:
                close_old_connections()  # a long-running loop drops broken or expired connections, as a request would
            self._cycle(worker_id=worker_id, poll=not no_poll)
            if once:
                return
            self._wait(stop, worker_id)

    def _cycle(self, *, worker_id: str, poll: bool) -> None:
        try:
            worker_heartbeat(worker_id=worker_id, kind="poller")
            if poll:
                for name, report in sources_poll().items():
                    if report.queued:
                        logger.info("source %s: %d new study(ies) queued", name, len(report.queued))
            jobs_sweep()
            model_alerts_check()
        except Exception as err:  # noqa: BLE001 - the loop boundary: log the type (never payloads) and try again next cycle
            logger.error("poll cycle failed with %s", type(err).__name__)

    def _wait(self, stop: threading.Event, worker_id: str) -> None:
        deadline = time.monotonic() + settings.TRIAGE_POLL_SECONDS
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if stop.wait(min(remaining, HEARTBEAT_SECONDS)):
                return
            if deadline - time.monotonic() > 0:
                close_old_connections()
                worker_heartbeat(worker_id=worker_id, kind="poller")

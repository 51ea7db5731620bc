"""``manage.py triage_ingest``: an ingest worker, i.e. django-tasks-db's ``db_worker`` (same options) made ready for
its first study before it claims one: freed memory is kept for the next study and the enabled models are loaded."""

from __future__ import annotations

import logging
import time
from typing import Any

from django_tasks_db.management.commands.db_worker import Command as DbWorkerCommand

from triage.core.workers import memory_keep_freed

logger = logging.getLogger(__name__)


class Command(DbWorkerCommand):
    help = "Run an ingest worker (db_worker options), with its models loaded before the first task."

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        kept = memory_keep_freed()
        # The pipeline is what every task runs; importing it here keeps the import off the first study's clock.
        from triage.ingest import pipeline  # noqa: F401
        from triage.ingest.runners import runners_preload

        loaded = runners_preload()
        logger.info(
            "ingest worker ready in %.1f s: models %s, freed memory %s",
            time.monotonic() - started,
            ", ".join(loaded) or "none",
            "kept" if kept else "returned to the kernel",
        )
        super().handle(*args, **options)

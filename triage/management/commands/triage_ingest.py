"""``manage.py triage_ingest``: an ingest worker, i.e. django-tasks-db's ``db_worker`` (same options) made ready for
its first study before it claims one: freed memory is kept for the next study, the enabled models are loaded and the
pipeline and URLconf imported."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.urls import get_resolver
from django_tasks_db.management.commands.db_worker import Command as DbWorkerCommand

from triage.core.workers import memory_keep_freed

logger = logging.getLogger(__name__)


class Command(DbWorkerCommand):
    help = "Run an ingest worker (db_worker options), with its models loaded before the first task."

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        kept = memory_keep_freed()
        # What every task runs, imported now rather than on the first study's clock: the pipeline, and the URLconf
        # that the first worklist event resolves its key-image link against (it imports every view: seconds, inside
        # the transaction that records the first result).
        from triage.ingest import pipeline  # noqa: F401
        from triage.ingest.runners import runners_preload

        get_resolver().url_patterns  # noqa: B018 - loading the URLconf is the point
        loaded = runners_preload()
        logger.info(
            "ingest worker ready in %.1f s: models %s, freed memory %s",
            time.monotonic() - started,
            ", ".join(loaded) or "none",
            "kept" if kept else "returned to the kernel",
        )
        super().handle(*args, **options)

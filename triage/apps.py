from __future__ import annotations

import logging

from django.apps import AppConfig


class TriageConfig(AppConfig):
    name = "triage"
    verbose_name = "Triage pipeline"

    def ready(self) -> None:
        # pydicom sets its logger to WARNING when first imported, over the LOGGING setting, then warns about each odd
        # element (the coded VolumeErrors report those) and its own deprecations (deid imports one): errors only.
        import pydicom  # noqa: F401

        logging.getLogger("pydicom").setLevel(logging.ERROR)

"""``manage.py triage_seed_defaults``: the default routing rules and model configurations, created once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from triage.fhir.outbox import endpoint_ensure_from_env
from triage.ingest.routing import routing_seed_defaults
from triage.ingest.services import source_ensure_from_env


class Command(BaseCommand):
    help = (
        "Create the default routing rules (ICH: non-contrast head CT; LVO: head and neck CT angiography) and model "
        "configurations that are missing. Safe to run again: edited rows are kept unless --reset is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--weights-dir",
            type=Path,
            default=None,
            help="Where the model cards are (default: TRIAGE_MODEL_DIR, else the weights shipped in the package).",
        )
        parser.add_argument(
            "--reset", action="store_true", help="Restore edited default rules and model thresholds to the defaults."
        )

    def handle(self, *args: Any, weights_dir: Path | None, reset: bool, **options: Any) -> None:
        directory = weights_dir or _default_weights_dir()
        try:
            report = routing_seed_defaults(weights_dir=directory, reset=reset)
        except ValueError as err:
            raise CommandError(str(err)) from err
        source, endpoint = source_ensure_from_env(), endpoint_ensure_from_env()
        for label, row in (("source", source), ("FHIR endpoint", endpoint)):
            if row is not None:
                self.stdout.write(f"from the environment: {label} {row.name}")
        for outcome in ("created", "updated", "unchanged"):
            for label in report[outcome]:
                self.stdout.write(f"{outcome}: {label}")


def _default_weights_dir() -> Path:
    configured = settings.TRIAGE_MODEL_DIR
    return Path(configured) if configured else Path(settings.BASE_DIR) / "inference" / "weights"

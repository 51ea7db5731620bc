"""``manage.py triage_token_create --user NAME``: print a new API token for a user (a PACS hook, a script).

Only the token's digest is stored, so this is the one time it can be read. ``--from-env VAR`` stores a token the
caller generated instead (tools that must write it into a PACS configuration before the app starts).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from triage.core.env import env_str
from triage.core.exceptions import TriageError
from triage.core.services import token_create, token_register
from triage.models import User


class Command(BaseCommand):
    help = "Create an expiring API token for a user and print it (only its digest is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="Username the token acts as")
        parser.add_argument("--ttl-hours", type=int, help="Lifetime in hours (default TRIAGE_TOKEN_TTL_HOURS)")
        parser.add_argument(
            "--from-env", metavar="VAR", help="Store the token held in this environment variable instead; print nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["user"]).first()
        if user is None or not user.is_active:
            raise CommandError(f"No active user {options['user']!r}.")
        hours = options["ttl_hours"]
        if hours is not None and hours < 1:
            raise CommandError("--ttl-hours must be at least 1.")
        ttl = timedelta(hours=hours) if hours else None
        try:
            if options["from_env"]:
                token_register(user=user, token=self._token_from_env(options["from_env"]), ttl=ttl)
                return
            self.stdout.write(token_create(user=user, ttl=ttl))
        except TriageError as err:
            raise CommandError(err.message) from err

    def _token_from_env(self, name: str) -> str:
        token = env_str(name)
        if not token:
            raise CommandError(f"{name} is not set.")
        return token

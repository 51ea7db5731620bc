"""The migrations describe the models: ``makemigrations --check`` finds nothing to write."""

from __future__ import annotations

import contextlib
import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_models_and_migrations_agree():
    out = io.StringIO()

    with contextlib.suppress(SystemExit):  # --check exits 1 after listing what it would write
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)

    assert "No changes detected" in out.getvalue(), out.getvalue()

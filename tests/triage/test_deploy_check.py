"""Production settings pass Django's deployment checklist."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_check_deploy_reports_nothing_in_production_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_") and k != "DATABASE_URL"}
    env |= {"SECRET_KEY": secrets.token_urlsafe(60), "TRIAGE_SQLITE_PATH": str(tmp_path / "db.sqlite3")}
    run = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (run.returncode, run.stderr.strip(), run.stdout.strip()) == (
        0,
        "",
        "System check identified no issues (0 silenced).",
    )

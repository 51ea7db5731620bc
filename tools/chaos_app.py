"""The app under chaos: ``python -m tools.run`` in its own session, its supervised processes, and its users."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
SUPERVISORCTL = Path(sys.executable).parent / "supervisorctl"
READER = "chaos-reader"
HOOK = "chaos-pacs"


@dataclass
class App:
    """``python -m tools.run`` in its own session; SIGTERM stops supervisord and every program it started."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['TRIAGE_HTTP_PORT']}"

    @property
    def supervisor_conf(self) -> Path:
        return ROOT / ".run" / f"run-{self.env['TRIAGE_HTTP_PORT']}" / "supervisord.conf"

    def start(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.run"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.answers("/readyz"), timeout=timeout, what="the app's /readyz", fail=self.exited)

    def exited(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            return f"tools.run exited with {self.process.returncode}"
        return None

    def answers(self, path: str) -> bool:
        try:
            return requests.get(f"{self.url}{path}", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def manage(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return done.stdout

    def supervisorctl(self, *args: str) -> str:
        done = subprocess.run(
            [str(SUPERVISORCTL), "-c", str(self.supervisor_conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout

    def programs(self) -> dict[str, str]:
        """Each supervised process and its state (RUNNING, STARTING, BACKOFF …)."""
        states = {}
        for line in self.supervisorctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                states[parts[0]] = parts[1]
        return states

    def pid(self, name: str) -> int | None:
        out = self.supervisorctl("pid", name).strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what this run started
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.supervisor_conf.parent, ignore_errors=True)


def wait_for(
    check: Callable[[], bool], *, timeout: float, what: str, fail: Callable[[], str | None] = lambda: None
) -> float:
    """Poll ``check`` once a second until true; returns the seconds waited, raises TimeoutError after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        reason = fail()
        if reason:
            raise RuntimeError(f"{what}: {reason}")
        time.sleep(1.0)
    raise TimeoutError(f"{what} not reached after {timeout:.0f} s")


USERS_SCRIPT = f"""
import os
from triage.models import User
reader, _ = User.objects.get_or_create(username="{READER}")
reader.role = "radiologist"
reader.set_password(os.environ["CHAOS_PASSWORD"])
reader.save()
hook, _ = User.objects.get_or_create(username="{HOOK}")
hook.role = "radiologist"
hook.set_unusable_password()
hook.save()
"""


def hook_token(app: App) -> str:
    """An API token for the PACS hook: hashed tokens (``triage_token_create``) where the app has them, else DRF's."""
    if (ROOT / "triage" / "management" / "commands" / "triage_token_create.py").exists():
        return app.manage("triage_token_create", "--user", HOOK).strip().splitlines()[-1]
    script = (
        "from rest_framework.authtoken.models import Token; from triage.models import User; "
        f"print(Token.objects.get_or_create(user=User.objects.get(username='{HOOK}'))[0].key)"
    )
    return app.manage("shell", "-v", "0", "-c", script).strip().splitlines()[-1]

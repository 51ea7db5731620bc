"""``make run``: the web server and the workers against the services named in the environment.

Starts daphne (HTTP + WebSockets) on 127.0.0.1:$TRIAGE_HTTP_PORT, the django-tasks database worker, the PACS poller,
the FHIR outbox sender and the escalation loop; stops them all on Ctrl-C or when one of them dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_DIR = ROOT / "triage" / "management" / "commands"
WORKLIST_COMMANDS_DIR = ROOT / "worklist" / "management" / "commands"
DAPHNE_APP = "triage.asgi:application"


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def _has_command(name: str) -> bool:
    return (COMMANDS_DIR / f"{name}.py").exists() or (WORKLIST_COMMANDS_DIR / f"{name}.py").exists()


def process_table(port: int, *, workers: int = 1) -> dict[str, list[str]]:
    table = {
        # Verbosity 0: no access log, since request paths carry StudyInstanceUIDs.
        "web": [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), DAPHNE_APP],
    }
    for index in range(workers):
        worker_id = f"worker-{os.getpid()}-{index + 1}"
        table[f"worker-{index + 1}"] = _manage(
            "db_worker", "--queue-name", "*", "--interval", "0.5", "--no-reload", "--no-startup-delay",
            "--worker-id", worker_id,
        )  # fmt: skip
    for name in ("triage_poll", "triage_outbox", "triage_escalate"):
        if _has_command(name):
            table[name.removeprefix("triage_")] = _manage(name)
    return table


def prepare() -> None:
    subprocess.run(_manage("migrate", "--noinput"), check=True, cwd=ROOT)
    if _has_command("triage_seed_defaults"):
        subprocess.run(_manage("triage_seed_defaults"), check=True, cwd=ROOT)


def supervise(table: dict[str, list[str]], env: dict[str, str] | None = None) -> int:
    """Run every process until Ctrl-C or until one exits; then stop the rest."""
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env) for name, cmd in table.items()}
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    try:
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping everything", file=sys.stderr)
                    code = proc.returncode or 1
                    stopping = True
                    break
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
    return code


def main() -> int:
    port = int(os.environ.get("TRIAGE_HTTP_PORT", "8000"))
    prepare()
    print(f"Serving on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
    return supervise(process_table(port))


if __name__ == "__main__":
    sys.exit(main())

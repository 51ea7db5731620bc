"""``make run``: the web server and the workers against the services named in the environment.

The processes run under supervisord (the ``supervisor`` package): each one is restarted on its own when it exits,
with supervisord's growing back-off while it keeps failing at start, so a crashed worker never takes the web server
down with it. Ctrl-C (or SIGTERM) stops them all.

Processes: daphne (HTTP + WebSockets) on 127.0.0.1:$TRIAGE_HTTP_PORT; django-tasks database workers per queue
(``ingest`` and ``outbox``, counts from ``TRIAGE_WORKERS_INGEST`` / ``TRIAGE_WORKERS_OUTBOX``); the PACS poller, the
FHIR outbox loop and the escalation loop; and, when ``REDIS_URL`` is not set, a private ``redis-server`` on a
loopback port for the channel layer, so that events from every worker reach every browser.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_DIR = ROOT / "triage" / "management" / "commands"
WORKLIST_COMMANDS_DIR = ROOT / "worklist" / "management" / "commands"
DAPHNE_APP = "triage.asgi:application"
RUN_DIR = ROOT / ".run"
LOOPS = ("triage_poll", "triage_outbox", "triage_escalate")


class RunRefused(Exception):
    """A configuration ``make run`` will not start in; the message is one line for the operator."""


@dataclass(frozen=True)
class Program:
    name: str
    command: list[str]
    processes: int = 1
    environment: tuple[tuple[str, str], ...] = ()


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def _has_command(name: str) -> bool:
    return (COMMANDS_DIR / f"{name}.py").exists() or (WORKLIST_COMMANDS_DIR / f"{name}.py").exists()


def _count(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError as err:
        raise RunRefused(f"{name}={raw!r} is not a whole number") from err
    if value < 0:
        raise RunRefused(f"{name} must be 0 or more, got {value}")
    return value


def torch_threads(env: dict[str, str], ingest_workers: int) -> str:
    """The cores shared among the inference workers, unless the operator set TRIAGE_TORCH_THREADS."""
    if env.get("TRIAGE_TORCH_THREADS"):
        return env["TRIAGE_TORCH_THREADS"]
    return str(max(1, (os.cpu_count() or 1) // max(1, ingest_workers)))


def process_table(port: int, env: dict[str, str], *, redis_port: int | None = None) -> list[Program]:
    """What ``make run`` supervises, with process counts from the environment."""
    ingest = _count(env, "TRIAGE_WORKERS_INGEST", 2)
    outbox = _count(env, "TRIAGE_WORKERS_OUTBOX", 1)
    if ingest == 0:
        raise RunRefused("TRIAGE_WORKERS_INGEST is 0: no process would triage a study")
    worker = ["db_worker", "--interval", "0.2", "--no-reload", "--no-startup-delay"]
    table = [
        # Verbosity 0: no access log, since request paths carry StudyInstanceUIDs.
        Program("web", [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), DAPHNE_APP]),
        Program(
            "ingest",
            _manage(*worker, "--queue-name", "ingest"),
            ingest,
            (("TRIAGE_TORCH_THREADS", torch_threads(env, ingest)),),
        ),
        # Reports are built and sent by their own workers: they never wait behind another study's inference.
        Program("outbox-worker", _manage(*worker, "--queue-name", "outbox,default"), outbox),
    ]
    table += [Program(name.removeprefix("triage_"), _manage(name)) for name in LOOPS if _has_command(name)]
    if redis_port is not None:
        table.insert(0, Program("events", redis_command(redis_port)))
    return table


def redis_command(port: int) -> list[str]:
    return [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--protected-mode", "yes", "--loglevel", "warning",
    ]  # fmt: skip


def event_path(env: dict[str, str]) -> tuple[dict[str, str], int | None]:
    """The channel layer's Redis: the operator's REDIS_URL, else a private redis-server on a free loopback port.

    Workers are other processes than the web server, so an in-process layer would never deliver their events.
    """
    if env.get("REDIS_URL"):
        return env, None
    if shutil.which("redis-server") is None:
        raise RunRefused(
            "worklist events cannot cross processes: set REDIS_URL or install redis-server (Debian: redis-server)"
        )
    port = free_port()
    return {**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}, port


def supervisord_config(programs: list[Program], run_dir: Path) -> str:
    # The control socket is private to this user and password-protected; the file holding it is too (mode 0600).
    password = secrets.token_hex(16)
    lines = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={run_dir / 'supervisord.log'}",
        f"pidfile={run_dir / 'supervisord.pid'}",
        "loglevel=warn",
        *([f"user={pwd.getpwuid(os.geteuid()).pw_name}"] if os.geteuid() == 0 else []),
        "",
        "[unix_http_server]",
        f"file={run_dir / 'supervisor.sock'}",
        "chmod=0700",
        "username=run",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{run_dir / 'supervisor.sock'}",
        "username=run",
        f"password={password}",
        "",
    ]
    for program in programs:
        lines += _program_section(program)
    return "\n".join(lines) + "\n"


def _program_section(program: Program) -> list[str]:
    command = shlex.join(program.command).replace("%", "%%")
    section = [
        f"[program:{program.name}]",
        f"command={command}",
        f"directory={ROOT}",
        f"numprocs={program.processes}",
        "process_name=%(program_name)s-%(process_num)d" if program.processes > 1 else "process_name=%(program_name)s",
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        # Back-off between failed starts grows by a second each time; a process is never given up on.
        "startretries=1000000",
        "stopsignal=TERM",
        "stopwaitsecs=15",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        *_log_lines(program),
    ]
    if program.environment:
        pairs = ",".join(f'{key}="{value}"' for key, value in program.environment)
        section.append(f"environment={pairs}")
    return [*section, ""]


def _log_lines(program: Program) -> list[str]:
    """The app's processes log to the terminal; the private redis-server's start-up banner goes to its own file."""
    if program.name == "events":
        return ["stdout_logfile=%(here)s/redis.log", "stdout_logfile_maxbytes=10MB", "stdout_logfile_backups=1"]
    return ["stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0"]


def prepare(env: dict[str, str]) -> None:
    subprocess.run(_manage("migrate", "--noinput"), check=True, cwd=ROOT, env=env)
    if _has_command("triage_seed_defaults"):
        subprocess.run(_manage("triage_seed_defaults"), check=True, cwd=ROOT, env=env)


def supervise(programs: list[Program], env: dict[str, str], run_dir: Path) -> int:
    """Run supervisord in the foreground until Ctrl-C or SIGTERM; it stops every process it started."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "supervisord.conf"
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text(supervisord_config(programs, run_dir))
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(config)], cwd=ROOT, env=env)

    def _forward(signum: int, frame: object) -> None:
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGTERM, _forward)
    return proc.wait()


def run_dir_for(port: int) -> Path:
    return RUN_DIR / f"run-{port}"


def main() -> int:
    env = dict(os.environ)
    port = int(env.get("TRIAGE_HTTP_PORT", "8000"))
    try:
        env, redis_port = event_path(env)
        programs = process_table(port, env, redis_port=redis_port)
    except RunRefused as err:
        print(f"make run: {err}", file=sys.stderr)
        return 2
    prepare(env)
    print(f"Serving on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
    return supervise(programs, env, run_dir_for(port))


if __name__ == "__main__":
    sys.exit(main())

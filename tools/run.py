"""``make run``: the web server and the workers against the services named in the environment.

The processes run under supervisord (the ``supervisor`` package): each one is restarted on its own when it exits,
with supervisord's growing back-off while it keeps failing at start, so a crashed worker never takes the web server
down with it. Ctrl-C (or SIGTERM) stops them all.

Processes, by role (``TRIAGE_ROLES``, default all; docs/deployment.md says what each role needs):

- ``web``: daphne (HTTP + WebSockets) on 127.0.0.1:$TRIAGE_HTTP_PORT; with ``TRIAGE_WEB_PROCESSES`` = N > 1, N
  daphne processes on internal loopback ports behind an nginx on $TRIAGE_HTTP_PORT (config from deploy/nginx/);
- ``ingest``: ingest workers (``triage_ingest``, django-tasks' ``db_worker`` with the models loaded before the first
  task) on the ``ingest`` queue (``TRIAGE_WORKERS_INGEST``);
- ``outbox``: database workers on ``outbox,exports,default`` (``TRIAGE_WORKERS_OUTBOX``), the FHIR outbox and
  PACS write-back loops;
- ``loops``: the PACS poller (with the job sweeper) and the escalation loop;

and, when ``REDIS_URL`` is not set (all roles on one host only), a private ``redis-server`` on a loopback port for
the channel layer, so that events from every worker reach every browser.
"""

from __future__ import annotations

import os
import pwd
import re
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
NGINX_DIR = ROOT / "deploy" / "nginx"
STATIC_ROOT = ROOT / "staticfiles"
ROLES = ("web", "ingest", "outbox", "loops")
# Each loop runs with the role whose credentials it needs: the outbox loop talks to the EMR, the poller to the PACS.
LOOPS = (
    ("triage_poll", "loops"),
    ("triage_outbox", "outbox"),
    ("triage_writeback", "outbox"),
    ("triage_escalate", "loops"),
)
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


class RunRefused(Exception):
    """A configuration ``make run`` will not start in; the message is one line for the operator."""


@dataclass(frozen=True)
class Program:
    name: str
    command: list[str]
    processes: int = 1
    environment: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topology:
    """Which roles this host runs, and how many web processes."""

    roles: frozenset[str]
    web_processes: int

    @property
    def everything(self) -> bool:
        return self.roles == frozenset(ROLES)


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


def roles_from(env: dict[str, str]) -> frozenset[str]:
    """TRIAGE_ROLES: ``all`` (the default) or a comma-separated subset of web, ingest, outbox, loops."""
    raw = env.get("TRIAGE_ROLES", "").strip() or "all"
    names = {name.strip().lower() for name in raw.split(",") if name.strip()}
    if names == {"all"}:
        return frozenset(ROLES)
    unknown = sorted(names - set(ROLES))
    if unknown:
        raise RunRefused(f"TRIAGE_ROLES={raw!r}: unknown role {unknown[0]!r} (use all, or some of {', '.join(ROLES)})")
    return frozenset(names)


def topology(env: dict[str, str]) -> Topology:
    roles = roles_from(env)
    web = _count(env, "TRIAGE_WEB_PROCESSES", 1)
    if web == 0 and "web" in roles:
        raise RunRefused("TRIAGE_WEB_PROCESSES is 0: leave web out of TRIAGE_ROLES instead")
    return Topology(roles=roles, web_processes=web)


def torch_threads(env: dict[str, str], ingest_workers: int) -> str:
    """The cores shared among the inference workers, unless the operator set TRIAGE_TORCH_THREADS."""
    if env.get("TRIAGE_TORCH_THREADS"):
        return env["TRIAGE_TORCH_THREADS"]
    return str(max(1, (os.cpu_count() or 1) // max(1, ingest_workers)))


def process_table(
    port: int, env: dict[str, str], *, redis_port: int | None = None, run_dir: Path | None = None
) -> list[Program]:
    """What ``make run`` supervises on this host, with roles and process counts from the environment.

    With several web processes the nginx config is written into ``run_dir`` (default: ``run_dir_for(port)``).
    """
    topo = topology(env)
    table: list[Program] = []
    if "web" in topo.roles:
        table += web_programs(port, topo.web_processes, run_dir or run_dir_for(port))
    if "ingest" in topo.roles:
        table.append(_ingest_program(env))
    if "outbox" in topo.roles:
        # Reports are built and sent by their own workers: they never wait behind another study's inference.
        outbox = _count(env, "TRIAGE_WORKERS_OUTBOX", 1)
        table.append(
            Program("outbox-worker", _manage(*_worker_args(), "--queue-name", "outbox,exports,default"), outbox)
        )
    table += [
        Program(name.removeprefix("triage_"), _manage(name))
        for name, role in LOOPS
        if role in topo.roles and _has_command(name)
    ]
    if redis_port is not None:
        table.insert(0, Program("events", redis_command(redis_port)))
    return [program for program in table if program.processes > 0]


def _worker_args(command: str = "db_worker") -> list[str]:
    return [command, "--interval", "0.2", "--no-reload", "--no-startup-delay"]


def _ingest_program(env: dict[str, str]) -> Program:
    ingest = _count(env, "TRIAGE_WORKERS_INGEST", 2)
    if ingest == 0:
        raise RunRefused("TRIAGE_WORKERS_INGEST is 0: no process would triage a study")
    # triage_ingest is db_worker with the models loaded and freed memory kept before the first task.
    return Program(
        "ingest",
        _manage(*_worker_args("triage_ingest"), "--queue-name", "ingest"),
        ingest,
        (("TRIAGE_TORCH_THREADS", torch_threads(env, ingest)),),
    )


def daphne_command(port: int, *, behind_proxy: bool = False) -> list[str]:
    # Verbosity 0: no access log, since request paths carry StudyInstanceUIDs.
    command = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
    # Behind nginx the client's address comes from X-Forwarded-For, which nginx overwrites (never appends to), so
    # login lockouts and throttles count per client rather than per proxy.
    return [*command, *(["--proxy-headers"] if behind_proxy else []), DAPHNE_APP]


def web_programs(port: int, processes: int, run_dir: Path) -> list[Program]:
    """One daphne on ``port``; or N daphnes on free loopback ports behind an nginx on ``port``."""
    if processes == 1:
        return [Program("web", daphne_command(port))]
    ports = [free_port() for _ in range(processes)]
    config = nginx_run_config_write(run_dir / "nginx", http_port=port, web_ports=ports, static_root=STATIC_ROOT)
    nodes = [Program(f"web-{i}", daphne_command(p, behind_proxy=True)) for i, p in enumerate(ports)]
    return [*nodes, Program("nginx", nginx_command(config))]


def nginx_command(config: Path) -> list[str]:
    # -e: errors to stderr from the first line on, before the config names a log; the config itself says the same.
    return [nginx_binary(), "-e", "stderr", "-p", str(config.parent), "-c", str(config), "-g", "daemon off;"]


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RunRefused("TRIAGE_WEB_PROCESSES > 1 needs nginx in front of the web processes (Debian: nginx)")
    return found


def nginx_render(template: str, values: dict[str, str]) -> str:
    """Fill the ``@NAME@`` placeholders of a deploy/nginx template (comments keep theirs); each must be given."""
    lines = []
    for line in template.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if not line.lstrip().startswith("#"):
            for name, value in values.items():
                # A value of several lines keeps the placeholder's indentation on each.
                line = line.replace(f"@{name}@", value.replace("\n", "\n" + indent))
            if left := PLACEHOLDER.findall(line):
                raise RunRefused(f"nginx template: no value for {left[0]}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def upstream_servers(addresses: list[str]) -> str:
    return "\n".join(f"server {address} max_fails=1 fail_timeout=5s;" for address in addresses)


def nginx_locations_write(directory: Path, *, static_root: Path) -> Path:
    """The shared server-level part (proxy headers, WebSocket upgrade, static files, upload limit)."""
    directory.mkdir(parents=True, exist_ok=True)
    template = (NGINX_DIR / "triage-locations.conf").read_text()
    path = directory / "triage-locations.conf"
    path.write_text(nginx_render(template, {"STATIC_ROOT": str(static_root)}))
    return path


def nginx_run_config_write(directory: Path, *, http_port: int, web_ports: list[int], static_root: Path) -> Path:
    """Render deploy/nginx/run.conf (a whole nginx.conf, every path inside ``directory``) for loopback."""
    locations = nginx_locations_write(directory, static_root=static_root)
    user = pwd.getpwuid(os.geteuid()).pw_name
    values = {
        "RUN_DIR": str(directory),
        # As root, the workers run as the user that runs everything else here (supervisord does the same).
        "USER_LINE": f"user {user};" if os.geteuid() == 0 else "",
        "HTTP_PORT": str(http_port),
        "UPSTREAM_SERVERS": upstream_servers([f"127.0.0.1:{p}" for p in web_ports]),
        "LOCATIONS": str(locations),
    }
    config = directory / "nginx.conf"
    config.write_text(nginx_render((NGINX_DIR / "run.conf").read_text(), values))
    return config


def redis_command(port: int) -> list[str]:
    return [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--protected-mode", "yes", "--loglevel", "warning",
    ]  # fmt: skip


def event_path(env: dict[str, str]) -> tuple[dict[str, str], int | None]:
    """The channel layer's Redis: the operator's REDIS_URL, else a private redis-server on a free loopback port.

    Workers are other processes than the web server, so an in-process layer would never deliver their events. A
    private Redis serves one host only: a host that runs some roles needs the REDIS_URL that the others use.
    """
    if env.get("REDIS_URL"):
        return env, None
    if not topology(env).everything:
        raise RunRefused("TRIAGE_ROLES runs part of the platform here: set REDIS_URL to the Redis every host uses")
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
        # nginx stops gracefully on QUIT (open requests finish); everything else on TERM.
        f"stopsignal={'QUIT' if program.name == 'nginx' else 'TERM'}",
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
    """All roles here: migrate and seed the defaults. Some roles: the schema must already be current.

    Hosts that run part of the platform never migrate: two hosts migrating at once would race, and an upgrade
    migrates first, once (docs/deployment.md).
    """
    topo = topology(env)
    if topo.everything:
        subprocess.run(_manage("migrate", "--noinput"), check=True, cwd=ROOT, env=env)
        if _has_command("triage_seed_defaults"):
            subprocess.run(_manage("triage_seed_defaults"), check=True, cwd=ROOT, env=env)
    elif subprocess.run(_manage("migrate", "--check"), cwd=ROOT, env=env, capture_output=True).returncode != 0:
        raise RunRefused("the database has unapplied migrations: run `manage.py migrate` once before the hosts start")
    if "web" in topo.roles and topo.web_processes > 1:
        # nginx serves /static/ from STATIC_ROOT (and falls back to the web processes for anything missing).
        subprocess.run(_manage("collectstatic", "--noinput", "-v", "0"), check=True, cwd=ROOT, env=env)


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
        prepare(env)
    except RunRefused as err:
        print(f"make run: {err}", file=sys.stderr)
        return 2
    roles = topology(env).roles
    if "web" in roles:
        print(f"Serving on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
    else:
        print(f"Running {', '.join(r for r in ROLES if r in roles)} (Ctrl-C stops everything)", flush=True)
    return supervise(programs, env, run_dir_for(port))


if __name__ == "__main__":
    sys.exit(main())

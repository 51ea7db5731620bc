"""A private PostgreSQL 15 cluster on loopback, for tests, the demo and benchmarks.

Usage: ``python -m tools.postgres start DIR PORT`` / ``stop DIR``, or ``PostgresCluster`` from Python.
Running as root, the cluster is owned by the ``postgres`` system user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.procs import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


@dataclass
class PostgresCluster:
    directory: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"postgres://triage@127.0.0.1:{self.port}/triage"

    def start(self) -> PostgresCluster:
        if not self.port:
            self.port = free_port()
        data = self.directory / "data"
        if not (data / "PG_VERSION").exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.directory, "postgres", "postgres")
            subprocess.run(
                _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"]),
                check=True,
                capture_output=True,
            )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=600"
        )
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(self.directory / "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self._psql("DO $$ BEGIN CREATE ROLE triage LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END $$;")
        exists = self._psql("SELECT 1 FROM pg_database WHERE datname = 'triage'", capture=True)
        if "1" not in exists:
            self._psql("CREATE DATABASE triage OWNER triage")
        return self

    def _psql(self, sql: str, *, capture: bool = False) -> str:
        result = subprocess.run(
            _as_postgres(
                [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAc", sql]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout if capture else ""

    def stop(self) -> None:
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                check=False,
                capture_output=True,
            )


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "start":
        cluster = PostgresCluster(Path(argv[1]).resolve(), int(argv[2])).start()
        print(cluster.url)
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        PostgresCluster(Path(argv[1]).resolve()).stop()
        return 0
    print("usage: python -m tools.postgres start DIR PORT | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

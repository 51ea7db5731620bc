"""``make test``: the static checks (import layers, types), the whole suite on a private PostgreSQL cluster, then
the database tests again on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.postgres import PostgresCluster

ROOT = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest"]
# The SQLite pass repeats the tests whose behaviour depends on the database engine.
SQLITE_SELECTION = ["tests/triage", "tests/worklist", "-m", "not postgres_only and not browser and not slow"]


BIN = Path(sys.executable).parent
STATIC_CHECKS = [[str(BIN / "lint-imports")], [str(BIN / "mypy")]]


def run_static_checks(env: dict[str, str]) -> int:
    """The layers (import-linter contracts in pyproject.toml) and the types (mypy with django-stubs)."""
    code = 0
    for command in STATIC_CHECKS:
        print(f"\n=== {Path(command[0]).name} ===", flush=True)
        code = code or subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    return code


def run_pytest(args: list[str], env: dict[str, str]) -> int:
    print(f"\n=== pytest {' '.join(args)} ({'PostgreSQL' if 'DATABASE_URL' in env else 'SQLite'}) ===", flush=True)
    return subprocess.run([*PYTEST, *args], cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str]) -> int:
    base_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    base_env.setdefault("TRIAGE_DEBUG", "1")
    static_code = 0 if argv else run_static_checks(base_env)
    with tempfile.TemporaryDirectory(prefix="triage-pg-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
        cluster = PostgresCluster(Path(tmp) / "pg").start()
        try:
            code = run_pytest(argv, {**base_env, "DATABASE_URL": cluster.url})
        finally:
            cluster.stop()
    if argv:
        return code
    sqlite_code = run_pytest(SQLITE_SELECTION, base_env)
    return static_code or code or sqlite_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

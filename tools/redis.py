"""A throwaway Redis on loopback for the channel layer in tests and benchmarks."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.procs import free_port, port_open, wait_until


@dataclass
class RedisServer:
    directory: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if not self.port:
            self.port = free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--daemonize", "yes", "--pidfile", str(self.directory / "redis.pid"),
                "--logfile", str(self.directory / "redis.log"), "--dir", str(self.directory),
            ],
            check=True,
        )  # fmt: skip
        wait_until(lambda: port_open(self.port), timeout=10, what="redis")
        return self

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], check=False, capture_output=True)

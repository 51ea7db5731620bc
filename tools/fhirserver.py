"""A local in-memory FHIR R4 server (Medplum's FHIR router, tools/fhir-server/) on loopback.

For tests, the demo and benchmarks. It forgets everything when stopped. Faults for tests are injected through its
``/__control`` route (see server.mjs), never through the FHIR API.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from tools.procs import free_port, wait_until

SERVER_DIR = Path(__file__).resolve().parent / "fhir-server"


def ensure_installed() -> None:
    """Install the pinned npm packages once (``make fhir-server`` does the same)."""
    if (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the local FHIR server needs node 20 and npm")
    subprocess.run([npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=SERVER_DIR, check=True)


@dataclass
class FhirServer:
    directory: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FhirServer:
        """Start on ``port`` (a free one the first time); a restart keeps the port and loses every resource."""
        ensure_installed()
        if not self.port:
            self.port = free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "fhir-server.log").open("ab")
        self.process = subprocess.Popen(
            ["node", str(SERVER_DIR / "server.mjs"), "--port", str(self.port), "--quiet"],
            cwd=SERVER_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._answers, timeout=60, what="FHIR server")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"FHIR server exited with {self.process.returncode}; see {self.directory}")
        try:
            return requests.get(f"{self.base_url}/__control", timeout=1).ok
        except requests.RequestException:
            return False

    def control(self, **command: object) -> dict:
        """Inject faults or clear the store: ``fail_next``/``status``/``retry_after``, ``drop_next``, ``down``,
        ``clear``. Returns the server's counters."""
        response = requests.post(f"{self.base_url}/__control", json=command, timeout=5)
        response.raise_for_status()
        return response.json()

    def clear(self) -> None:
        self.control(clear=True, fail_next=0, drop_next=0, down=False)

    def search(self, resource_type: str, **params: str) -> dict:
        response = requests.get(f"{self.base_url}/{resource_type}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def read(self, resource_type: str, resource_id: str) -> requests.Response:
        return requests.get(f"{self.base_url}/{resource_type}/{resource_id}", timeout=10)

    def history(self, resource_type: str, resource_id: str) -> dict:
        response = requests.get(f"{self.base_url}/{resource_type}/{resource_id}/_history", timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

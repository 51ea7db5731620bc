"""A local Orthanc PACS with the DICOMweb plugin, on a loopback port, for tests, the demo and benchmarks."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tools.procs import free_port, wait_until

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
# Debian package orthanc-webviewer: serves /web-viewer/app/viewer.html?series=<Orthanc series ID>.
WEBVIEWER_PLUGIN = "/usr/share/orthanc/plugins/libOrthancWebViewer.so"
NOTIFY_LUA = Path(__file__).resolve().parent.parent / "deploy" / "orthanc" / "triage-notify.lua"


def notify_script(path: Path, *, notify_url: str, token: str) -> Path:
    """Write the OnStableStudy hook (deploy/orthanc/triage-notify.lua) with the app's URL and token filled in."""
    text = NOTIFY_LUA.read_text().replace("@TRIAGE_NOTIFY_URL@", notify_url).replace("@TRIAGE_TOKEN@", token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass
class OrthancServer:
    directory: Path
    port: int = 0
    stable_age: int = 2
    lua_scripts: list[Path] = field(default_factory=list)
    # Plugins beside DICOMweb, e.g. [WEBVIEWER_PLUGIN]; each must exist, or Orthanc would start without it.
    plugins: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> OrthancServer:
        for plugin in self.plugins:
            if not Path(plugin).exists():
                raise FileNotFoundError(f"Orthanc plugin {plugin} is not installed")
        if not self.port:
            self.port = free_port()
        storage = self.directory / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        config = {
            "Name": "TRIAGE-TEST-PACS",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [DICOMWEB_PLUGIN, *self.plugins],
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "StableAge": self.stable_age,
            "HttpTimeout": 60,
            "LuaScripts": [str(p) for p in self.lua_scripts],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }
        if WEBVIEWER_PLUGIN in self.plugins:
            config["WebViewer"] = {"CachePath": str(self.directory / "webviewer-cache")}
        config_path = self.directory / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.process = subprocess.Popen(
            ["/usr/sbin/Orthanc", f"--logdir={self.directory / 'logs'}", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=30, what="orthanc")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"orthanc exited with {self.process.returncode}; see {self.directory / 'logs'}")
        try:
            return requests.get(f"{self.url}/system", timeout=1).ok
        except requests.RequestException:
            return False

    def upload(self, path: Path) -> dict:
        response = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
        response.raise_for_status()
        return response.json()

    def upload_dir(self, directory: Path) -> int:
        count = 0
        for path in sorted(directory.rglob("*.dcm")):
            self.upload(path)
            count += 1
        return count

    def clear(self) -> None:
        for study_id in requests.get(f"{self.url}/studies", timeout=10).json():
            requests.delete(f"{self.url}/studies/{study_id}", timeout=30).raise_for_status()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

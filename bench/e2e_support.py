"""Pieces of the end-to-end benchmark (bench/bench_e2e.py): synthetic studies, the app under ``make run``, a worklist
WebSocket listener and the PACS side (store, notify)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
SLICES = int(os.environ.get("BENCH_E2E_SLICES", "250"))
SIZE = 512
STORE_THREADS = 4  # parallel POST /instances, as a modality or a router sends; 4 stores a study ~2.5x faster than 1


# --- synthetic studies ------------------------------------------------------------------------------------------


@dataclass
class StudyFactory:
    """One phantom head CT written once, copied per study by swapping its UIDs in the file bytes.

    Every UID the template carries is ``2.25.<run><kind><study><slice>`` with fixed widths, so a copy has the same
    length byte for byte and the swap is a plain ``bytes.replace`` (no pydicom per copy).
    """

    run: str
    instances: list[bytes]

    def uid(self, kind: int, study: int, index: int = 0) -> str:
        return f"2.25.{self.run}{kind}{study:06d}{index:05d}"

    def study(self, number: int) -> tuple[str, str, list[bytes]]:
        """Study ``number`` (1 and up): its study and series UIDs and its instances."""
        copies = []
        for index, blob in enumerate(self.instances):
            for kind in (1, 2, 4):  # study, series, frame of reference
                blob = blob.replace(self.uid(kind, 0).encode(), self.uid(kind, number).encode())
            copies.append(blob.replace(self.uid(3, 0, index).encode(), self.uid(3, number, index).encode()))
        return self.uid(1, number), self.uid(2, number), copies


def study_factory(directory: Path, *, seed: int = 4242) -> StudyFactory:
    """A thin (0.625 mm) positive head NCCT of ``SLICES`` 512x512 int16 slices from the project's phantom generator."""
    import pydicom

    from inference.dicom_write import synthetic_patient, write_study
    from inference.phantoms.ncct import generate_ncct

    phantom = generate_ncct(seed, positive=True, subtype="iph", shape=(SLICES, SIZE, SIZE), slice_thickness_mm=0.625)
    today = datetime.datetime.now()
    patient = {**synthetic_patient(seed), "StudyDate": today.strftime("%Y%m%d"), "StudyTime": today.strftime("%H%M%S")}
    info = write_study(phantom, directory, seed=seed, patient=patient)
    factory = StudyFactory(run=f"{secrets.randbelow(9 * 10**14) + 10**14}", instances=[])
    for index, path in enumerate(info.series[0]):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = factory.uid(1, 0), factory.uid(2, 0)
        ds.FrameOfReferenceUID = factory.uid(4, 0)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = factory.uid(3, 0, index)
        ds.save_as(path, enforce_file_format=True)
        factory.instances.append(path.read_bytes())
    shutil.rmtree(directory)
    return factory


# --- the PACS side ----------------------------------------------------------------------------------------------


class Pacs:
    """Stores instances in Orthanc (``POST /instances``, a few connections) and sends the app's notify hook."""

    def __init__(self, orthanc_url: str, notify_url: str, token: str) -> None:
        self.orthanc_url, self.notify_url = orthanc_url, notify_url
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(STORE_THREADS)
        self._notify = requests.Session()
        self._notify.headers["Authorization"] = f"Token {token}"

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _post(self, blob: bytes) -> None:
        self._session().post(f"{self.orthanc_url}/instances", data=blob, timeout=120).raise_for_status()

    def store(self, blobs: list[bytes]) -> None:
        list(self._pool.map(self._post, blobs))

    def notify(self, study_uid: str) -> None:
        body = {"study_instance_uid": study_uid, "complete": True}
        response = self._notify.post(self.notify_url, json=body, timeout=60)
        if response.status_code != 202:
            raise RuntimeError(f"notify answered {response.status_code}: {response.text[:200]}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# --- the app as `make run` starts it ---------------------------------------------------------------------------


@dataclass
class App:
    """``python -m tools.run`` in its own session; stopped with SIGTERM (supervisord stops every process)."""

    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float) -> App:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.run"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_for("/healthz", timeout)
        self._wait_for("/readyz", timeout)
        return self

    def _wait_for(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"make run exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}{path}", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{path} not ok after {timeout:.0f} s:\n{self.log_tail()}")

    def manage(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        command = [sys.executable, str(ROOT / "manage.py"), *args]
        env = {**self.env, **(extra_env or {})}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} exited with {done.returncode}:\n{done.stderr[-2000:]}")
        return done.stdout

    def processes(self, command: str) -> list[int]:
        """The processes under this app whose command line holds ``command`` as one of its words."""
        found = []
        for pid in descendants(self.process.pid) if self.process else []:
            try:
                if command.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    found.append(pid)
            except OSError:
                continue  # it ended while it was read
        return found

    def memory_of(self, command: str) -> list[dict[str, float]]:
        """Resident and peak memory (MiB) of each process of ``command`` (see ``processes``)."""
        found = []
        for pid in self.processes(command):
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status if ":" in line)
            found.append({"rss_mib": _kib(fields["VmRSS"]) / 1024, "peak_mib": _kib(fields["VmHWM"]) / 1024})
        return found

    def cpu_seconds(self, command: str) -> float:
        """User + system CPU seconds used so far by the processes of ``command`` (see ``processes``)."""
        return sum(cpu_seconds(pid) for pid in self.processes(command))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the session started above: only what we started
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(ROOT / ".run" / f"run-{self.port}", ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc); 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kib(field: str) -> int:
    return int(field.split()[0])


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (Linux /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(after_name[1]), []).append(int(stat.parent.name))
    found, queue = [], [root]
    while queue:
        kids = children.get(queue.pop(0), [])
        found += kids
        queue += kids
    return found


USERS_SCRIPT = """
import os
from django.core.management import call_command
from triage.models import User
reader, _ = User.objects.get_or_create(username="bench-radiologist")
reader.role = "radiologist"
reader.set_password(os.environ["BENCH_PASSWORD"])
reader.save()
hook, _ = User.objects.get_or_create(username="bench-pacs-hook")
hook.set_unusable_password()
hook.save()
call_command("triage_token_create", "--user", "bench-pacs-hook", "--from-env", "BENCH_TOKEN")
"""


def users_create(app: App) -> tuple[str, str]:
    """A radiologist (for the WebSocket) and the PACS hook's service user; returns the password and the token."""
    password, token = secrets.token_urlsafe(12), secrets.token_hex(20)
    app.manage("shell", "-v", "0", "-c", USERS_SCRIPT, extra_env={"BENCH_PASSWORD": password, "BENCH_TOKEN": token})
    return password, token


def session_login(base_url: str, username: str, password: str) -> str:
    """Log in through the login page; returns the Cookie header for the WebSocket handshake."""
    session = requests.Session()
    page = session.get(f"{base_url}/accounts/login/", timeout=30)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if match is None:
        raise RuntimeError("no CSRF token on the login page")
    form = {"username": username, "password": password, "csrfmiddlewaretoken": match.group(1)}
    answer = session.post(f"{base_url}/accounts/login/", data=form, allow_redirects=False, timeout=30)
    if answer.status_code != 302 or "sessionid" not in session.cookies:
        raise RuntimeError(f"login failed with {answer.status_code}")
    return "; ".join(f"{name}={value}" for name, value in session.cookies.items())


# --- the worklist WebSocket -------------------------------------------------------------------------------------


@dataclass
class EventListener:
    """A logged-in worklist client in a thread: the arrival time (``time.time()``) of each study's first item event
    that carries findings. Reconnects if the socket drops (counted)."""

    url: str
    origin: str
    cookie: str
    arrivals: dict[str, float] = field(default_factory=dict)
    events: int = 0
    reconnects: int = 0
    seq_gaps: int = 0
    _last_seq: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _connected: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> EventListener:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="ws-listener", daemon=True)
        self._thread.start()
        if not self._connected.wait(timeout):
            raise TimeoutError("worklist WebSocket did not connect")
        return self

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, WebSocketException

        while not self._stop.is_set():
            try:
                headers = {"Cookie": self.cookie}
                async with connect(self.url, additional_headers=headers, origin=self.origin, ping_interval=None) as ws:
                    self._connected.set()
                    await self._receive(ws)
            except (OSError, InvalidHandshake, WebSocketException):
                self.reconnects += 1
                await asyncio.sleep(0.5)

    async def _receive(self, ws: object) -> None:
        while not self._stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)  # type: ignore[attr-defined]
            except TimeoutError:
                continue
            self._on_message(text, time.time())

    def _on_message(self, text: str, arrived: float) -> None:
        event = json.loads(text)
        if event.get("type") != "item":
            return
        self.events += 1
        seq = event.get("seq")
        if isinstance(seq, int):
            if self._last_seq is not None and seq > self._last_seq + 1:
                self.seq_gaps += 1
            self._last_seq = seq if self._last_seq is None else max(self._last_seq, seq)
        item = event.get("item") or {}
        uid = item.get("study_instance_uid")
        if uid and item.get("findings") and uid not in self.arrivals:
            with self._changed:
                self.arrivals[uid] = arrived
                self._changed.notify_all()

    def wait_for(self, uids: list[str], deadline: float) -> bool:
        """Wait until every study in ``uids`` has its event, or until ``deadline`` (``time.monotonic()``)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(uid in self.arrivals for uid in uids), timeout=max(0.0, deadline - time.monotonic())
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

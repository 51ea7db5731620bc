"""The outside of the app during a chaos run: a PACS that stores studies and calls the notify hook (retrying as a
PACS would), and a logged-in worklist client that keeps its view the way the page does (static/js/worklist.js):
REST snapshot on every (re)connect, events applied in ``seq`` order, a gap or a beat ahead of it reloads the snapshot.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

SNAPSHOT_LIMIT = 500


def findings_view(item: dict) -> list[tuple]:
    """What a radiologist sees of an item's findings, in a comparable form."""
    return sorted((f["finding"], f["model_version"], round(float(f["score"]), 6)) for f in item.get("findings") or [])


def session_login(base_url: str, username: str, password: str) -> requests.Session:
    """Log in through the login form (CSRF token from the page), as a browser does."""
    session = requests.Session()
    page = session.get(f"{base_url}/accounts/login/", timeout=30)
    page.raise_for_status()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if match is None:
        raise RuntimeError("no CSRF token on the login page")
    form = {"username": username, "password": password, "csrfmiddlewaretoken": match.group(1)}
    answer = session.post(
        f"{base_url}/accounts/login/",
        data=form,
        headers={"Referer": f"{base_url}/accounts/login/"},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 302 or "sessionid" not in session.cookies:
        raise RuntimeError(f"login failed with {answer.status_code}")
    return session


def worklist_snapshot(session: requests.Session, base_url: str) -> tuple[int, dict[str, list[tuple]]]:
    """Every item (any status) with its findings, and the ``seq`` the snapshot includes."""
    url: str | None = f"{base_url}/api/v1/worklist/?status=all&limit={SNAPSHOT_LIMIT}"
    view: dict[str, list[tuple]] = {}
    seq = 0
    first = True
    while url:
        response = session.get(url, timeout=30)
        response.raise_for_status()
        body = response.json()
        if first:
            seq, first = int(body["seq"]), False
        for item in body["results"]:
            view[item["study_instance_uid"]] = findings_view(item)
        url = body.get("next")
    return seq, view


@dataclass
class WorklistClient:
    """A browser tab on the worklist, in its own thread with its own event loop."""

    base_url: str
    session: requests.Session
    seq: int | None = None
    view: dict[str, list[tuple]] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"connects": 0, "events": 0, "snapshots": 0, "snapshot_errors": 0, "gaps": 0}
    )
    first_findings: dict[str, float] = field(default_factory=dict)
    beat_seconds: float = 5.0
    _behind: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws/worklist/"

    def start(self) -> WorklistClient:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="ws-client", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def snapshot_of_view(self) -> dict[str, list[tuple]]:
        with self._lock:
            return dict(self.view)

    def resync(self) -> None:
        """Reload the snapshot now (as the page does on a gap); errors are counted and retried on the next cue."""
        try:
            seq, view = worklist_snapshot(self.session, self.base_url)
        except (requests.RequestException, ValueError, KeyError):
            self.counts["snapshot_errors"] += 1
            self._behind = max(self._behind, (self.seq or 0) + 1)
            return
        with self._lock:
            self.seq, self.view = seq, view
        self.counts["snapshots"] += 1
        self._note_findings(view)

    def _note_findings(self, view: dict[str, list[tuple]]) -> None:
        """When each study was first seen with findings (``time.monotonic()``)."""
        now = time.monotonic()
        for uid, findings in view.items():
            if findings and uid not in self.first_findings:
                self.first_findings[uid] = now

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

        retry = 0
        cookie = "; ".join(f"{k}={v}" for k, v in self.session.cookies.items())
        while not self._stop.is_set():
            try:
                async with connect(
                    self.ws_url, additional_headers={"Cookie": cookie}, origin=self.base_url, open_timeout=20
                ) as ws:
                    retry = 0
                    self.counts["connects"] += 1
                    await self._receive(ws)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, WebSocketException):
                pass
            # Backoff as the page does: 0.5 s doubling, capped at 10 s.
            await asyncio.sleep(min(10.0, 0.5 * 2**retry))
            retry += 1

    async def _receive(self, ws: object) -> None:
        last_seen = time.monotonic()
        while not self._stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), 1.0)  # type: ignore[attr-defined]
            except TimeoutError:
                if time.monotonic() - last_seen > 4 * self.beat_seconds:
                    return  # half-open: drop it and reconnect, as the page's liveness watch does
                if self._behind and (self.seq or 0) < self._behind:
                    await asyncio.to_thread(self.resync)
                continue
            last_seen = time.monotonic()
            await self._on_event(json.loads(text))

    async def _on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "hello":
            self.beat_seconds = float(event.get("beat_seconds") or self.beat_seconds)
            await asyncio.to_thread(self.resync)
        elif kind == "beat":
            if self.seq is not None and int(event["seq"]) > self.seq:
                self._behind = max(self._behind, int(event["seq"]))
        elif kind == "item":
            self.counts["events"] += 1
            self._on_item(event)

    def _on_item(self, event: dict) -> None:
        seq = int(event["seq"])
        if self.seq is not None and seq <= self.seq:
            return
        if self.seq is None or seq != self.seq + 1:
            self.counts["gaps"] += 1
            self._behind = max(self._behind, seq)
            self.resync()
            return
        item = event["item"]
        with self._lock:
            self.seq = seq
            self.view[item["study_instance_uid"]] = findings_view(item)
        self._note_findings({item["study_instance_uid"]: findings_view(item)})


@dataclass
class Pacs:
    """Stores synthetic studies in Orthanc and notifies the app; both retried until ``give_up_s`` as a PACS would."""

    orthanc_url: Callable[[], str]
    notify_url: str
    token: str
    give_up_s: float = 300.0
    counts: dict[str, int] = field(
        default_factory=lambda: {"stored": 0, "store_retries": 0, "notified": 0, "notify_retries": 0}
    )
    errors: list[str] = field(default_factory=list)
    _session: requests.Session = field(default_factory=requests.Session)

    def store(self, blobs: list[bytes]) -> bool:
        for blob in blobs:
            if not self._retrying(lambda b=blob: self._post_instance(b), "store_retries"):
                return False
        self.counts["stored"] += 1
        return True

    def notify(self, study_uid: str) -> bool:
        if self._retrying(lambda: self._post_notify(study_uid), "notify_retries"):
            self.counts["notified"] += 1
            return True
        self.errors.append(f"notify of a study never answered 202 within {self.give_up_s:.0f} s")
        return False

    def _post_instance(self, blob: bytes) -> bool:
        return self._session.post(f"{self.orthanc_url()}/instances", data=blob, timeout=30).ok

    def _post_notify(self, study_uid: str) -> bool:
        response = self._session.post(
            self.notify_url,
            json={"study_instance_uid": study_uid, "complete": True},
            headers={"Authorization": f"Token {self.token}"},
            timeout=30,
        )
        return response.status_code == 202

    def _retrying(self, attempt: Callable[[], bool], counter: str) -> bool:
        deadline = time.monotonic() + self.give_up_s
        delay = 0.5
        while time.monotonic() < deadline:
            try:
                if attempt():
                    return True
            except requests.RequestException:
                self._session.close()
            self.counts[counter] += 1
            time.sleep(delay)
            delay = min(5.0, delay * 2)
        return False

"""A fault-injecting HTTP proxy on loopback, in front of a PACS (DICOMweb) or an EMR (FHIR).

Every request is forwarded to the real server unless a fault meets it. ``fault`` lasts until ``heal()``, so an
outage lasts as long as the caller wants: ``down`` closes each connection without an answer (what a client sees of
a dead host or a reset), ``fail`` answers a status (5xx, 429 with ``Retry-After``) without forwarding, ``delay``
forwards late; ``counts`` says how many requests each fault met. ``script`` is what tests set per request: a status
for the next N requests (or N WADO-RS retrievals), a delay for the next N, a gate that holds retrievals until the
test opens it, a retrieval body the test made (``crafted_retrieval``, sent with chunked encoding as it is made) and a
real retrieval sent a few bytes at a time (``trickle_bytes`` every ``trickle_seconds``); ``seen`` lists the paths
asked for and ``sent_bytes`` what left of a crafted or trickled body before the client hung up.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests

from tools.procs import free_port

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


def is_retrieval(path: str) -> bool:
    """WADO-RS retrieval of a series' instances (not its metadata, not a QIDO search)."""
    head = path.split("?")[0].rstrip("/")
    return "/series/" in head and not head.endswith("/metadata") and not head.endswith("/series")


@dataclass
class Fault:
    down: bool = False
    status: int | None = None
    retry_after: int | None = None
    delay_seconds: float = 0.0

    def describe(self) -> str:
        if self.down:
            return "down"
        if self.status is not None:
            return f"answers {self.status}"
        if self.delay_seconds:
            return f"delay {self.delay_seconds:g} s"
        return "healthy"


@dataclass
class Script:
    """Faults that meet the next requests one by one, and hooks on WADO-RS retrievals."""

    fail_next: int = 0
    fail_status: int = 503
    fail_retrievals_next: int = 0
    delay_next: int = 0
    delay_seconds: float = 0.0
    gate_retrievals: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    retrieval_started: threading.Event = field(default_factory=threading.Event)
    crafted_retrieval: Callable[[], tuple[dict[str, str], Iterable[bytes]]] | None = None
    trickle_bytes: int = 0
    trickle_seconds: float = 0.0
    sent_bytes: int = 0
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, counter: str) -> bool:
        with self.lock:
            if getattr(self, counter) > 0:
                setattr(self, counter, getattr(self, counter) - 1)
                return True
            return False

    def fails(self, path: str) -> bool:
        return self.take("fail_next") or (is_retrieval(path) and self.take("fail_retrievals_next"))


@dataclass
class FaultProxy:
    """Forwards ``http://127.0.0.1:<port>/<path>`` to ``upstream/<path>``; ``fault`` and ``script`` decide per
    request."""

    upstream: str
    port: int = 0
    timeout: float = 60.0
    fault: Fault = field(default_factory=Fault)
    script: Script = field(default_factory=Script)
    counts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: http.server.ThreadingHTTPServer | None = None
    _session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> FaultProxy:
        self.upstream = self.upstream.rstrip("/")
        self.port = self.port or free_port()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=f"proxy-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        self.script.gate.set()  # a retrieval held at the gate ends with the proxy
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._session.close()

    def set_down(self) -> None:
        self.fault = Fault(down=True)

    def set_failing(self, status: int, *, retry_after: int | None = None) -> None:
        self.fault = Fault(status=status, retry_after=retry_after)

    def set_slow(self, seconds: float) -> None:
        self.fault = Fault(delay_seconds=seconds)

    def heal(self) -> None:
        self.fault = Fault()

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> requests.Response:
        return self._session.request(
            method, self.upstream + path, headers=headers, data=body, timeout=self.timeout, allow_redirects=False
        )


def _handler_for(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            script, retrieval = proxy.script, is_retrieval(self.path)
            script.seen.append(self.path)
            if retrieval:
                script.retrieval_started.set()
                if script.gate_retrievals:
                    script.gate.wait(timeout=120)
            fault = proxy.fault  # one snapshot per request: a change mid-request applies to the next one
            if fault.down:
                proxy.count("dropped")
                self.close_connection = True
                return
            if fault.status is not None or script.fails(self.path):
                self._fail(fault if fault.status is not None else Fault(status=script.fail_status))
                return
            if fault.delay_seconds:
                proxy.count("delayed")
                time.sleep(fault.delay_seconds)
            if script.take("delay_next"):
                time.sleep(script.delay_seconds)
            if retrieval and script.crafted_retrieval is not None:
                self._stream(*script.crafted_retrieval())
            elif retrieval and script.trickle_bytes:
                self._trickle(method, body)
            else:
                self._forward(method, body)

        def _fail(self, fault: Fault) -> None:
            proxy.count(f"answered_{fault.status}")
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            body = b'{"error": "injected fault"}'
            self._answer(fault.status or 503, body, {"Content-Type": "application/json", **extra})

        def _upstream(self, method: str, body: bytes | None) -> requests.Response | None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            try:
                upstream = proxy.forward(method, self.path, headers, body)
            except requests.RequestException:
                proxy.count("upstream_unreachable")
                self._answer(502, b"upstream unreachable", {"Content-Type": "text/plain"})
                return None
            proxy.count("forwarded")
            return upstream

        def _forward(self, method: str, body: bytes | None) -> None:
            if (upstream := self._upstream(method, body)) is not None:
                kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
                self._answer(upstream.status_code, upstream.content, kept)

        def _trickle(self, method: str, body: bytes | None) -> None:
            """The server's answer with its Content-Length, the body ``trickle_bytes`` at a time."""
            if (upstream := self._upstream(method, body)) is None:
                return
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            content, step = upstream.content, proxy.script.trickle_bytes
            pieces = (content[start : start + step] for start in range(0, len(content), step))
            headers = {**kept, "Content-Length": str(len(content))}
            self._send(upstream.status_code, headers, pieces, chunked=False, pause=proxy.script.trickle_seconds)

        def _stream(self, headers: dict[str, str], chunks: Iterable[bytes]) -> None:
            self._send(200, {**headers, "Transfer-Encoding": "chunked"}, chunks, chunked=True)

        def _send(
            self, status: int, headers: dict[str, str], pieces: Iterable[bytes], *, chunked: bool, pause: float = 0.0
        ) -> None:
            """Send the body piece by piece as it is made, ``pause`` seconds before each, counting what left."""
            self.close_connection = True
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                for piece in pieces:
                    if pause:
                        threading.Event().wait(pause)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    proxy.script.sent_bytes += len(piece)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler

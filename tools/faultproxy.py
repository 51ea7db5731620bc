"""A fault-injecting HTTP proxy on loopback, in front of a PACS (DICOMweb) or an EMR (FHIR).

Every request is forwarded to the real server unless a fault is switched on: ``down`` closes each connection
without an answer (what a client sees of a dead host or a reset), ``fail`` answers a status (5xx, 429 with
``Retry-After``) without forwarding, ``delay`` forwards late. Faults stay on until ``heal()``, so an outage lasts
as long as the caller wants; counters say how many requests each fault met.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from tools.procs import free_port

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


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
class FaultProxy:
    """Forwards ``http://127.0.0.1:<port>/<path>`` to ``upstream/<path>``; ``fault`` decides per request."""

    upstream: str
    port: int = 0
    timeout: float = 60.0
    fault: Fault = field(default_factory=Fault)
    counts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: http.server.ThreadingHTTPServer | None = None
    _session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
            fault = proxy.fault  # one snapshot per request: a change mid-request applies to the next one
            if fault.down:
                proxy.count("dropped")
                self.close_connection = True
                return
            if fault.status is not None:
                proxy.count(f"answered_{fault.status}")
                extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                self._answer(
                    fault.status, b'{"error": "injected fault"}', {"Content-Type": "application/json", **extra}
                )
                return
            if fault.delay_seconds:
                proxy.count("delayed")
                time.sleep(fault.delay_seconds)
            self._forward(method, body)

        def _forward(self, method: str, body: bytes | None) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            try:
                upstream = proxy.forward(method, self.path, headers, body)
            except requests.RequestException:
                proxy.count("upstream_unreachable")
                self._answer(502, b"upstream unreachable", {"Content-Type": "text/plain"})
                return
            proxy.count("forwarded")
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            self._answer(upstream.status_code, upstream.content, kept)

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

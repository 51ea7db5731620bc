"""A fault-injecting HTTP proxy in front of the test Orthanc: errors, delays, a gate that holds retrievals, and
crafted retrieval responses.

Real requests go to the real Orthanc; the proxy only decides, per request, to answer an error instead, to answer
late, to wait for the test to open the gate (so a test can kill a worker while its retrieval is in flight), to
stream a body the test made (``crafted_retrieval``: headers and chunks, sent with chunked encoding as they are made,
``sent_bytes`` counting what left before the client hung up), or to send Orthanc's retrieval a few bytes at a time
(``trickle_bytes`` every ``trickle_seconds``: a PACS that is slow but never silent for a whole read timeout).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests

from tools.procs import free_port

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def is_retrieval(path: str) -> bool:
    """WADO-RS retrieval of a series' instances (not its metadata, not a QIDO search)."""
    head = path.split("?")[0].rstrip("/")
    return "/series/" in head and not head.endswith("/metadata") and not head.endswith("/series")


@dataclass
class Faults:
    fail_next: int = 0
    fail_status: int = 503
    fail_retrievals_next: int = 0
    delay_next: int = 0
    delay_seconds: float = 0.0
    gate_retrievals: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    retrieval_started: threading.Event = field(default_factory=threading.Event)
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    crafted_retrieval: Callable[[], tuple[dict[str, str], Iterable[bytes]]] | None = None
    sent_bytes: int = 0
    trickle_bytes: int = 0
    trickle_seconds: float = 0.0

    def take(self, counter: str) -> bool:
        with self.lock:
            if getattr(self, counter) > 0:
                setattr(self, counter, getattr(self, counter) - 1)
                return True
            return False


class PacsProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = Faults()
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> PacsProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.faults.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> Callable:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                faults = proxy.faults
                faults.seen.append(self.path)
                if is_retrieval(self.path):
                    faults.retrieval_started.set()
                    if faults.gate_retrievals:
                        faults.gate.wait(timeout=120)
                if faults.take("fail_next") or (is_retrieval(self.path) and faults.take("fail_retrievals_next")):
                    self._answer(faults.fail_status, b"injected failure", {"Content-Type": "text/plain"})
                    return
                if faults.take("delay_next"):
                    threading.Event().wait(faults.delay_seconds)
                if is_retrieval(self.path) and faults.crafted_retrieval is not None:
                    self._stream(*faults.crafted_retrieval())
                    return
                if is_retrieval(self.path) and faults.trickle_bytes:
                    self._trickle()
                    return
                self._forward()

            def _trickle(self) -> None:
                """Orthanc's answer with its Content-Length, the body ``trickle_bytes`` at a time."""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", *HOP_HEADERS}}
                upstream = requests.get(proxy.upstream + self.path, headers=headers, timeout=60)
                kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
                step, body = proxy.faults.trickle_bytes, upstream.content
                self.close_connection = True
                try:
                    self.send_response(upstream.status_code)
                    for key, value in {**kept, "Content-Length": str(len(body))}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    for start in range(0, len(body), step):
                        threading.Event().wait(proxy.faults.trickle_seconds)
                        self.wfile.write(body[start : start + step])
                        proxy.faults.sent_bytes += len(body[start : start + step])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self, headers: dict[str, str], chunks: Iterable[bytes]) -> None:
                self.close_connection = True
                try:
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        proxy.faults.sent_bytes += len(chunk)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _forward(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", *HOP_HEADERS}}
                try:
                    upstream = requests.get(proxy.upstream + self.path, headers=headers, timeout=60)
                except requests.RequestException:
                    self._answer(502, b"upstream unreachable", {"Content-Type": "text/plain"})
                    return
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

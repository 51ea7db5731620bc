"""WADO-RS series retrieval as a bounded stream: the multipart body is read part by part, and a series or instance
over its byte limit, or a retrieval past its deadline, is stopped while it is read rather than after it has arrived.

``Pacs.retrieve_series`` (``triage.ingest.dicomweb``) wraps this in its retries. Messages name the operation and the
limit only: URLs carry identifiers and headers carry credentials.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import quote

import requests
from pydicom import Dataset

from inference.dicom_header import VolumeError, parse_part10
from triage.core.exceptions import PacsError, PacsRequestRejected, TriageError

ACCEPT_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK_BYTES = 1 << 16
# A multipart preamble or a part's headers longer than this is not a DICOMweb response.
MAX_PREAMBLE_BYTES = 1 << 16
MAX_PART_HEADER_BYTES = 1 << 14


class SeriesTooLarge(TriageError):
    """A series over the instance count or the retrieval byte limit: refused while it is read, not retried."""

    code = "series_too_large"
    status = 422


class InstanceTooLarge(SeriesTooLarge):
    """One instance over the per-instance byte limit: as sent, once inflated, or as its header declares."""

    code = "instance_too_large"


class PacsBadResponse(PacsRequestRejected):
    """The PACS answered 200 with something that is not multipart DICOM: retrying the same request cannot help."""

    code = "pacs_bad_response"


class IncompleteResponse(requests.exceptions.ChunkedEncodingError):
    """The body ended inside a part or before the closing boundary: retried like a dropped connection."""


@dataclass(frozen=True)
class RetrievalLimits:
    instances: int | None
    instance_bytes: int
    series_bytes: int
    seconds: float | None = None  # the whole retrieval, retries included
    started: float = field(default_factory=time.monotonic)

    def seconds_left(self) -> float | None:
        return None if self.seconds is None else self.seconds - (time.monotonic() - self.started)

    def check_time(self) -> None:
        """A PacsError (retried later, like an outage) once the retrieval has taken longer than ``seconds``."""
        left = self.seconds_left()
        if left is not None and left < 0:
            raise PacsError(
                f"Series retrieval: the PACS did not send the series within {self.seconds:g} s "
                "(TRIAGE_RETRIEVE_DEADLINE_SECONDS).",
                code="pacs_too_slow",
            ) from None  # raised while a transport error is handled: never chain it, its text holds the URL

    def check_count(self, count: int) -> None:
        if self.instances is not None and count > self.instances:
            raise SeriesTooLarge(f"The series has more than {self.instances} instances.")

    def series_too_large(self) -> SeriesTooLarge:
        return SeriesTooLarge(f"The series is larger than {_mib(self.series_bytes)}, the retrieval limit.")

    def instance_too_large(self) -> InstanceTooLarge:
        return InstanceTooLarge(f"An instance is larger than {_mib(self.instance_bytes)}, the retrieval limit.")


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"


def dataset_of(part: bytes, count: int, limits: RetrievalLimits) -> Dataset:
    """Parse one part; a deflated data set is inflated within the instance limit (pydicom's own is unbounded)."""
    try:
        return parse_part10(part, max_bytes=limits.instance_bytes, label=f"instance #{count} of the response")
    except VolumeError as err:
        if err.code == InstanceTooLarge.code:
            raise InstanceTooLarge(err.message) from None
        raise PacsBadResponse(f"Series retrieval: {err.message}", code=err.code) from None


def counted(datasets: Iterable[Dataset], limits: RetrievalLimits) -> Iterator[Dataset]:
    total = 0
    for count, ds in enumerate(datasets, start=1):
        limits.check_time()
        limits.check_count(count)
        size = len(ds.get("PixelData") or b"")
        if size > limits.instance_bytes:
            raise limits.instance_too_large()
        total += size
        if total > limits.series_bytes:
            raise limits.series_too_large()
        yield ds


@dataclass(frozen=True)
class SeriesReader:
    """WADO-RS series retrieval with the source's session, its multipart body read as a bounded stream."""

    session: requests.Session
    url: str
    timeout: tuple[float, float]

    def series_parts(self, study_uid: str, series_uid: str, limits: RetrievalLimits) -> Iterator[bytes]:
        """The body of each part, in order; raises as soon as a part or the whole body passes its limit."""
        url = f"{self.url}/studies/{quote(study_uid, safe='')}/series/{quote(series_uid, safe='')}"
        with self.session.get(url, headers={"Accept": ACCEPT_STORED}, stream=True, timeout=self.timeout) as response:
            response.raise_for_status()
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.series_bytes:
                raise limits.series_too_large()
            boundary = multipart_boundary(response.headers.get("Content-Type", ""))
            with _reads_cut_at_deadline(response, limits):
                try:
                    yield from multipart_parts(response.iter_content(CHUNK_BYTES), boundary, limits)
                except requests.RequestException:
                    limits.check_time()  # the deadline cut the read: say so rather than "broke off"
                    raise


@contextmanager
def _reads_cut_at_deadline(response: requests.Response, limits: RetrievalLimits) -> Iterator[None]:
    """Shut the socket for reading when the deadline passes. A read of a body with a Content-Length waits for the
    whole chunk it asked for, each socket read within the timeout, so a PACS that trickles is never checked between
    chunks; the shut socket ends that read at once."""
    if (left := limits.seconds_left()) is None:
        yield
        return
    timer = threading.Timer(max(0.0, left), _read_shutdown, args=(response,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _read_shutdown(response: requests.Response) -> None:
    with suppress(ValueError, RuntimeError, OSError):  # already read and released: nothing to cut
        response.raw.shutdown()  # urllib3 2.3+: safe from another thread


def multipart_boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/related`` type; None for a bare ``application/dicom`` body."""
    media_type, *params = (item.strip() for item in content_type.split(";"))
    if media_type.lower() == "application/dicom":
        return None
    if media_type.lower() != "multipart/related":
        raise PacsBadResponse(f"Series retrieval: the PACS answered {media_type or 'no media type'}, not multipart.")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    raise PacsBadResponse("Series retrieval: the multipart response names no boundary.")


class _Body:
    """A response body read chunk by chunk into a buffer that never grows past the limit being read against."""

    def __init__(self, chunks: Iterable[bytes], limits: RetrievalLimits) -> None:
        self.chunks = iter(chunks)
        self.limits = limits
        self.buffer = bytearray()
        self.total = 0

    def more(self) -> bool:
        for chunk in self.chunks:
            self.limits.check_time()
            self.total += len(chunk)
            if self.total > self.limits.series_bytes:
                raise self.limits.series_too_large()
            if chunk:
                self.buffer += chunk
                return True
        return False

    def until(self, marker: bytes, limit: int, too_long: Callable[[], Exception]) -> bytes | None:
        """The bytes before the next ``marker``, taken out of the buffer with it; None when the body ends first."""
        start = 0
        while (index := self.buffer.find(marker, start)) < 0:
            if len(self.buffer) > limit + len(marker):
                raise too_long()
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not self.more():
                return None
        if index > limit:
            raise too_long()
        with memoryview(self.buffer) as view:  # one copy of the part, not two
            data = view[:index].tobytes()
        del self.buffer[: index + len(marker)]
        return data

    def rest(self, limit: int) -> bytes:
        while self.more():
            if len(self.buffer) > limit:
                raise self.limits.instance_too_large()
        return bytes(self.buffer)


def multipart_parts(chunks: Iterable[bytes], boundary: bytes | None, limits: RetrievalLimits) -> Iterator[bytes]:
    """The bodies of the parts of a multipart/related stream (RFC 2046), each within ``limits.instance_bytes`` and
    all of it within ``limits.series_bytes``; with no boundary, the whole body as one part."""
    body = _Body(chunks, limits)
    if boundary is None:
        yield body.rest(limits.instance_bytes)
        return
    body.buffer += b"\r\n"  # the first delimiter may open the body: find it like every later one
    delimiter = b"\r\n--" + boundary
    malformed = PacsBadResponse("Series retrieval: the multipart response is malformed.")
    if body.until(delimiter, MAX_PREAMBLE_BYTES, lambda: malformed) is None:
        raise malformed
    while True:
        while len(body.buffer) < 2 and body.more():
            pass
        if body.buffer.startswith(b"--"):
            return  # the close delimiter; the epilogue is not read
        if body.until(b"\r\n\r\n", MAX_PART_HEADER_BYTES, lambda: malformed) is None:
            raise IncompleteResponse("The multipart response ended inside a part's headers.")
        content = body.until(delimiter, limits.instance_bytes, limits.instance_too_large)
        if content is None:
            raise IncompleteResponse("The multipart response ended inside a part.")
        yield content

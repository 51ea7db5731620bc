"""Talking to a PACS over DICOMweb: one client per source, our own retries, failures as PACS errors.

Searches and metadata go through the ``dicomweb_client.protocol.DICOMClient`` protocol, so tests can hand in any
client. Series retrieval reads the WADO-RS multipart response as a stream and stops at the byte limits and at its
deadline while it reads (``SeriesReader``). Messages and logs name the operation and the HTTP status only: request
URLs carry query strings with patient identifiers, and headers carry credentials.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import quote

import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.protocol import DICOMClient
from django.conf import settings
from pydicom import Dataset

from inference.dicom_header import VolumeError, parse_part10
from triage.core.env import env_str
from triage.core.exceptions import PacsError, TriageError
from triage.core.validators import secret_env_problem, url_problem
from triage.models import DicomWebSource

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ask for the stored transfer syntax and decode locally: Orthanc 1.10 cannot transcode JPEG 2000 without GDCM.
STORED_TRANSFER_SYNTAX = (("application/dicom", "*"),)
ACCEPT_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK_BYTES = 1 << 16
# A multipart preamble or a part's headers longer than this is not a DICOMweb response.
MAX_PREAMBLE_BYTES = 1 << 16
MAX_PART_HEADER_BYTES = 1 << 14
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
NUMBER_OF_STUDY_INSTANCES = "00201208"
NUMBER_OF_SERIES_INSTANCES = "00201209"


class PacsNotFound(TriageError):
    """The PACS answered that the study or series does not exist (any more)."""

    code = "pacs_not_found"
    status = 404


class PacsRequestRejected(TriageError):
    """The PACS refused the request itself (4xx): retrying the same request cannot help."""

    code = "pacs_rejected"
    status = 502


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_seconds: float = 0.5
    max_seconds: float = 8.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many workers do not retry in step."""
        ceiling = min(self.max_seconds, self.base_seconds * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)


def _status_of(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _classify(err: BaseException, what: str) -> TriageError:
    """Turn a transport error into our hierarchy; never copy ``str(err)``, which holds the URL."""
    if isinstance(err, requests.Timeout):
        return PacsError(f"{what}: the PACS did not answer in time.")
    if isinstance(err, requests.ConnectionError):
        return PacsError(f"{what}: the PACS cannot be reached.")
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return PacsError(f"{what}: the PACS response broke off.")
    status = _status_of(err)
    if status is None:
        return PacsError(f"{what}: the PACS connection failed ({type(err).__name__}).")
    if status in RETRYABLE_STATUSES:
        return PacsError(f"{what}: the PACS answered HTTP {status}.")
    if status == 404:
        return PacsNotFound(f"{what}: the PACS has no such object (HTTP 404).")
    return PacsRequestRejected(f"{what}: the PACS refused the request (HTTP {status}).")


def _pacs_call(call: Callable[[], T], *, what: str, policy: RetryPolicy) -> T:
    """Run ``call``, retrying timeouts, lost connections, 429 and 5xx with backoff; raise our errors."""
    for attempt in range(policy.attempts):
        try:
            return call()
        except (requests.RequestException, ValueError) as err:
            error = _classify(err, what)
            if not isinstance(error, PacsError) or attempt + 1 == policy.attempts:
                raise error from None
            delay = policy.delay(attempt)
            logger.warning("%s failed (%s); retrying in %.1f s", what, error.code, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class PacsConfigError(TriageError):
    """A source names a secret outside the allow-list or an address that is not http(s): refused before any call."""

    code = "pacs_config"
    status = 500


def _source_secret(source: DicomWebSource, name: str) -> str | None:
    """The secret in the environment variable ``name`` (or the file named by ``<name>_FILE``), if allowed."""
    if not name:
        return None
    problem = secret_env_problem(name)
    if problem:
        raise PacsConfigError(f"Source {source.name!r}: {problem}")
    return env_str(name)


def session_for_source(source: DicomWebSource) -> requests.Session:
    """A session with the source's credentials, read from the environment variables it names."""
    session = requests.Session()
    token = _source_secret(source, source.token_env)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif source.username:
        session.auth = (source.username, _source_secret(source, source.password_env) or "")
    return session


def client_for_source(source: DicomWebSource) -> DICOMClient:
    problem = url_problem(source.url) if source.url else "No URL."
    if problem:
        raise PacsConfigError(f"Source {source.name!r}: {problem}")
    timeout = settings.TRIAGE_HTTP_TIMEOUT_SECONDS
    client = DICOMwebClient(
        url=source.url.rstrip("/"),
        session=session_for_source(source),
        timeout=(min(timeout, 10.0), timeout),
    )
    client.set_http_retry_params(retry=False)  # ours below: backoff with jitter, and errors without URLs
    return cast(DICOMClient, client)  # dicomweb-client's own class declares a narrower ``protocol`` than it


class Pacs:
    """The reads the pipeline makes, each retried and translated into PACS errors."""

    def __init__(
        self, client: DICOMClient, *, policy: RetryPolicy | None = None, reader: SeriesReader | None = None
    ) -> None:
        self.client = client
        self.policy = policy or RetryPolicy(attempts=settings.TRIAGE_PACS_HTTP_ATTEMPTS)
        self.reader = reader

    @classmethod
    def for_source(cls, source: DicomWebSource) -> Pacs:
        return cls(client_for_source(source), reader=SeriesReader.for_source(source))

    def search_studies(
        self, *, filters: dict[str, Any], limit: int, offset: int, fields: list[str] | None = None
    ) -> list[dict]:
        return _pacs_call(
            lambda: self.client.search_for_studies(search_filters=filters, limit=limit, offset=offset, fields=fields),
            what="study search",
            policy=self.policy,
        )

    def study_exists(self, study_uid: str) -> bool:
        found = self.search_studies(filters={"StudyInstanceUID": study_uid}, limit=1, offset=0)
        return bool(found)

    def study_instance_count(self, study_uid: str) -> int | None:
        """NumberOfStudyRelatedInstances as the PACS reports it now; None when it does not say (or has no study)."""
        found = self.search_studies(
            filters={"StudyInstanceUID": study_uid}, limit=1, offset=0, fields=["NumberOfStudyRelatedInstances"]
        )
        return json_int(found[0], NUMBER_OF_STUDY_INSTANCES) if found else None

    def series_metadata(self, study_uid: str, series_uid: str) -> list[dict]:
        """Instance metadata (DICOM JSON, no pixel data) of every instance in a series."""
        return _pacs_call(
            lambda: self.client.retrieve_series_metadata(study_uid, series_uid),
            what="series metadata",
            policy=self.policy,
        )

    def first_instance_metadata(self, study_uid: str, series_uid: str) -> dict | None:
        """One instance's metadata (DICOM JSON): enough to route a series without reading all of it."""
        found = _pacs_call(
            lambda: self.client.search_for_instances(study_uid, series_uid, limit=1),
            what="instance search",
            policy=self.policy,
        )
        sop_uid = json_value(found[0], "00080018") if found else None
        if not sop_uid:
            return None
        metadata = _pacs_call(
            lambda: self.client.retrieve_instance_metadata(study_uid, series_uid, sop_uid),
            what="instance metadata",
            policy=self.policy,
        )
        return metadata if isinstance(metadata, dict) else (metadata[0] if metadata else None)

    def search_series(self, study_uid: str) -> list[dict]:
        return _pacs_call(
            lambda: self.client.search_for_series(study_instance_uid=study_uid, get_remaining=True),
            what="series search",
            policy=self.policy,
        )

    def retrieve_series(
        self,
        study_uid: str,
        series_uid: str,
        *,
        max_instances: int | None = None,
        max_instance_bytes: int | None = None,
        max_series_bytes: int | None = None,
    ) -> list[Dataset]:
        """Every instance of one series in its stored transfer syntax, read part by part within the limits.

        The byte limits (default: the settings) hold while the response is read: a series or instance over them is
        refused before the rest arrives. A stream that breaks half-way is retried from the start, within one
        deadline for the whole retrieval (TRIAGE_RETRIEVE_DEADLINE_SECONDS): the read timeout holds per chunk only,
        so a PACS that trickles would otherwise hold the worker for ever.
        """
        limits = RetrievalLimits(
            instances=max_instances,
            instance_bytes=max_instance_bytes or settings.TRIAGE_MAX_INSTANCE_BYTES,
            series_bytes=max_series_bytes or settings.TRIAGE_MAX_SERIES_DOWNLOAD_BYTES,
            seconds=settings.TRIAGE_RETRIEVE_DEADLINE_SECONDS,
        )
        return _pacs_call(
            lambda: list(self._stream_series(study_uid, series_uid, limits)),
            what="series retrieval",
            policy=self.policy,
        )

    def _stream_series(self, study_uid: str, series_uid: str, limits: RetrievalLimits) -> Iterator[Dataset]:
        limits.check_time()  # a retry after the deadline is not started
        if self.reader is None:  # a client without HTTP (tests): its datasets, counted as they come
            yield from _counted(
                self.client.iter_series(study_uid, series_uid, media_types=STORED_TRANSFER_SYNTAX), limits
            )
            return
        for count, part in enumerate(self.reader.series_parts(study_uid, series_uid, limits), start=1):
            limits.check_count(count)
            yield _dataset_of(part, count, limits)


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


def _dataset_of(part: bytes, count: int, limits: RetrievalLimits) -> Dataset:
    """Parse one part; a deflated data set is inflated within the instance limit (pydicom's own is unbounded)."""
    try:
        return parse_part10(part, max_bytes=limits.instance_bytes, label=f"instance #{count} of the response")
    except VolumeError as err:
        if err.code == InstanceTooLarge.code:
            raise InstanceTooLarge(err.message) from None
        raise PacsBadResponse(f"Series retrieval: {err.message}", code=err.code) from None


def _counted(datasets: Iterable[Dataset], limits: RetrievalLimits) -> Iterator[Dataset]:
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

    @classmethod
    def for_source(cls, source: DicomWebSource) -> SeriesReader:
        timeout = settings.TRIAGE_HTTP_TIMEOUT_SECONDS
        return cls(session_for_source(source), source.url.rstrip("/"), (min(timeout, 10.0), timeout))

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


def json_value(item: dict, keyword_tag: str) -> Any:
    """The first value of a DICOM JSON attribute (``keyword_tag`` is the 8-hex-digit tag), or None."""
    element = item.get(keyword_tag) or {}
    values = element.get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value["Alphabetic"]
    return value


def json_int(item: dict, keyword_tag: str) -> int | None:
    """An integer attribute (IS, US, UL) as an int, or None when absent or not a number."""
    try:
        return int(json_value(item, keyword_tag))
    except (TypeError, ValueError):
        return None


def json_values(item: dict, keyword_tag: str) -> list[Any]:
    element = item.get(keyword_tag) or {}
    return list(element.get("Value") or [])

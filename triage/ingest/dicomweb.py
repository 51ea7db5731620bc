"""Talking to a PACS over DICOMweb: one client per source, our own retries, failures as PACS errors.

Searches and metadata go through the ``dicomweb_client.protocol.DICOMClient`` protocol, so tests can hand in any
client. Series retrieval reads the WADO-RS multipart response as a stream and stops at the byte limits and at its
deadline while it reads (``SeriesReader``). Messages and logs name the operation and the HTTP status only: request
URLs carry query strings with patient identifiers, and headers carry credentials.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.protocol import DICOMClient
from django.conf import settings
from pydicom import Dataset

from triage.core.env import env_str
from triage.core.exceptions import PacsError, PacsNotFound, PacsRequestRejected, TriageError
from triage.core.validators import secret_env_problem, url_problem
from triage.ingest.wado import (
    IncompleteResponse,
    InstanceTooLarge,
    PacsBadResponse,
    RetrievalLimits,
    SeriesReader,
    SeriesTooLarge,
    counted,
    dataset_of,
)
from triage.models import DicomWebSource

__all__ = [  # the retrieval errors and the PACS errors stay importable from here
    "IncompleteResponse",
    "InstanceTooLarge",
    "Pacs",
    "PacsBadResponse",
    "PacsNotFound",
    "PacsRequestRejected",
    "SeriesTooLarge",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ask for the stored transfer syntax and decode locally: Orthanc 1.10 cannot transcode JPEG 2000 without GDCM.
STORED_TRANSFER_SYNTAX = (("application/dicom", "*"),)
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
NUMBER_OF_STUDY_INSTANCES = "00201208"
NUMBER_OF_SERIES_INSTANCES = "00201209"


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


def series_reader_for_source(source: DicomWebSource) -> SeriesReader:
    timeout = settings.TRIAGE_HTTP_TIMEOUT_SECONDS
    return SeriesReader(session_for_source(source), source.url.rstrip("/"), (min(timeout, 10.0), timeout))


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
        return cls(client_for_source(source), reader=series_reader_for_source(source))

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
            yield from counted(
                self.client.iter_series(study_uid, series_uid, media_types=STORED_TRANSFER_SYNTAX), limits
            )
            return
        for count, part in enumerate(self.reader.series_parts(study_uid, series_uid, limits), start=1):
            limits.check_count(count)
            yield dataset_of(part, count, limits)


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

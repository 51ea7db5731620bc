"""``/viewer/<study_instance_uid>/``: the study in the Orthanc Web Viewer of the PACS, framed beside the AI results
as the PACS holds them (the SRs that write-back stored, read back over DICOMweb). Each open is audited.

The Orthanc Web Viewer addresses one series by its Orthanc ID, so the page looks the study up in Orthanc and opens
the key image series of the most suspicious finding, else the series the model read, else the largest image series.
It cannot open on a given slice: the page says which image of the series is the key slice (docs/viewer.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from triage.core.audit import audit_record
from triage.core.exceptions import TriageError
from triage.core.permissions import request_user
from triage.ingest.dicomweb import client_for_source
from triage.models import DicomWebSource, Study, TriageResult, User
from triage.writeback.readback import StoredResult, stored_results_read

logger = logging.getLogger(__name__)

PACS_TIMEOUT_SECONDS = 10
VIEWER_PATH = "/web-viewer/app/viewer.html"
NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "DOC"}


class PacsUnavailable(Exception):
    """The PACS did not answer, or answered with an error."""


# ---------------------------------------------------------------------------------------------------------------
# Orthanc's REST API (the viewer's series IDs)


def orthanc_root() -> str:
    """Orthanc's web root: TRIAGE_VIEWER_ORTHANC_URL, else the DICOMweb URL without its ``/dicom-web`` suffix."""
    explicit = (settings.TRIAGE_VIEWER_ORTHANC_URL or "").rstrip("/")
    if explicit:
        return explicit
    url = (settings.TRIAGE_DICOMWEB_URL or "").rstrip("/")
    if not url:
        raise Http404("No PACS is configured (TRIAGE_VIEWER_ORTHANC_URL or TRIAGE_DICOMWEB_URL)")
    return url.removesuffix("/dicom-web")


def _orthanc(method: str, path: str, data: str | None = None) -> object:
    auth = None
    if settings.TRIAGE_DICOMWEB_USERNAME:
        auth = (settings.TRIAGE_DICOMWEB_USERNAME, settings.TRIAGE_DICOMWEB_PASSWORD or "")
    try:
        response = requests.request(method, orthanc_root() + path, data=data, auth=auth, timeout=PACS_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as err:
        raise PacsUnavailable(type(err).__name__) from err


def orthanc_id(uid: str, kind: str) -> str | None:
    """The Orthanc ID of the study, series or instance with this DICOM UID (``kind``: Study, Series, Instance)."""
    found = _orthanc("POST", "/tools/lookup", data=uid)
    ids = [hit["ID"] for hit in found if hit.get("Type") == kind] if isinstance(found, list) else []
    return str(ids[0]) if ids else None


def viewer_series_url(series_id: str) -> str:
    return f"{orthanc_root()}{VIEWER_PATH}?{urlencode({'series': series_id})}"


def key_slice_position(series_id: str, key_instance_uid: str | None) -> tuple[int, int] | None:
    """(n, of) where the key slice is image n (from 1) of the series as the viewer orders it; None if unknown."""
    if not key_instance_uid:
        return None
    try:
        instance = orthanc_id(key_instance_uid, "Instance")
        volume = _orthanc("GET", f"/web-viewer/series/{series_id}")
    except PacsUnavailable:
        return None
    slices = [str(s).split("_")[0] for s in volume.get("Slices", [])] if isinstance(volume, dict) else []
    return (slices.index(instance) + 1, len(slices)) if instance in slices else None


# ---------------------------------------------------------------------------------------------------------------
# Which series to open


@dataclass(frozen=True)
class SeriesLink:
    id: str
    uid: str
    label: str
    modality: str
    count: int


def image_series(series: list[dict]) -> list[SeriesLink]:
    """The study's series that the viewer can show (never an SR, KO, PR or SEG), in series-number order."""
    links = []
    for entry in series:
        tags = entry.get("MainDicomTags", {})
        modality = str(tags.get("Modality", "")).upper()
        if modality in NON_IMAGE_MODALITIES:
            continue
        label = tags.get("SeriesDescription") or f"Series {tags.get('SeriesNumber', '?')}"
        uid = str(tags.get("SeriesInstanceUID", ""))
        links.append(SeriesLink(str(entry["ID"]), uid, str(label), modality, len(entry.get("Instances", []))))
    number = {str(e["ID"]): str(e.get("MainDicomTags", {}).get("SeriesNumber", "")) for e in series}
    return sorted(links, key=lambda s: (len(number[s.id]), number[s.id]))


def key_series_uid(study_instance_uid: str) -> str | None:
    """The series of the most suspicious current finding in our database (positive first, then by score)."""
    return (
        TriageResult.objects.filter(study__study_instance_uid=study_instance_uid, is_current=True)
        .order_by("-positive", "-score")
        .values_list("series__series_instance_uid", flat=True)
        .first()
    )


def pick_series(series: list[dict], key_uid: str | None) -> str | None:
    """The Orthanc ID of the key series if the PACS holds it, else of the image series with the most instances."""
    images = image_series(series)
    for link in images:
        if key_uid and link.uid == key_uid:
            return link.id
    largest = max(images, key=lambda s: s.count, default=None)
    return largest.id if largest else None


def series_to_open(
    images: list[SeriesLink], *, requested: str | None, results: list[StoredResult], key_uid: str | None
) -> SeriesLink | None:
    """The series asked for, else the key image of the most suspicious result, else the series it was read on."""
    by_id = {s.id: s for s in images}
    by_uid = {s.uid: s for s in images}
    if requested in by_id:
        return by_id[requested]
    for result in results[:1]:
        for uid in (result.key_image_series_uid, result.evaluated_series_uid):
            if uid in by_uid:
                return by_uid[uid]
    return by_uid.get(key_uid or "") or max(images, key=lambda s: s.count, default=None)


# ---------------------------------------------------------------------------------------------------------------
# The AI results as the PACS holds them


@dataclass(frozen=True)
class ResultCard:
    result: StoredResult
    key_image_series: SeriesLink | None
    evaluated_series: SeriesLink | None
    key_position: tuple[int, int] | None


def stored_results(study: Study | None) -> tuple[list[StoredResult], bool]:
    """Our SRs in the PACS that write-back stores to (the study's source), and whether the PACS could be read."""
    source = study.source if study is not None else None
    source = source or DicomWebSource.objects.filter(name="default").first()
    if study is None or source is None:
        return [], True
    try:
        return stored_results_read(client_for_source(source), study.study_instance_uid), True
    except (TriageError, requests.RequestException, ValueError) as err:
        logger.warning("viewer: the AI results could not be read from the PACS (%s)", type(err).__name__)
        return [], False


def result_cards(results: list[StoredResult], images: list[SeriesLink]) -> list[ResultCard]:
    by_uid = {s.uid: s for s in images}
    cards = []
    for result in results:
        evaluated = by_uid.get(result.evaluated_series_uid or "")
        position = key_slice_position(evaluated.id, result.key_instance_uid) if evaluated else None
        cards.append(ResultCard(result, by_uid.get(result.key_image_series_uid or ""), evaluated, position))
    return cards


# ---------------------------------------------------------------------------------------------------------------
# The page


@transaction.atomic(durable=True)
def viewer_open_audit(*, actor: User, study_instance_uid: str, study: Study | None, series: SeriesLink) -> None:
    """Who opened which study's images, and on which series: identifiers only."""
    data = {"study_instance_uid": study_instance_uid, "series_instance_uid": series.uid}
    audit_record(action="viewer.opened", actor=actor, obj=study, data=data)


@require_GET
@login_required
def viewer_open(request: HttpRequest, study_instance_uid: str) -> HttpResponse:
    try:
        study_id = orthanc_id(study_instance_uid, "Study")
        series = _orthanc("GET", f"/studies/{study_id}/series") if study_id else []
    except PacsUnavailable as err:
        logger.warning("viewer: the PACS did not answer the study lookup (%s)", err)
        return HttpResponse("The PACS did not answer; try again.", status=502, content_type="text/plain")
    images = image_series(series if isinstance(series, list) else [])
    study = Study.objects.filter(study_instance_uid=study_instance_uid).select_related("source").first()
    results, readable = stored_results(study)
    current = series_to_open(
        images, requested=request.GET.get("series"), results=results, key_uid=key_series_uid(study_instance_uid)
    )
    if current is None:
        raise Http404("The PACS holds no images of this study")
    viewer_open_audit(actor=request_user(request), study_instance_uid=study_instance_uid, study=study, series=current)
    context = {
        "study": study,
        "series": images,
        "current": current,
        "current_url": viewer_series_url(current.id),
        "cards": result_cards(results, images),
        "readable": readable,
    }
    return render(request, "triage/viewer.html", context)

"""``/viewer/<study_instance_uid>/``: opens a study in the Orthanc Web Viewer of the default PACS.

The Orthanc Web Viewer addresses one series by its Orthanc ID, not by a DICOM UID, so this view looks the study up
in the PACS (``/tools/lookup``) and redirects to the viewer on its key series: the series of the most suspicious
current AI finding, else the study's largest image series. Set ``TRIAGE_VIEWER_URL=/viewer/{study_instance_uid}/``
when the default PACS is an Orthanc with the Web Viewer plugin whose address browsers can reach (``make demo``).
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_GET

from triage.models import TriageResult

logger = logging.getLogger(__name__)

PACS_TIMEOUT_SECONDS = 10
VIEWER_PATH = "/web-viewer/app/viewer.html"
NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "DOC"}


class PacsUnavailable(Exception):
    """The PACS did not answer, or answered with an error."""


def orthanc_root() -> str:
    """Orthanc's REST root: the DICOMweb URL without its ``/dicom-web`` suffix."""
    url = (settings.TRIAGE_DICOMWEB_URL or "").rstrip("/")
    if not url:
        raise Http404("No PACS is configured (TRIAGE_DICOMWEB_URL)")
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


def orthanc_study_id(study_instance_uid: str) -> str | None:
    found = _orthanc("POST", "/tools/lookup", data=study_instance_uid)
    ids = [hit["ID"] for hit in found if hit.get("Type") == "Study"] if isinstance(found, list) else []
    return ids[0] if ids else None


def key_series_uid(study_instance_uid: str) -> str | None:
    """The series of the most suspicious current finding (positive first, then by score)."""
    return (
        TriageResult.objects.filter(study__study_instance_uid=study_instance_uid, is_current=True)
        .order_by("-positive", "-score")
        .values_list("series__series_instance_uid", flat=True)
        .first()
    )


def pick_series(series: list[dict], key_uid: str | None) -> str | None:
    """The Orthanc ID of the key series if the PACS holds it, else of the image series with the most instances."""
    images = [s for s in series if s.get("MainDicomTags", {}).get("Modality", "").upper() not in NON_IMAGE_MODALITIES]
    for entry in images:
        if key_uid and entry.get("MainDicomTags", {}).get("SeriesInstanceUID") == key_uid:
            return str(entry["ID"])
    largest = max(images, key=lambda s: len(s.get("Instances", [])), default=None)
    return str(largest["ID"]) if largest else None


@require_GET
@login_required
def viewer_open(request: HttpRequest, study_instance_uid: str) -> HttpResponse:
    try:
        study_id = orthanc_study_id(study_instance_uid)
        series = _orthanc("GET", f"/studies/{study_id}/series") if study_id else []
    except PacsUnavailable as err:
        logger.warning("viewer: the PACS did not answer the study lookup (%s)", err)
        return HttpResponse("The PACS did not answer; try again.", status=502, content_type="text/plain")
    series_id = pick_series(series if isinstance(series, list) else [], key_series_uid(study_instance_uid))
    if series_id is None:
        raise Http404("The PACS holds no images of this study")
    return HttpResponseRedirect(f"{orthanc_root()}{VIEWER_PATH}?{urlencode({'series': series_id})}")

"""The viewer page (triage/viewer.py): which series it opens, the AI results it lists from the PACS, the audit row
of each open, and that it needs a login. Against a real Orthanc with the Web Viewer plugin."""

from __future__ import annotations

import pytest

from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from tests.triage.writeback_helpers import deliver_due, result_recorded, write_back_source
from tools.procs import free_port
from triage.models import AuditEvent, WritebackMessage
from triage.viewer import SeriesLink, orthanc_root, pick_series, series_to_open
from triage.writeback.readback import StoredResult

KEY_SLICE = 3


def series(orthanc_id: str, uid: str, modality: str = "CT", instances: int = 10) -> dict:
    tags = {"SeriesInstanceUID": uid, "Modality": modality}
    return {"ID": orthanc_id, "MainDicomTags": tags, "Instances": [str(n) for n in range(instances)]}


def link(orthanc_id: str, uid: str, count: int = 10) -> SeriesLink:
    return SeriesLink(orthanc_id, uid, f"series {uid}", "CT", count)


def stored(*, key_image: str | None, evaluated: str | None) -> StoredResult:
    return StoredResult(
        finding="Intracranial hemorrhage",
        evaluation="Present",
        positive=True,
        retracted=False,
        laterality=None,
        score=0.9,
        threshold=0.5,
        model_name="ich2d",
        model_version="3.0",
        comments=(),
        version=1,
        series_instance_uid="9.1",
        sop_instance_uid="9.1.1",
        evaluated_series_uid=evaluated,
        key_instance_uid=None,
        key_image_series_uid=key_image,
    )


def test_the_key_series_is_opened_when_the_pacs_holds_it():
    found = [series("a", "1.1", instances=200), series("b", "1.2", instances=30)]
    assert pick_series(found, "1.2") == "b"


def test_without_a_key_series_the_largest_image_series_is_opened_never_the_sr():
    found = [series("sr", "1.9", modality="SR", instances=500), series("a", "1.1", instances=30), series("b", "1.2")]
    assert pick_series(found, "9.9") == "a"


def test_a_study_without_images_opens_nothing():
    assert pick_series([series("sr", "1.9", modality="SR")], None) is None


def test_the_key_image_series_of_the_most_suspicious_result_is_opened_first():
    images = [link("ct", "1.1", 200), link("sc", "1.8", 1)]
    results = [stored(key_image="1.8", evaluated="1.1")]

    assert series_to_open(images, requested=None, results=results, key_uid="1.1") == images[1]


def test_without_a_key_image_the_series_the_model_read_is_opened():
    images = [link("big", "1.0", 300), link("ct", "1.1", 200)]
    results = [stored(key_image="7.7", evaluated="1.1")]

    assert series_to_open(images, requested=None, results=results, key_uid=None) == images[1]


def test_a_series_asked_for_is_opened_only_when_it_belongs_to_the_study():
    images = [link("ct", "1.1", 200), link("sc", "1.8", 1)]

    assert series_to_open(images, requested="ct", results=[], key_uid="1.8") == images[0]
    assert series_to_open(images, requested="elsewhere", results=[], key_uid="1.8") == images[1]


def test_the_viewer_orthanc_url_setting_comes_before_the_dicomweb_url(settings):
    settings.TRIAGE_DICOMWEB_URL = "http://10.0.0.5:8042/dicom-web"
    settings.TRIAGE_VIEWER_ORTHANC_URL = "https://pacs.example.org/orthanc/"
    assert orthanc_root() == "https://pacs.example.org/orthanc"
    settings.TRIAGE_VIEWER_ORTHANC_URL = None
    assert orthanc_root() == "http://10.0.0.5:8042"


@pytest.mark.django_db
def test_the_viewer_page_needs_a_login(client):
    response = client.get("/viewer/1.2.3/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


@pytest.fixture
def pacs(viewer_orthanc, settings):
    settings.TRIAGE_DICOMWEB_URL = viewer_orthanc.dicomweb_url
    settings.TRIAGE_VIEWER_ORTHANC_URL = None
    return viewer_orthanc


@pytest.fixture
def written_back(pacs, db):
    """A study of eight slices in the PACS, triaged positive for ICH, its SR and key image written back."""
    spec = upload_study(pacs, StudySpec(series=[SeriesSpec(slices=8)]))
    source = write_back_source(pacs.dicomweb_url)
    result_recorded(
        source, study_uid=spec.study_uid, series_uid=spec.series[0].series_uid, key_slice=KEY_SLICE, score=0.93
    )
    deliver_due()
    return spec


def test_the_page_frames_the_viewer_on_the_key_image_series(pacs, written_back, rad_web):
    message = WritebackMessage.objects.get()

    page = rad_web.get(f"/viewer/{written_back.study_uid}/")

    assert page.status_code == 200
    assert page.context["current"].uid == message.sc_series_uid
    assert page.context["current_url"].startswith(f"{pacs.url}/web-viewer/app/viewer.html?series=")
    assert f'src="{page.context["current_url"]}"' in page.content.decode()


def test_the_page_lists_the_sr_read_back_from_the_pacs(written_back, rad_web):
    page = rad_web.get(f"/viewer/{written_back.study_uid}/").content.decode()

    for text in ("Intracranial hemorrhage", "Present", "0.93", "0.50", "ich2d 0.1.0", "not a diagnosis"):
        assert text in page
    assert "Key image series" in page


def test_the_key_slice_is_named_by_its_image_number_in_the_viewer(written_back, rad_web):
    page = rad_web.get(f"/viewer/{written_back.study_uid}/")

    card = page.context["cards"][0]
    assert card.key_position == (KEY_SLICE + 1, 8)
    assert f"image {KEY_SLICE + 1} of 8 in" in page.content.decode()


def test_a_series_link_on_the_page_opens_that_series(written_back, rad_web):
    first = rad_web.get(f"/viewer/{written_back.study_uid}/").context["cards"][0]

    page = rad_web.get(f"/viewer/{written_back.study_uid}/", {"series": first.evaluated_series.id})

    assert page.context["current"].uid == written_back.series[0].series_uid


def test_each_open_is_audited_with_identifiers_only(written_back, rad_web, radiologist):
    rad_web.get(f"/viewer/{written_back.study_uid}/")

    event = AuditEvent.objects.get(action="viewer.opened")
    assert (event.actor, event.object_type) == (radiologist, "Study")
    assert event.data == {
        "study_instance_uid": written_back.study_uid,
        "series_instance_uid": WritebackMessage.objects.get().sc_series_uid,
    }


def test_without_write_back_the_page_opens_the_images_and_says_no_ai_result_is_in_the_pacs(pacs, rad_web):
    spec = upload_study(pacs, StudySpec(series=[SeriesSpec(slices=4)]))

    page = rad_web.get(f"/viewer/{spec.study_uid}/")

    assert page.context["current"].uid == spec.series[0].series_uid
    assert "The PACS holds no AI result for this study" in page.content.decode()


@pytest.mark.django_db
def test_a_pacs_that_does_not_answer_gets_a_502_and_no_audit_row(rad_web, settings):
    settings.TRIAGE_DICOMWEB_URL = f"http://127.0.0.1:{free_port()}/dicom-web"
    settings.TRIAGE_VIEWER_ORTHANC_URL = None

    response = rad_web.get("/viewer/1.2.3/")

    assert response.status_code == 502
    assert not AuditEvent.objects.filter(action="viewer.opened").exists()

"""In Chromium: the worklist's patient columns and department filter, "open in viewer" from a critical row into the
Orthanc Web Viewer on the study's images, and one desktop notification per new critical study while the page is
in the background.

``WORKLIST_SCREENSHOT_DIR`` set: the worklist and the viewer are saved there as PNG (docs/img/ holds copies).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from tests.browser import logged_in_page, off_loop, session_cookie
from tests.factories import ResultFactory, SeriesFactory, StudyFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT_DIR = os.environ.get("WORKLIST_SCREENSHOT_DIR")
PATIENT = {
    "patient_name": "Moreau^Claire",
    "patient_id": "MRN0042",
    "patient_age_years": 61,
    "patient_sex": "F",
    "department": "Emergency",
    "institution": "General Hospital",
    "referring_physician": "Okafor^Daniel",
}
NOTIFICATION_RECORDER = """
window.__notifications = [];
class RecordedNotification {
  constructor(title, options) { window.__notifications.push({ title, ...(options || {}) }); }
  close() {}
  static requestPermission() { return Promise.resolve("granted"); }
}
RecordedNotification.permission = "granted";
window.Notification = RecordedNotification;
"""
HIDE_PAGE = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def screenshot(page, name: str) -> None:
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / name))


def recorded_notifications_page(browser, base_url: str, username: str):
    """A logged-in page whose ``Notification`` records each notification instead of showing it."""
    cookie = off_loop(session_cookie, username)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["notifications"], origin=base_url)
    context.add_init_script(NOTIFICATION_RECORDER)
    context.add_cookies([{"name": "sessionid", "value": cookie, "url": base_url}])
    page = context.new_page()
    page.goto(base_url + "/")
    page.wait_for_selector("#connection.conn-live", timeout=15000)
    return page


def critical_study(*, series_uid: str | None = None, **study):
    from worklist.services import worklist_item_sync

    study = StudyFactory(study_description="CT HEAD WO CONTRAST", **study)
    series = SeriesFactory(study=study, **({"series_instance_uid": series_uid} if series_uid else {}))
    ResultFactory(series=series, score=0.93, threshold=0.5)
    return worklist_item_sync(study=study)


def routine_study(**study):
    from worklist.services import worklist_item_sync

    return worklist_item_sync(study=StudyFactory(study_description="CT HEAD ROUTINE", **study))


def test_patient_columns_and_department_filter(live_server_url, chromium):
    acquired = datetime.datetime(2026, 3, 4, 9, 30, tzinfo=datetime.UTC)
    item = off_loop(lambda: critical_study(study_datetime=acquired, **PATIENT))
    other = off_loop(lambda: routine_study(department="Neurology", patient_name="Berg^Anton"))
    uid, other_uid = item.study.study_instance_uid, other.study.study_instance_uid
    page = logged_in_page(chromium, live_server_url, "rad_p")
    page.wait_for_selector(f'#rows tr[data-uid="{other_uid}"]')
    row_text = page.locator(f'#rows tr[data-uid="{uid}"]').inner_text()
    header = page.locator(".wl-list thead").inner_text()
    screenshot(page, "worklist-patients.png")

    page.locator("#f-department").fill("emergency")
    page.locator("#f-department").dispatch_event("change")
    page.wait_for_selector(f'#rows tr[data-uid="{other_uid}"]', state="detached", timeout=10000)

    assert "Patient" in header
    for text in ("Moreau, Claire", "MRN MRN0042 · 61 F", "Emergency", "ref. Okafor, Daniel"):
        assert text in row_text
    assert page.locator("#rows tr").count() == 1


def test_desktop_notification_once_for_a_new_critical_study_while_hidden(live_server_url, chromium):
    page = recorded_notifications_page(chromium, live_server_url, "rad_n")
    page.locator("#notify-toggle").click()
    page.wait_for_selector('#notify-toggle[aria-pressed="true"]')
    in_front = off_loop(critical_study)
    page.wait_for_selector(f'#rows tr[data-uid="{in_front.study.study_instance_uid}"]', timeout=10000)

    page.evaluate(HIDE_PAGE)
    item = off_loop(critical_study)
    page.wait_for_function("() => window.__notifications.length > 0", timeout=10000)
    off_loop(lambda: routine_study())  # a later event re-renders the list: no second notification
    page.wait_for_selector("#rows tr:nth-child(3)", timeout=10000)
    notes = page.evaluate("() => window.__notifications")
    remembered = page.evaluate("() => localStorage.getItem('worklist.notify')")

    assert [n["tag"] for n in notes] == [f"worklist-critical-{item.pk}"]
    assert "Suspected ICH" in notes[0]["body"]
    assert "Synthetic" not in notes[0]["body"]  # the patient's name stays off the desktop
    assert item.study.patient_id not in notes[0]["body"]
    assert remembered == "on"


def test_viewer_opens_on_the_critical_study_images(viewer_server_url, viewer_orthanc, chromium, tmp_path):
    study_uid, series_uid = upload_phantom_study(viewer_orthanc, tmp_path)
    item = off_loop(lambda: critical_study(series_uid=series_uid, study_instance_uid=study_uid, **PATIENT))
    page = logged_in_page(chromium, viewer_server_url, "rad_v")
    page.locator(f'#rows tr[data-uid="{item.study.study_instance_uid}"]').click()
    link = page.locator("#detail a.button", has_text="Open in viewer")

    with page.context.expect_page(timeout=15000) as opened:
        link.click()
    viewer = opened.value
    viewer.wait_for_load_state("load", timeout=30000)
    viewer.wait_for_function(DRAWN_IMAGE, timeout=60000)
    screenshot(viewer, "viewer-study.png")
    series_id = viewer_orthanc_series_id(viewer_orthanc, series_uid)

    assert link.get_attribute("href") == f"/viewer/{study_uid}/"
    assert viewer.url.startswith(f"{viewer_orthanc.url}/web-viewer/app/viewer.html?series={series_id}")
    assert "AXIAL" in viewer.locator("#topright").inner_text().upper()


# The viewer draws with cornerstone onto a canvas on its own origin: some pixel that is neither black nor empty.
DRAWN_IMAGE = """() => {
  const canvas = document.querySelector("#dicomImage canvas");
  if (!canvas || !canvas.width) return false;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 4 * 97) if (data[i] > 40) return true;
  return false;
}"""


def upload_phantom_study(orthanc, directory: Path) -> tuple[str, str]:
    """A small synthetic head CT with a subdural bleed, stored in the PACS: (study UID, series UID)."""
    import pydicom

    from inference.dicom_write import write_study
    from inference.phantoms.ncct import generate_ncct

    phantom = generate_ncct(9101, positive=True, subtype="sdh", shape=(12, 256, 256), slice_thickness_mm=5.0)
    info = write_study(phantom, directory, seed=9101, patient={"PatientName": "Moreau^Claire"})
    files = info.series[0]
    for path in files:
        orthanc.upload(path)
    return info.study_uid, str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def viewer_orthanc_series_id(orthanc, series_uid: str) -> str:
    import requests

    hits = requests.post(f"{orthanc.url}/tools/lookup", data=series_uid, timeout=10).json()
    return next(hit["ID"] for hit in hits if hit["Type"] == "Series")


@pytest.fixture(scope="module")
def viewer_orthanc(service_dir):
    """An Orthanc with DICOMweb and the Orthanc Web Viewer plugin (Debian orthanc-webviewer)."""
    from tools.orthanc import WEBVIEWER_PLUGIN, OrthancServer

    if not Path(WEBVIEWER_PLUGIN).exists():
        pytest.skip("the Orthanc Web Viewer is not installed: apt-get install -y orthanc-webviewer")
    server = OrthancServer(service_dir / "orthanc-viewer", plugins=[WEBVIEWER_PLUGIN]).start()
    yield server
    server.stop()


@pytest.fixture
def viewer_env(viewer_orthanc, monkeypatch):
    """The server process (started after this) points its PACS and its viewer links at that Orthanc."""
    viewer_orthanc.clear()
    monkeypatch.setenv("TRIAGE_DICOMWEB_URL", viewer_orthanc.dicomweb_url)
    monkeypatch.setenv("TRIAGE_VIEWER_URL", "/viewer/{study_instance_uid}/")


@pytest.fixture
def viewer_server_url(viewer_env, live_server_url):
    return live_server_url

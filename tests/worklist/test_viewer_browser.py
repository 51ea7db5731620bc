"""In Chromium: the worklist's patient columns and department filter, "open in viewer" from a critical row into our
viewer page (the Orthanc Web Viewer framed on the key image, the SR read back from the PACS beside it), and one
desktop notification per new critical study while the page is in the background.

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


def test_viewer_opens_from_a_critical_row_on_the_key_image_with_the_sr_listed(
    viewer_server_url, viewer_orthanc, chromium, tmp_path
):
    phantom = phantom_in_pacs(viewer_orthanc, tmp_path)
    item, key_slice = off_loop(lambda: critical_study_written_back(viewer_orthanc, *phantom))
    study_uid = item.study.study_instance_uid
    page = logged_in_page(chromium, viewer_server_url, "rad_v")
    page.locator(f'#rows tr[data-uid="{study_uid}"]').click()
    link = page.locator("#detail a.button", has_text="Open in viewer")

    with page.context.expect_page(timeout=15000) as opened:
        link.click()
    viewer = opened.value
    viewer.wait_for_load_state("load", timeout=30000)
    drawn_in_frame(viewer)
    screenshot(viewer, "viewer-study.png")
    results = viewer.locator(".vw-results").inner_text()
    key_image_frame = viewer.locator("#vw-frame").get_attribute("src")
    viewer.locator(".vw-result dd a").first.click()  # the series holding the key slice
    frame = drawn_in_frame(viewer)

    assert link.get_attribute("href") == f"/viewer/{study_uid}/"
    assert key_image_frame.startswith(f"{viewer_orthanc.url}/web-viewer/app/viewer.html?series=")
    for text in ("Intracranial hemorrhage: Present", "0.93", "0.50", "ich2d 3.0", "not a diagnosis"):
        assert text in results
    assert f"image {key_slice + 1} of 12" in results
    assert "AXIAL" in frame.locator("#topright").inner_text().upper()


def drawn_in_frame(viewer):
    """The framed Orthanc Web Viewer (its own origin) once it has drawn an image."""
    viewer.wait_for_selector("#vw-frame")
    frame = viewer.locator("#vw-frame").element_handle().content_frame()
    frame.wait_for_load_state("load", timeout=30000)
    frame.wait_for_function(DRAWN_IMAGE, timeout=60000)
    return frame


# The viewer draws with cornerstone onto a canvas on its own origin: some pixel that is neither black nor empty.
DRAWN_IMAGE = """() => {
  const canvas = document.querySelector("#dicomImage canvas");
  if (!canvas || !canvas.width) return false;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 4 * 97) if (data[i] > 40) return true;
  return false;
}"""


def phantom_in_pacs(orthanc, directory: Path) -> tuple[str, str, int, bytes]:
    """A synthetic head CT with a subdural bleed stored in the PACS: its study and series UIDs, key slice and image."""
    import pydicom

    from inference.dicom_write import write_study
    from inference.phantoms.ncct import generate_ncct

    phantom = generate_ncct(9101, positive=True, subtype="sdh", shape=(12, 256, 256), slice_thickness_mm=5.0)
    info = write_study(phantom, directory, seed=9101, patient={"PatientName": "Moreau^Claire"})
    for path in info.series[0]:
        orthanc.upload(path)
    series_uid = str(pydicom.dcmread(info.series[0][0], stop_before_pixels=True).SeriesInstanceUID)
    return (info.study_uid, series_uid, *phantom_key_image(phantom, score=0.93))


def critical_study_written_back(orthanc, study_uid: str, series_uid: str, key_slice: int, png: bytes):
    """The study triaged critical (ICH 0.93) and its SR and key image written back to the PACS."""
    from tests.triage.writeback_helpers import deliver_due, result_recorded, write_back_source
    from worklist.services import worklist_item_sync

    source = write_back_source(orthanc.dicomweb_url)
    study = StudyFactory(study_instance_uid=study_uid, source=source, **PATIENT)
    result_recorded(
        source, study_uid=study_uid, series_uid=series_uid, key_slice=key_slice, png=png,
        score=0.93, model_name="ich2d", model_version="3.0",
    )  # fmt: skip
    deliver_due()
    return worklist_item_sync(study=study), key_slice


def phantom_key_image(phantom, *, score: float) -> tuple[int, bytes]:
    """The app's own key image (inference.keyimage) on the bleed's largest slice, the bleed as the heatmap."""
    import numpy as np

    from inference.keyimage import render_key_image
    from inference.runner import TriageOutput

    mask = phantom.mask.astype(bool)
    z = int(mask.sum(axis=(1, 2)).argmax())
    ys, xs = np.nonzero(mask[z])
    height, width = mask.shape[1:]
    output = TriageOutput(
        finding="ich", model_name="ich2d", model_version="3.0", score=score, threshold=0.5, positive=True,
        key_slice=z, box=[z, int(ys.min()), int(xs.min()), z + 1, int(ys.max()) + 1, int(xs.max()) + 1],
        heatmap=mask[z, :: height // 64, :: width // 64].astype(np.float32), heatmap_extent=[0, 0, height, width],
    )  # fmt: skip
    return z, render_key_image(phantom.volume_hu, output)


@pytest.fixture
def viewer_env(viewer_orthanc, monkeypatch):
    """The server process (started after this) points its PACS and its viewer links at that Orthanc."""
    monkeypatch.setenv("TRIAGE_DICOMWEB_URL", viewer_orthanc.dicomweb_url)
    monkeypatch.setenv("TRIAGE_VIEWER_URL", "/viewer/{study_instance_uid}/")


@pytest.fixture
def viewer_server_url(viewer_env, live_server_url):
    return live_server_url

"""The worklist stays live on a default install: ``python -m tools.run`` (what ``make run`` starts) on SQLite with no
REDIS_URL, its private redis-server carrying events from the ingest workers to the browsers, a real Orthanc and the
shipped model on small head CTs.

One ``tools.run`` serves the module; each test uploads its own study. The badge test stops the ``events`` program
(the private redis-server) under supervisord and starts it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from tools.procs import free_port, wait_until

# Starting every process (migrate on a fresh SQLite file, torch in the workers) is most of the time.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(480)]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "live-worklist-pw"
# The shipped model on CPU beside the other processes of a busy machine: generous, the tests wait on the DOM.
TRIAGED_MS = 120_000
BADGE_MS = 60_000
STARTUP_S = 300


@dataclass
class Stack:
    url: str
    orthanc: object
    run_dir: Path

    def supervisorctl(self, *args: str) -> str:
        conf = self.run_dir / "supervisord.conf"
        command = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(conf), *args]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        return done.stdout


def notify(page, spec: StudySpec) -> None:
    """The PACS hook's call, made with the page's session (as the worklist's own requests are)."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        "/api/v1/studies/notify/",
        data={"study_instance_uid": spec.study_uid, "complete": True},
        headers={"X-CSRFToken": csrf},
    )
    assert response.ok, response.text()


def triaged(page, spec: StudySpec) -> bool:
    """Whether the study's item has its findings in the database, read through the REST API."""
    response = page.request.get("/api/v1/worklist/")
    items = [i for i in response.json()["results"] if i["study_instance_uid"] == spec.study_uid]
    return bool(items and items[0]["findings"])


def run_env(tmp: Path, orthanc_server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    return {
        **env,
        "TRIAGE_DEBUG": "1",
        "TRIAGE_SQLITE_PATH": str(tmp / "triage.sqlite3"),
        "TRIAGE_HTTP_PORT": str(free_port()),
        "TRIAGE_DICOMWEB_URL": orthanc_server.dicomweb_url,
        "TRIAGE_POLL_SECONDS": "1",
        "TRIAGE_STUDY_SETTLE_SECONDS": "1",
        # One inference worker is enough for one study at a time, and leaves the busy test machine's cores alone.
        "TRIAGE_WORKERS_INGEST": "1",
    }


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).ok
    except requests.RequestException:
        return False


def radiologist_create(env: dict[str, str]) -> None:
    code = (
        "from triage.models import User; "
        f"User.objects.create_user('rad_live', password='{PASSWORD}', role='radiologist')"
    )
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, timeout=120, check=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to tools.run, which stops supervisord, which stops every program; the group is killed if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(orthanc_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    orthanc_server.clear()
    tmp = tmp_path_factory.mktemp("make-run")
    env = run_env(tmp, orthanc_server)
    url = f"http://127.0.0.1:{env['TRIAGE_HTTP_PORT']}"
    log = (tmp / "run.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: healthy(url) or process.poll() is not None, timeout=STARTUP_S, what="tools.run")
        assert process.poll() is None, (tmp / "run.log").read_text()[-4000:]
        radiologist_create(env)
        yield Stack(url=url, orthanc=orthanc_server, run_dir=ROOT / ".run" / f"run-{env['TRIAGE_HTTP_PORT']}")
    finally:
        stop(process)
        log.close()


def head_ct(accession: str) -> StudySpec:
    """Small enough for the shipped model on a CPU, large enough for the head CT routing rule (10 images up)."""
    return StudySpec(accession=accession, series=[SeriesSpec(slices=16, size=64)])


def signed_in_page(browser, stack: Stack):
    context = browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{stack.url}/accounts/login/")
    page.fill("#id_username", "rad_live")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector('#connection[data-state="live"]', timeout=BADGE_MS)
    page.evaluate("window.notReloaded = true")  # a reload would drop it
    return page


def not_reloaded(page) -> bool:
    return page.evaluate("window.notReloaded === true")


def ich_row(spec: StudySpec) -> str:
    return f'#rows tr[data-uid="{spec.study_uid}"] .finding:has-text("ICH")'


def test_study_triaged_by_a_worker_appears_on_the_open_page_without_reload(stack, chromium):
    page = signed_in_page(chromium, stack)
    spec = upload_study(stack.orthanc, head_ct("LIVE1"))
    notify(page, spec)
    page.wait_for_selector(ich_row(spec), timeout=TRIAGED_MS)
    screenshot = Path(os.environ.get("TMPDIR", "/tmp")) / "worklist-live.png"
    page.screenshot(path=str(screenshot))
    text = page.locator(f'#rows tr[data-uid="{spec.study_uid}"]').inner_text()
    assert ("AI advisory" in text, not_reloaded(page)) == (True, True)


def test_two_signed_in_browsers_both_see_the_new_study(stack, chromium):
    pages = [signed_in_page(chromium, stack) for _ in range(2)]
    spec = upload_study(stack.orthanc, head_ct("LIVE2"))
    notify(pages[0], spec)
    for page in pages:
        page.wait_for_selector(ich_row(spec), timeout=TRIAGED_MS)
    assert [not_reloaded(page) for page in pages] == [True, True]


def test_badge_leaves_live_while_events_are_down_and_the_page_catches_up_when_they_return(stack, chromium):
    page = signed_in_page(chromium, stack)
    stack.supervisorctl("stop", "events")
    spec = upload_study(stack.orthanc, head_ct("LIVE3"))
    notify(page, spec)
    page.wait_for_selector('#connection:is([data-state="stale"], [data-state="reconnecting"])', timeout=BADGE_MS)
    left_live_as = page.locator("#connection").get_attribute("data-state")
    wait_until(lambda: triaged(page, spec), timeout=TRIAGED_MS / 1000, what="triage while events are down", interval=1)
    missed = page.locator(f'#rows tr[data-uid="{spec.study_uid}"]').count()

    stack.supervisorctl("start", "events")
    page.wait_for_selector('#connection[data-state="live"]', timeout=BADGE_MS)
    page.wait_for_selector(ich_row(spec), timeout=BADGE_MS)
    assert (left_live_as in {"stale", "reconnecting"}, missed, not_reloaded(page)) == (True, 0, True)

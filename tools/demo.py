"""``make demo``: a local Orthanc PACS with synthetic studies, a local FHIR server, and the app with its workers.

Everything lives under ``.run/demo`` and is made afresh on each start; Ctrl-C stops everything this started.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tools.orthanc import WEBVIEWER_PLUGIN, OrthancServer, notify_script
from tools.procs import free_port, port_open
from tools.run import ROOT, RunRefused, event_path, process_table, supervise

RUN_DIR = ROOT / ".run" / "demo"
# The phantoms' known labels, ready for the console's ground-truth import.
GROUND_TRUTH_CSV = RUN_DIR / "ground-truth.csv"


@dataclass(frozen=True)
class DemoCase:
    kind: str  # "ncct" or "cta"
    seed: int
    subtype: str | None = None
    hard_negative: str | None = None
    size: float | None = None  # bleed size in [0, 1]; None lets the seed decide

    @property
    def positive(self) -> bool:
        return self.subtype is not None


# A mix a reading room would recognise: bleeds of several kinds, occlusions, normals and look-alikes.
CASES = [
    DemoCase("ncct", 9101, subtype="sdh"),
    DemoCase("ncct", 9102),
    DemoCase("cta", 9201, subtype="m1"),
    DemoCase("ncct", 9103, hard_negative="choroid_calcification"),
    DemoCase("ncct", 9104, subtype="iph"),
    DemoCase("cta", 9202),
    DemoCase("ncct", 9105),
    DemoCase("ncct", 9106, subtype="sah"),
    DemoCase("cta", 9203, subtype="ica_t"),
    # Seed 9107 alone draws a 2.6 mm lens, which the shipped model may miss (its card: about a third of the bleeds
    # of size < 0.15 are missed); the demo shows a typical one.
    DemoCase("ncct", 9107, subtype="edh", size=0.5),
]
FIRST_BATCH = 5
TRICKLE_SECONDS = 20.0


def write_case(case: DemoCase, out_dir: Path) -> tuple[Path, str]:
    from inference.dicom_write import synthetic_patient, write_study
    from inference.phantoms.cta import generate_cta
    from inference.phantoms.ncct import generate_ncct

    if case.kind == "ncct":
        phantom = generate_ncct(
            case.seed,
            positive=case.positive,
            subtype=case.subtype,
            hard_negative=case.hard_negative,
            size=case.size,
            shape=(32, 512, 512),
            slice_thickness_mm=5.0,
        )
    else:
        phantom = generate_cta(
            case.seed, positive=case.positive, subtype=case.subtype, shape=(96, 512, 512), slice_thickness_mm=1.0
        )
    folder = out_dir / f"{case.kind}-{case.seed}"
    # Acquired just now, as a new study in a reading room would be.
    now = datetime.datetime.now()
    patient = {**synthetic_patient(case.seed), "StudyDate": now.strftime("%Y%m%d"), "StudyTime": now.strftime("%H%M%S")}
    info = write_study(phantom, folder, seed=case.seed, patient=patient)
    return folder, info.study_uid


def feed_pacs(orthanc: OrthancServer, stop: threading.Event) -> None:
    """Generate the demo studies and send them to the PACS: a first batch at once, then one every few seconds."""
    with tempfile.TemporaryDirectory(prefix="triage-demo-") as tmp:
        for index, case in enumerate(CASES):
            if stop.is_set():
                return
            started = time.monotonic()
            folder, study_uid = write_case(case, Path(tmp))
            count = orthanc.upload_dir(folder)
            finding = "ich" if case.kind == "ncct" else "lvo"
            with GROUND_TRUTH_CSV.open("a") as csv_file:
                csv_file.write(f"{study_uid},{finding},{int(case.positive)}\n")
            label = case.subtype or case.hard_negative or "no finding"
            print(f"demo: sent a synthetic {case.kind.upper()} study ({label}, {count} images) to the PACS", flush=True)
            if index + 1 >= FIRST_BATCH:
                stop.wait(max(0.0, TRICKLE_SECONDS - (time.monotonic() - started)))


def start_fhir_server(directory: Path):
    if not (ROOT / "tools" / "fhir-server" / "node_modules").exists():
        print("demo: no FHIR server (run `make fhir-server`); reports wait in the outbox", flush=True)
        return None
    from tools.fhirserver import FhirServer

    return FhirServer(directory).start()


def create_users(env: dict[str, str], pacs_token: str) -> dict[str, str]:
    """The demo's admin and radiologist, and the service user whose token the PACS's notify hook sends."""
    passwords = {"demo-admin": secrets.token_urlsafe(9), "demo-radiologist": secrets.token_urlsafe(9)}
    script = (
        "from triage.models import User\n"
        "import os\n"
        "for name, role in (('demo-admin', 'admin'), ('demo-radiologist', 'radiologist')):\n"
        "    user, _ = User.objects.get_or_create(username=name)\n"
        "    user.role = role\n"
        "    user.is_staff = role == 'admin'\n"
        "    user.is_superuser = role == 'admin'\n"
        "    user.set_password(os.environ['DEMO_PW_' + role.upper()])\n"
        "    user.save()\n"
        "pacs, _ = User.objects.get_or_create(username='demo-pacs-hook')\n"
        "pacs.set_unusable_password()\n"
        "pacs.save()\n"
    )
    user_env = {
        **env,
        "DEMO_PW_ADMIN": passwords["demo-admin"],
        "DEMO_PW_RADIOLOGIST": passwords["demo-radiologist"],
        "DEMO_PACS_TOKEN": pacs_token,
    }
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-v", "0", "-c", script], check=True, cwd=ROOT, env=user_env
    )
    # The hook's token was written into Orthanc's Lua script before the app started; the app keeps its digest.
    token_command = ["triage_token_create", "--user", "demo-pacs-hook", "--from-env", "DEMO_PACS_TOKEN"]
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *token_command], check=True, cwd=ROOT, env=user_env)
    return passwords


def main() -> int:
    port = int(os.environ.get("TRIAGE_HTTP_PORT", "8000"))
    if port_open(port):
        print(f"Port {port} is in use: stop what runs there or set TRIAGE_HTTP_PORT", file=sys.stderr)
        return 1
    try:
        event_path(dict(os.environ))
    except RunRefused as err:
        print(f"make demo: {err}", file=sys.stderr)
        return 2
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    GROUND_TRUTH_CSV.write_text("study_instance_uid,finding,label\n")
    pacs_token = secrets.token_hex(20)
    # Orthanc tells the app when a study is complete (OnStableStudy), so the app need not wait for it to settle.
    hook = notify_script(
        RUN_DIR / "orthanc" / "triage-notify.lua",
        notify_url=f"http://127.0.0.1:{port}/api/v1/studies/notify/",
        token=pacs_token,
    )
    # The Orthanc Web Viewer (Debian orthanc-webviewer) behind the worklist's "open in viewer" (docs/viewer.md).
    viewer = Path(WEBVIEWER_PLUGIN).exists()
    orthanc = OrthancServer(
        RUN_DIR / "orthanc",
        port=8042 if not port_open(8042) else free_port(),
        stable_age=2,
        lua_scripts=[hook],
        plugins=[WEBVIEWER_PLUGIN] if viewer else [],
    ).start()
    fhir = start_fhir_server(RUN_DIR / "fhir")
    env = {
        **os.environ,
        "TRIAGE_DEBUG": "1",
        "TRIAGE_SQLITE_PATH": str(RUN_DIR / "demo.sqlite3"),
        "TRIAGE_DICOMWEB_URL": orthanc.dicomweb_url,
        "TRIAGE_PACS_WRITE_BACK": "1",
        "TRIAGE_POLL_SECONDS": "2",
        # Studies arrive instance by instance; a short settle time keeps the demo quick.
        "TRIAGE_STUDY_SETTLE_SECONDS": os.environ.get("TRIAGE_STUDY_SETTLE_SECONDS", "3"),
        "TRIAGE_HTTP_PORT": str(port),
    }
    if viewer:
        # triage/viewer.py frames the viewer on the study's key image beside the AI results read back from the PACS.
        env.setdefault("TRIAGE_VIEWER_URL", "/viewer/{study_instance_uid}/")
    env.pop("DATABASE_URL", None)
    env, redis_port = event_path(env)
    programs = process_table(port, env, redis_port=redis_port)
    if fhir is not None:
        env["TRIAGE_FHIR_BASE_URL"] = fhir.base_url
    stop = threading.Event()
    try:
        for args in (["migrate", "--noinput", "-v", "0"], ["triage_seed_defaults"]):
            subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], check=True, cwd=ROOT, env=env)
        passwords = create_users(env, pacs_token)
        feeder = threading.Thread(target=feed_pacs, args=(orthanc, stop), daemon=True)
        feeder.start()
        print_banner(port, passwords, orthanc, fhir)
        return supervise(programs, env, RUN_DIR / "supervisor")
    finally:
        stop.set()
        if fhir is not None:
            fhir.stop()
        orthanc.stop()


def print_banner(port: int, passwords: dict[str, str], orthanc: OrthancServer, fhir: object) -> None:
    lines = [
        "",
        f"  CT triage demo on http://127.0.0.1:{port}/",
        f"  radiologist: demo-radiologist / {passwords['demo-radiologist']}",
        f"  admin:       demo-admin / {passwords['demo-admin']}   (admin pages: /admin/ and /console/)",
        f"  PACS (Orthanc, DICOMweb): {orthanc.dicomweb_url}",
        f"  Viewer: {'Orthanc Web Viewer, from each study on the worklist' if orthanc.plugins else 'none'}",
        f"  EMR (FHIR): {getattr(fhir, 'base_url', 'none')}",
        f"  Ground truth of the demo studies, to import on /console/: {GROUND_TRUTH_CSV}",
        "  Synthetic studies arrive over the next few minutes. Models are trained on synthetic data: advisory only.",
        "  Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())

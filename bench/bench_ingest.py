"""Ingest benchmark (``make bench``): one 250-slice 512×512 CT series in a fresh local Orthanc.

Rows, in the same run against the same Orthanc (its files read once beforehand, so every row reads a warm cache):
1. ``bare download``: every instance fetched with ``GET /instances/{id}/file`` on one keep-alive session, nothing
   else.
2. ``bare WADO-RS``: the whole series in one multipart WADO-RS response, bytes counted and dropped.
3. ``ingest``: from the notify service call (``study_request_triage``) to a ready float32 HU volume, in a separate
   process set up like an ingest worker (freed memory kept): claim the job, QIDO-RS the series, one instance's
   metadata per series, routing, WADO-RS retrieval in the stored transfer syntax, volume assembly. Inference is not
   included.

Each row is the median of ``BENCH_INGEST_REPEATS`` runs (default 3). ``ratio`` divides the ingest time by the
per-instance download (the issue's measure); ``ratio_vs_wado_stream`` by the single WADO-RS stream, a floor that
parses nothing and decodes nothing, so it shows what DICOM parsing and volume assembly cost on top of transport.
The worker's peak memory is its ru_maxrss.
Prints a table and writes bench/results/ingest.json. Everything listens on 127.0.0.1; the database is SQLite.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SLICES, SIZE = 250, 512
REPEATS = int(os.environ.get("BENCH_INGEST_REPEATS", "3"))
TARGET_RATIO = 1.5


def setup_django(sqlite_path: Path) -> None:
    os.environ.update({"TRIAGE_SQLITE_PATH": str(sqlite_path), "TRIAGE_DEBUG": "1", "TRIAGE_LOG_LEVEL": "WARNING"})
    for name in ("DATABASE_URL", "TRIAGE_DICOMWEB_URL"):
        os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "triage.settings")
    import django

    django.setup()


def upload_series(orthanc) -> tuple[str, str, list[str]]:
    """A synthetic head CT series; returns its study and series UIDs and Orthanc's instance ids."""
    import numpy as np
    import requests

    from tests.triage.dicom_build import SeriesSpec, StudySpec, slice_dataset, to_bytes

    series = SeriesSpec(slices=SLICES, size=SIZE, thickness=0.625, description="AXIAL HEAD 0.625")
    study = StudySpec(series=[series])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    head = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) < (SIZE * 0.4) ** 2
    session, ids = requests.Session(), []
    for index in range(SLICES):
        pixels = (head * (30 + index % 7) + (~head) * -1000).astype("int16")
        response = session.post(f"{orthanc.url}/instances", data=to_bytes(slice_dataset(study, series, index, pixels)))
        response.raise_for_status()
        ids.append(response.json()["ID"])
    return study.study_uid, series.series_uid, ids


def bare_download(url: str, ids: list[str]) -> tuple[float, int]:
    import requests

    session = requests.Session()
    started = time.perf_counter()
    total = 0
    for instance_id in ids:
        response = session.get(f"{url}/instances/{instance_id}/file", timeout=60)
        response.raise_for_status()
        total += len(response.content)
    return time.perf_counter() - started, total


def bare_wado(dicomweb_url: str, study_uid: str, series_uid: str) -> tuple[float, int]:
    """The whole series in one WADO-RS multipart response, stored syntax, bytes read and dropped."""
    import requests

    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    started = time.perf_counter()
    with requests.get(
        f"{dicomweb_url}/studies/{study_uid}/series/{series_uid}", headers={"Accept": accept}, stream=True, timeout=60
    ) as response:
        response.raise_for_status()
        total = sum(len(chunk) for chunk in response.iter_content(1 << 20))
    return time.perf_counter() - started, total


def worker(study_uid: str, repeats: int) -> None:
    """The ingest path in its own process, so its peak memory is the worker's alone."""
    from triage.core.workers import memory_keep_freed
    from triage.ingest import jobs
    from triage.ingest.dicomweb import Pacs
    from triage.ingest.pipeline import series_volume, study_discover
    from triage.ingest.services import study_request_triage
    from triage.models import Study

    memory_keep_freed()  # as an ingest worker (``manage.py triage_ingest``) does before its first study
    seconds, shape = [], None
    for _ in range(repeats):
        Study.objects.filter(study_instance_uid=study_uid).delete()
        started = time.perf_counter()
        job = study_request_triage(study_instance_uid=study_uid, source_name="bench")
        job = jobs.job_claim(job_id=job.pk, worker_id="bench")
        pacs = Pacs.for_source(job.study.source)
        routed = study_discover(job=job, worker_id="bench", pacs=pacs)
        volume = series_volume(pacs=pacs, series=routed[0], instance=routed[0].discovered_instance)
        seconds.append(time.perf_counter() - started)
        shape = list(volume.hu.shape)
        del volume
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "shape": shape, "peak_mib": peak_mib}))


def run_worker(sqlite_path: Path, study_uid: str) -> dict:
    env = {**os.environ, "TRIAGE_SQLITE_PATH": str(sqlite_path), "PYTHONPATH": str(ROOT)}
    output = subprocess.run(
        [sys.executable, __file__, "--worker", study_uid, str(REPEATS)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> int:
    from tools.orthanc import OrthancServer

    with tempfile.TemporaryDirectory(prefix="triage-bench-ingest-") as tmp:
        sqlite_path = Path(tmp) / "bench.sqlite3"
        setup_django(sqlite_path)
        from django.core.management import call_command

        from triage.models import DicomWebSource

        call_command("migrate", verbosity=0)
        orthanc = OrthancServer(Path(tmp) / "orthanc").start()
        try:
            DicomWebSource.objects.create(name="bench", url=orthanc.dicomweb_url)
            study_uid, series_uid, ids = upload_series(orthanc)
            bare_download(orthanc.url, ids)  # warm Orthanc's files in the page cache for every row
            bare = [bare_download(orthanc.url, ids) for _ in range(REPEATS)]
            wado = [bare_wado(orthanc.dicomweb_url, study_uid, series_uid) for _ in range(REPEATS)]
            ingest = run_worker(sqlite_path, study_uid)
        finally:
            orthanc.stop()
    return report(bare, wado, ingest)


def report(bare: list[tuple[float, int]], wado: list[tuple[float, int]], ingest: dict) -> int:
    """``ratio`` is the issue's measure (per-instance download); ``ratio_vs_wado_stream`` is the stricter floor."""
    bare_s = statistics.median(s for s, _ in bare)
    wado_s = statistics.median(s for s, _ in wado)
    ingest_s = statistics.median(ingest["seconds"])
    ratio = ingest_s / bare_s
    strict = ingest_s / wado_s
    mib = bare[0][1] / 2**20
    results = {
        "series": {"slices": SLICES, "rows": SIZE, "columns": SIZE, "bytes": bare[0][1]},
        "repeats": REPEATS,
        "bare_download_s": round(bare_s, 3),
        "bare_wado_rs_series_s": round(wado_s, 3),
        "ingest_to_volume_s": round(ingest_s, 3),
        "ratio": round(ratio, 3),
        "ratio_vs_wado_stream": round(strict, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "worker_peak_mib": round(ingest["peak_mib"], 1),
        "volume_shape": ingest["shape"],
        "runs": {
            "bare_download_s": [round(s, 3) for s, _ in bare],
            "ingest_s": [round(s, 3) for s in ingest["seconds"]],
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print(f"{'row':<34}{'seconds':>10}{'MiB/s':>10}")
    print(f"{'bare download (GET /instances/file)':<34}{bare_s:>10.3f}{mib / bare_s:>10.1f}")
    print(f"{'bare download (one WADO-RS GET)':<34}{wado_s:>10.3f}{mib / wado_s:>10.1f}")
    print(f"{'ingest: notify -> HU volume':<34}{ingest_s:>10.3f}{mib / ingest_s:>10.1f}")
    print(f"ratio ingest / bare per-instance download: {ratio:.2f} (target <= {TARGET_RATIO})")
    print(f"ratio ingest / one bare WADO-RS stream (bytes only, no parsing or decoding): {strict:.2f}")
    print(f"worker peak memory (ru_maxrss): {ingest['peak_mib']:.0f} MiB; volume {ingest['shape']} float32")
    out = ROOT / "bench" / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        setup_django(Path(os.environ["TRIAGE_SQLITE_PATH"]))
        worker(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())

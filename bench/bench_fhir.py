"""FHIR outbox benchmark (``make bench``): 1,000 advisory reports to the local FHIR server, on a private PostgreSQL.

Rows, all in the same run against the same server (cleared between rows):
1. ``bare loop``: the same transaction Bundles POSTed one after another on one keep-alive session, nothing else.
   Latency is the request's round trip.
2. ``outbox``: this process commits one report per transaction (``outbox_enqueue_report`` inside the caller's
   transaction) as fast as it can while one delivery worker process (``manage.py triage_outbox``, idle poll
   20 ms) claims and sends. Latency runs from the commit to the worker having the EMR's 200 (``sent_at``),
   queueing included; reports/s counts from the first commit to the last 200.
3. ``outbox, drain``: delivery capacity: all reports committed first, then one worker sends them (no latency).
4. ``outbox + patient lookup``: as 2, with the per-report ``Patient?identifier=`` lookup the default endpoint makes.

Prints a table and writes bench/results/fhir.json. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPORTS = int(os.environ.get("BENCH_FHIR_REPORTS", "1000"))
BATCH = 50
DEADLINE_SECONDS = 600.0
WORKER_IDLE = 0.02  # seconds the worker waits when nothing is due (1.0 by default)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def latency_summary(values_ms: list[float]) -> dict:
    return {
        "p50_ms": round(percentile(values_ms, 50), 2),
        "p95_ms": round(percentile(values_ms, 95), 2),
        "max_ms": round(max(values_ms), 2),
        "mean_ms": round(statistics.fmean(values_ms), 2),
    }


def setup_django(database_url: str) -> None:
    os.environ.update({"DATABASE_URL": database_url, "TRIAGE_DEBUG": "1", "TRIAGE_LOG_LEVEL": "WARNING"})
    for name in ("TRIAGE_FHIR_BASE_URL", "TRIAGE_FHIR_TOKEN"):
        os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "triage.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def populate(count: int, tag: str) -> list:
    """``count`` studies, each with one current ICH result."""
    from triage.models import Series, Study, TriageResult

    studies = Study.objects.bulk_create(
        Study(
            study_instance_uid=f"1.2.826.0.1.3680043.10.99.{tag}.{i}",
            accession_number=f"B{tag}{i:06d}",
            patient_id=f"P{i % 400:05d}",
            modalities="CT",
            study_description="CT HEAD WO CONTRAST",
        )
        for i in range(count)
    )
    series = Series.objects.bulk_create(
        Series(study=s, series_instance_uid=f"{s.study_instance_uid}.1", modality="CT", series_number=1)
        for s in studies
    )
    return TriageResult.objects.bulk_create(
        TriageResult(
            study=s.study,
            series=s,
            finding="ich",
            model_name="ich2d",
            model_version="0.1.0",
            score=(i % 100) / 100,
            threshold=0.5,
            positive=(i % 100) >= 50,
            details={"key_slice": i % 32},
        )
        for i, s in enumerate(series)
    )


def bare_loop(server, bundles: list[dict]) -> dict:
    import requests

    session = requests.Session()
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    latencies = []
    started = time.perf_counter()
    for bundle in bundles:
        t0 = time.perf_counter()
        response = session.post(server.base_url, data=json.dumps(bundle), headers=headers, timeout=15)
        response.raise_for_status()
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    return {
        "reports": len(bundles),
        "seconds": round(elapsed, 3),
        "reports_per_s": round(len(bundles) / elapsed, 1),
        **latency_summary(latencies),
    }


def start_worker() -> subprocess.Popen:
    """The delivery loop as deployed (``manage.py triage_outbox``), in its own process; waits for its heartbeat."""
    from triage.models import WorkerHeartbeat

    WorkerHeartbeat.objects.filter(kind="outbox").delete()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "triage_outbox", "--batch", str(BATCH), "--idle", str(WORKER_IDLE)],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 60
    while not WorkerHeartbeat.objects.filter(kind="outbox").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the triage_outbox worker did not start")
        time.sleep(0.05)
    return process


def stop_worker(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def outbox_run(server, endpoint, results: list) -> dict:
    """This process commits reports while the worker process sends them; throughput and commit→200 latency."""
    from django.db import transaction

    from triage.fhir.outbox import outbox_enqueue_report
    from triage.models import OutboxMessage, OutboxState

    commits: dict[int, float] = {}
    enqueue_ms: list[float] = []
    worker = start_worker()
    try:
        started = time.time()
        for result in results:
            t0 = time.perf_counter()
            with transaction.atomic():
                (message,) = outbox_enqueue_report(study=result.study, finding=result.finding)
            commits[message.pk] = time.time()
            enqueue_ms.append((time.perf_counter() - t0) * 1000)
        sent_qs = OutboxMessage.objects.filter(pk__in=list(commits), state=OutboxState.SENT)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while sent_qs.count() < len(results) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_worker(worker)
    sent = dict(sent_qs.values_list("pk", "sent_at"))
    latencies = [(sent[pk].timestamp() - t) * 1000 for pk, t in commits.items() if pk in sent]
    elapsed = max(s.timestamp() for s in sent.values()) - started
    return {
        "reports": len(results),
        "delivered": len(sent),
        "seconds": round(elapsed, 3),
        "reports_per_s": round(len(sent) / elapsed, 1),
        **latency_summary(latencies),
        "enqueue_in_transaction": latency_summary(enqueue_ms),
    }


def outbox_drain(results: list) -> dict:
    """Delivery capacity: every report committed first, then one worker process started to send them all."""
    from django.db import transaction

    from triage.fhir.outbox import outbox_enqueue_report
    from triage.models import OutboxMessage, OutboxState

    queued = []
    for result in results:
        with transaction.atomic():
            queued += [m.pk for m in outbox_enqueue_report(study=result.study, finding=result.finding)]
    worker = start_worker()
    started = time.time()
    try:
        sent_qs = OutboxMessage.objects.filter(pk__in=queued, state=OutboxState.SENT)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while sent_qs.count() < len(results) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_worker(worker)
    sent_at = list(sent_qs.values_list("sent_at", flat=True))
    elapsed = max(s.timestamp() for s in sent_at) - started
    return {
        "reports": len(results),
        "delivered": len(sent_at),
        "seconds": round(elapsed, 3),
        "reports_per_s": round(len(sent_at) / elapsed, 1),
    }


def server_report_count(server) -> int:
    found = server.search("DiagnosticReport", _count="1")
    return int(found.get("total", 0))


def run(work: Path) -> dict:
    from tools.fhirserver import FhirServer
    from tools.postgres import PostgresCluster

    cluster = PostgresCluster(work / "pg").start()
    server = FhirServer(work / "fhir").start()
    try:
        setup_django(cluster.url)
        from triage.models import FhirEndpoint, OutboxMessage

        rows = {}
        endpoint = FhirEndpoint.objects.create(
            name="bench", base_url=server.base_url, resolve_patient=False, timeout_seconds=15
        )
        rows["outbox"] = outbox_run(server, endpoint, populate(REPORTS, "a"))
        rows["outbox"]["reports_on_server"] = server_report_count(server)
        bundles = list(OutboxMessage.objects.filter(endpoint=endpoint).order_by("pk").values_list("payload", flat=True))

        server.clear()
        rows["bare loop"] = bare_loop(server, bundles)
        rows["bare loop"]["reports_on_server"] = server_report_count(server)

        server.clear()
        rows["outbox, drain"] = outbox_drain(populate(REPORTS, "d"))
        rows["outbox, drain"]["reports_on_server"] = server_report_count(server)

        server.clear()
        endpoint.enabled = False
        endpoint.save()
        lookup = FhirEndpoint.objects.create(
            name="bench-lookup", base_url=server.base_url, resolve_patient=True, timeout_seconds=15
        )
        rows["outbox + patient lookup"] = outbox_run(server, lookup, populate(REPORTS, "b"))
        rows["outbox + patient lookup"]["reports_on_server"] = server_report_count(server)
        return rows
    finally:
        server.stop()
        cluster.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
        rows = run(Path(tmp))
    print(f"\nFHIR outbox: {REPORTS} reports to the local FHIR server (Medplum in-memory), PostgreSQL, one worker")
    print(f"{'path':<26}{'reports/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'on server':>11}")
    for name, row in rows.items():
        cells = [f"{row[k]:>10.1f}" if k in row else f"{'-':>10}" for k in ("p50_ms", "p95_ms", "max_ms")]
        print(f"{name:<26}{row['reports_per_s']:>10.1f}{''.join(cells)}{row['reports_on_server']:>11}")
    enqueue = rows["outbox"]["enqueue_in_transaction"]
    print(f"enqueue inside the caller's transaction: p50 {enqueue['p50_ms']} ms, p95 {enqueue['p95_ms']} ms")
    out = {
        "benchmark": "fhir_outbox",
        "reports": REPORTS,
        "latency": "outbox rows: producer commit to EMR 200 recorded (sent_at); bare loop: request round trip",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": rows,
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "fhir.json").write_text(json.dumps(out, indent=2))
    ok = all(row["reports_on_server"] == REPORTS for row in rows.values())
    if not ok:
        print("ERROR: the server does not hold exactly one report per study", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""FHIR outbox benchmark (``make bench``): 1,000 advisory reports to the local FHIR server, on a private PostgreSQL.

Rows, all in the same run against the same server (cleared between rows):
1. ``bare loop``: the same transaction Bundles POSTed one after another on one keep-alive session, nothing else.
   Latency is the request's round trip.
2. ``outbox``: a producer commits one report per transaction (``outbox_enqueue_report`` inside the caller's
   transaction) as fast as it can while one delivery worker (the ``triage_outbox`` loop body) claims and sends.
   Latency runs from the producer's commit to the worker having the EMR's 200 (``sent_at``): queueing included.
3. ``outbox + patient lookup``: as 2, with the per-report ``Patient?identifier=`` lookup the default endpoint makes.

Prints a table and writes bench/results/fhir.json. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPORTS = int(os.environ.get("BENCH_FHIR_REPORTS", "1000"))
BATCH = 50
DEADLINE_SECONDS = 600.0


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


def outbox_run(server, endpoint, results: list) -> dict:
    """Producer commits reports while one delivery worker sends them; returns throughput and commit→200 latency."""
    from django.db import connection, transaction

    from triage.models import OutboxMessage, OutboxState
    from triage.outbox import outbox_deliver_due, outbox_enqueue_report

    commits: dict[int, float] = {}
    enqueue_ms: list[float] = []
    done = threading.Event()
    errors: list[str] = []

    def worker() -> None:
        try:
            deadline = time.monotonic() + DEADLINE_SECONDS
            while time.monotonic() < deadline:
                summary = outbox_deliver_due(limit=BATCH, worker_id="bench")
                if summary.claimed == 0:
                    if done.is_set() and not OutboxMessage.objects.filter(state=OutboxState.PENDING).exists():
                        return
                    time.sleep(0.005)  # an idle poll, as the delivery loop does between rounds
        except Exception as err:  # noqa: BLE001 - report the failure in the benchmark's output
            errors.append(repr(err))
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    started = time.time()
    thread.start()
    for result in results:
        t0 = time.perf_counter()
        with transaction.atomic():
            (message,) = outbox_enqueue_report(study=result.study, finding=result.finding)
        commits[message.pk] = time.time()
        enqueue_ms.append((time.perf_counter() - t0) * 1000)
    done.set()
    thread.join(timeout=DEADLINE_SECONDS)
    if errors:
        raise RuntimeError(f"delivery worker failed: {errors[0]}")
    sent = dict(OutboxMessage.objects.filter(endpoint=endpoint, state=OutboxState.SENT).values_list("pk", "sent_at"))
    latencies = [(sent[pk].timestamp() - t) * 1000 for pk, t in commits.items() if pk in sent]
    finished = max(s.timestamp() for s in sent.values())
    elapsed = finished - started
    return {
        "reports": len(results),
        "delivered": len(sent),
        "seconds": round(elapsed, 3),
        "reports_per_s": round(len(sent) / elapsed, 1),
        **latency_summary(latencies),
        "enqueue_in_transaction": latency_summary(enqueue_ms),
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
        print(
            f"{name:<26}{row['reports_per_s']:>10.1f}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}"
            f"{row['max_ms']:>10.1f}{row['reports_on_server']:>11}"
        )
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

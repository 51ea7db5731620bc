"""End-to-end benchmark (``make bench``): PACS store → notify → worklist event and FHIR report, with the app as
``make run`` starts it (``python -m tools.run``: daphne, ingest and outbox workers, loops, a private redis-server).

Private services on 127.0.0.1: Orthanc with DICOMweb, the in-memory Medplum FHIR server (``make fhir-server`` once),
and the app on a temporary SQLite database. Studies are thin head NCCTs (250 slices of 512x512 int16, 0.625 mm, from
the phantom generator, copied with new UIDs), stored with ``POST /instances`` and followed at once by
``POST /api/v1/studies/notify/ {"complete": true}``, as Orthanc's OnStableStudy hook would send it.

Phases, all in one run:
1. warm-up: two studies, so that each ingest worker has loaded the model (reported, not counted);
2. paced: ``BENCH_E2E_STUDIES`` (20) studies, one started every ``BENCH_E2E_INTERVAL_S`` (2) s. Per study: store
   complete → first worklist item event with findings (a logged-in WebSocket client), and → the EMR's 2xx
   (``OutboxMessage.sent_at``, recorded by the outbox worker when the FHIR server answered);
3. baseline: the bare cost of the same work in a process set up like an ingest worker (freed memory kept, as many
   torch threads as one ingest worker gets): one WADO-RS series download (dicomweb-client), ``assemble_volume``
   and one ``ModelRunner("ich").run``;
4. saturation: ``BENCH_E2E_BURST`` (100) studies stored back to back, each notified; studies/hour from the first
   store to the last worklist event.

Per-stage medians come from ``TriageJob.timings``. Beside the seconds, the CPU seconds per study that the ingest
workers, the rest of the app and Orthanc used in each phase (from /proc), against the bare work's own CPU seconds:
a ratio that the machine's other load does not move. Prints a table and writes bench/results/e2e.json; targets are
printed, never asserted. Everything it starts is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e_support import (  # noqa: E402
    SLICES,
    App,
    EventListener,
    Pacs,
    StudyFactory,
    cpu_seconds,
    descendants,
    session_login,
    study_factory,
    users_create,
)

STUDIES = int(os.environ.get("BENCH_E2E_STUDIES", "20"))
BURST = int(os.environ.get("BENCH_E2E_BURST", "100"))
BARE_REPEATS = int(os.environ.get("BENCH_E2E_BARE_REPEATS", "3"))
DEADLINE_S = float(os.environ.get("BENCH_E2E_DEADLINE_S", "900"))  # the longest a phase waits for its last event
INTERVAL_S = float(os.environ.get("BENCH_E2E_INTERVAL_S", "2"))  # one study started every this many seconds
WARMUP = 2
STAGES = ("discover", "model", "fetch", "infer", "key_image", "record")
TARGETS = {"event_p95_s": 3.0, "fhir_p95_s": 5.0, "studies_per_hour": 1000.0, "e2e_over_bare": 1.3}
RESULTS = ROOT / "bench" / "results" / "e2e.json"

DB_SCRIPT = """
import json
from triage.models import OutboxMessage, TriageJob
def ts(value):
    return value.timestamp() if value else None
rows = {}
for job in TriageJob.objects.select_related("study"):
    rows[job.study.study_instance_uid] = {
        "state": job.state, "error_code": job.error_code, "attempts": job.attempts, "timings": job.timings,
        "created": ts(job.created_at), "started": ts(job.started_at), "finished": ts(job.finished_at), "sent": [],
    }
for message in OutboxMessage.objects.select_related("study"):
    rows.setdefault(message.study.study_instance_uid, {"sent": []})["sent"].append(
        {"state": message.state, "sent_at": ts(message.sent_at), "status": message.last_status_code}
    )
print("BENCH-JSON " + json.dumps(rows))
"""


@dataclass
class Sent:
    uid: str
    series_uid: str
    store_started: float
    stored: float  # time.time() when Orthanc had acknowledged the last instance; the notify leaves right after
    notified: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 3),
        "p95_s": round(percentile(values, 95), 3),
        "max_s": round(max(values), 3),
        "mean_s": round(statistics.fmean(values), 3),
    }


def app_env(tmp: Path, port: int, dicomweb_url: str, fhir_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "TRIAGE_DEBUG": "1",
        "TRIAGE_SQLITE_PATH": str(tmp / "e2e.sqlite3"),
        "TRIAGE_HTTP_PORT": str(port),
        "TRIAGE_DICOMWEB_URL": dicomweb_url,
        "TRIAGE_FHIR_BASE_URL": fhir_url,
        "TRIAGE_POLL_SECONDS": "10",
        "PYTHONPATH": str(ROOT),
    }
    for name in ("DATABASE_URL", "REDIS_URL", "TRIAGE_FHIR_TOKEN", "TRIAGE_TORCH_THREADS", "TRIAGE_DICOMWEB_TOKEN"):
        env.pop(name, None)
    return env


def send(pacs: Pacs, factory: StudyFactory, number: int) -> Sent:
    uid, series_uid, blobs = factory.study(number)
    started = time.time()
    pacs.store(blobs)
    stored = time.time()
    pacs.notify(uid)
    return Sent(uid, series_uid, started, stored, time.time())


def paced(pacs: Pacs, factory: StudyFactory, listener: EventListener, numbers: range, interval: float) -> list[Sent]:
    """Start one study every ``interval`` seconds (at once if the previous store took longer); wait for events."""
    sent, t0 = [], time.monotonic()
    for i, number in enumerate(numbers):
        time.sleep(max(0.0, t0 + i * interval - time.monotonic()))
        sent.append(send(pacs, factory, number))
    listener.wait_for([s.uid for s in sent], time.monotonic() + DEADLINE_S)
    return sent


def fhir_wait(fhir_url: str, expected: int, timeout: float) -> int:
    """Wait until the EMR holds ``expected`` DiagnosticReports; returns how many it holds."""
    deadline, total = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        answer = requests.get(f"{fhir_url}/DiagnosticReport", params={"_summary": "count"}, timeout=30)
        total = int(answer.json().get("total", 0))
        if total >= expected:
            break
        time.sleep(0.5)
    return total


def bare_baseline(dicomweb_url: str, study: Sent, threads: int, repeats: int) -> dict:
    """The bare cost in a process of its own, set up as an ingest worker is (``triage_ingest``: freed memory kept for
    reuse, as many torch threads): otherwise this process's own allocations would be measured instead."""
    request = {
        "url": dicomweb_url,
        "study": study.uid,
        "series": study.series_uid,
        "threads": threads,
        "repeats": repeats,
    }
    done = subprocess.run(
        [sys.executable, __file__, "--bare", json.dumps(request)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"bare baseline exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_run(request: dict) -> dict:
    """WADO-RS series download, volume assembly and one ICH forward pass, like one ingest worker (warm-up first)."""
    from dicomweb_client.api import DICOMwebClient

    from inference.dicom import assemble_volume
    from inference.runner import ModelRunner
    from triage.core.workers import memory_keep_freed

    memory_keep_freed()
    client = DICOMwebClient(url=request["url"])
    runner = ModelRunner("ich", num_threads=request["threads"])
    runs = []
    for _ in range(request["repeats"] + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        datasets = client.retrieve_series(request["study"], request["series"])
        t1 = time.perf_counter()
        volume = assemble_volume(datasets)
        t2 = time.perf_counter()
        runner.run(volume.hu, volume.spacing_mm)
        t3 = time.perf_counter()
        cpu = time.process_time() - cpu0
        runs.append(
            {"download_s": t1 - t0, "assemble_s": t2 - t1, "infer_s": t3 - t2, "total_s": t3 - t0, "cpu_s": cpu}
        )
        del datasets, volume
    runs = runs[1:]
    median = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    return {**median, "threads": request["threads"], "repeats": request["repeats"], "runs": runs}


def db_rows(app: App) -> dict:
    for line in app.manage("shell", "-v", "0", "-c", DB_SCRIPT).splitlines():
        if line.startswith("BENCH-JSON "):
            return json.loads(line.removeprefix("BENCH-JSON "))
    raise RuntimeError("no rows from the database")


def latencies(sent: list[Sent], arrivals: dict[str, float], rows: dict) -> dict:
    """Per-study seconds from store complete to the event and to the EMR's 2xx, plus where the time went."""
    event, fhir, queue, after_job = [], [], [], []
    for s in sent:
        row = rows.get(s.uid, {})
        if s.uid in arrivals:
            event.append(arrivals[s.uid] - s.stored)
            if row.get("finished"):
                after_job.append(arrivals[s.uid] - row["finished"])
        sent_at = [m["sent_at"] for m in row.get("sent", []) if m.get("sent_at")]
        if sent_at:
            fhir.append(min(sent_at) - s.stored)
        if row.get("started") and row.get("created"):
            queue.append(row["started"] - row["created"])
    return {
        "event": summary(event),
        "fhir": summary(fhir),
        "notify_to_claim": summary(queue),
        "job_finished_to_event": summary(after_job),
        "store": summary([s.stored - s.store_started for s in sent]),
        "notify_call": summary([s.notified - s.stored for s in sent]),
        "missing_events": sum(s.uid not in arrivals for s in sent),
        "missing_fhir": len(sent) - len(fhir),
        "stages_median_s": stage_medians(sent, rows),
        "job_states": _count(rows.get(s.uid, {}).get("state", "none") for s in sent),
    }


def stage_medians(sent: list[Sent], rows: dict) -> dict:
    timings = [rows[s.uid]["timings"] or {} for s in sent if s.uid in rows and "timings" in rows[s.uid]]
    return {name: round(statistics.median(t.get(name, 0.0) for t in timings), 3) for name in STAGES if timings}


def _count(values: object) -> dict:
    counts: dict[str, int] = {}
    for value in values:  # type: ignore[attr-defined]
        counts[value] = counts.get(value, 0) + 1
    return counts


def saturation(sent: list[Sent], arrivals: dict[str, float]) -> dict:
    done = [arrivals[s.uid] for s in sent if s.uid in arrivals]
    first = sent[0].store_started
    span = (max(done) - first) if done else float("nan")
    stores = sent[-1].stored - first
    return {
        "studies": len(sent),
        "completed": len(done),
        "first_store_to_last_event_s": round(span, 1),
        "studies_per_hour": round(len(done) / span * 3600, 1) if done else 0.0,
        "store_only_studies_per_hour": round(len(sent) / stores * 3600, 1),
    }


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def stopped_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` below stops what it started."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    from tools.fhirserver import FhirServer
    from tools.orthanc import OrthancServer
    from tools.procs import free_port
    from tools.run import torch_threads

    with stopped_on_sigterm(), tempfile.TemporaryDirectory(prefix="triage-bench-e2e-") as tmp_name:
        tmp, stack = Path(tmp_name), contextlib.ExitStack()
        with stack:
            started = time.monotonic()
            factory = study_factory(tmp / "template")
            print(f"template study: {SLICES} slices in {time.monotonic() - started:.0f} s", flush=True)
            orthanc = OrthancServer(tmp / "orthanc", stable_age=2).start()
            stack.callback(orthanc.stop)
            fhir = FhirServer(tmp / "fhir").start()
            stack.callback(fhir.stop)
            port = free_port()
            env = app_env(tmp, port, orthanc.dicomweb_url, fhir.base_url)
            app = App(env, tmp / "app.log", port)
            stack.callback(app.stop)
            try:
                app.start(timeout=300)
                result = run_phases(app, orthanc, fhir.base_url, factory, int(torch_threads(env, _ingest(env))))
            except Exception:
                print(app.log_tail(), file=sys.stderr)
                raise
            load_end = machine()
    result["machine"] = {**result["machine"], "loadavg_1m_end": load_end["loadavg_1m"]}
    return report(result)


def _ingest(env: dict[str, str]) -> int:
    return int(env.get("TRIAGE_WORKERS_INGEST") or 2)


@dataclass
class CpuMeter:
    """CPU seconds that the ingest workers, the other app processes and Orthanc use from now on, per study: how much
    work a study costs, whatever share of the cores the machine's other load leaves to it."""

    app: App
    orthanc_pid: int

    def __post_init__(self) -> None:
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        ingest = self.app.cpu_seconds("ingest")
        everything = sum(cpu_seconds(pid) for pid in _app_pids(self.app))
        return {"ingest_workers": ingest, "other_app": everything - ingest, "orthanc": cpu_seconds(self.orthanc_pid)}

    def per_study(self, studies: int) -> dict[str, float]:
        now = self._now()
        return {key: round((now[key] - self.start[key]) / studies, 3) for key in now}


def _app_pids(app: App) -> list[int]:
    return descendants(app.process.pid) if app.process else []


def run_phases(app: App, orthanc: object, fhir_url: str, factory: StudyFactory, threads: int) -> dict:
    password, token = users_create(app)
    cookie = session_login(app.url, "bench-radiologist", password)
    ws_url = f"ws://127.0.0.1:{app.port}/ws/worklist/"
    listener = EventListener(ws_url, app.url, cookie).start()
    pacs = Pacs(orthanc.url, f"{app.url}/api/v1/studies/notify/", token)  # type: ignore[attr-defined]
    try:
        load_start = machine()
        print(f"warm-up: {WARMUP} studies", flush=True)
        warm = paced(pacs, factory, listener, range(1, 1 + WARMUP), 0.0)
        print(f"paced: {STUDIES} studies, one every {INTERVAL_S:g} s", flush=True)
        cpu = CpuMeter(app, orthanc.process.pid)  # type: ignore[attr-defined]
        steady = paced(pacs, factory, listener, range(1 + WARMUP, 1 + WARMUP + STUDIES), INTERVAL_S)
        fhir_wait(fhir_url, WARMUP + STUDIES, 120)
        paced_cpu = cpu.per_study(STUDIES)
        print(f"baseline: {BARE_REPEATS} bare download + assemble + inference", flush=True)
        bare = bare_baseline(orthanc.dicomweb_url, steady[0], threads, BARE_REPEATS)  # type: ignore[attr-defined]
        print(f"saturation: {BURST} studies back to back", flush=True)
        first = 1 + WARMUP + STUDIES
        cpu = CpuMeter(app, orthanc.process.pid)  # type: ignore[attr-defined]
        burst = paced(pacs, factory, listener, range(first, first + BURST), 0.0) if BURST else []
        fhir_wait(fhir_url, first - 1 + BURST, 120)
        burst_cpu = cpu.per_study(max(1, BURST))
        rows = db_rows(app)
        memory = app.memory_of("ingest")  # the ingest workers: ``--queue-name ingest``
    finally:
        pacs.close()
        listener.stop()
    arrivals = listener.arrivals
    return {
        "config": {
            "slices": SLICES, "studies": STUDIES, "burst": BURST, "interval_s": INTERVAL_S, "warmup": WARMUP,
            "ingest_workers": _ingest(app.env), "torch_threads_per_worker": threads, "database": "sqlite",
        },
        "warmup": latencies(warm, arrivals, rows),
        "paced": {**latencies(steady, arrivals, rows), "cpu_per_study_s": paced_cpu},
        "bare": bare,
        "burst": {**saturation(burst, arrivals), **latencies(burst, arrivals, rows), "cpu_per_study_s": burst_cpu}
        if burst
        else None,
        "ingest_worker_memory_mib": memory,
        "websocket": {"item_events": listener.events, "reconnects": listener.reconnects, "seq_gaps": listener.seq_gaps},
        "machine": load_start,
    }  # fmt: skip


def _cpu_ratio(phase: dict, bare: dict) -> float | None:
    ingest = phase.get("cpu_per_study_s", {}).get("ingest_workers")
    return round(ingest / bare["cpu_s"], 2) if ingest and bare.get("cpu_s") else None


def report(result: dict) -> int:
    paced_, bare, burst = result["paced"], result["bare"], result["burst"]
    ratio = paced_["event"]["p50_s"] / bare["total_s"] if paced_["event"]["n"] else float("nan")
    bare_rate = 3600 / bare["total_s"]
    rate = burst["studies_per_hour"] if burst else float("nan")
    result["ratios"] = {
        "e2e_p50_over_bare": round(ratio, 2),
        "bare_studies_per_hour": round(bare_rate, 1),
        "throughput_over_bare": round(rate / bare_rate, 2),
        # Load-independent: the ingest workers' CPU seconds per study against the bare work's own.
        "paced_ingest_cpu_over_bare_cpu": _cpu_ratio(paced_, bare),
        "burst_ingest_cpu_over_bare_cpu": _cpu_ratio(burst, bare) if burst else None,
    }
    result["targets"] = TARGETS
    rows = [
        ("store complete -> worklist event p50", paced_["event"].get("p50_s"), None, "s"),
        ("store complete -> worklist event p95", paced_["event"].get("p95_s"), TARGETS["event_p95_s"], "s <="),
        ("store complete -> FHIR 2xx p50", paced_["fhir"].get("p50_s"), None, "s"),
        ("store complete -> FHIR 2xx p95", paced_["fhir"].get("p95_s"), TARGETS["fhir_p95_s"], "s <="),
        ("bare: WADO-RS + assemble + infer", bare["total_s"], None, "s"),
        ("e2e p50 / bare", result["ratios"]["e2e_p50_over_bare"], TARGETS["e2e_over_bare"], "<="),
        ("saturation: studies/hour", rate, TARGETS["studies_per_hour"], ">="),
        ("bare: studies/hour (3600 / bare)", round(bare_rate, 1), None, ""),
        ("throughput / bare", result["ratios"]["throughput_over_bare"], None, ""),
        ("ingest CPU per study / bare CPU, paced", result["ratios"]["paced_ingest_cpu_over_bare_cpu"], None, ""),
        ("ingest CPU per study / bare CPU, burst", result["ratios"]["burst_ingest_cpu_over_bare_cpu"], None, ""),
    ]
    print(f"\n{'measure':<40}{'value':>10}   target")
    for label, value, target, unit in rows:
        shown = "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{label:<40}{shown:>10}   {f'{unit} {target:g}' if target is not None else ''}")
    stages = "  ".join(f"{k} {v:.2f}" for k, v in paced_["stages_median_s"].items())
    print(f"paced job stages, median s: {stages}")
    print(
        f"paced notify -> claim p50 {paced_['notify_to_claim'].get('p50_s')} s; job finished -> event p50 "
        f"{paced_['job_finished_to_event'].get('p50_s')} s; store p50 {paced_['store'].get('p50_s')} s"
    )
    print(
        f"bare: download {bare['download_s']:.2f} s, assemble {bare['assemble_s']:.2f} s, infer "
        f"{bare['infer_s']:.2f} s ({bare['threads']} torch thread(s))"
    )
    print(f"CPU s per study: paced {paced_['cpu_per_study_s']}; bare {bare['cpu_s']:.2f}")
    if burst:
        print(f"CPU s per study: burst {burst['cpu_per_study_s']}")
        print(
            f"burst: {burst['completed']}/{burst['studies']} done in {burst['first_store_to_last_event_s']} s; "
            f"PACS store alone {burst['store_only_studies_per_hour']} studies/hour; event p50 "
            f"{burst['event'].get('p50_s')} s; stages {burst['stages_median_s']}"
        )
    memory = ", ".join(f"{m['rss_mib']:.0f} (peak {m['peak_mib']:.0f})" for m in result["ingest_worker_memory_mib"])
    print(f"ingest workers' memory at the end, MiB: {memory or 'not found'}")
    print(f"machine: {result['machine']}; slices {result['config']['slices']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=_plain) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def _plain(value: object) -> object:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare":
        print(json.dumps(bare_run(json.loads(sys.argv[2]))))
        sys.exit(0)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)

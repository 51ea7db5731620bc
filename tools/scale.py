"""``make scale``: the platform split as on several hosts, on loopback, under load.

Private services: PostgreSQL, Redis, Orthanc (DICOMweb) and the in-memory FHIR server. The app runs as separate
``python -m tools.run`` processes, each with its own environment, as separate hosts would: one with
``TRIAGE_ROLES=web,outbox,loops`` and ``TRIAGE_WEB_PROCESSES=2`` (nginx in front of two daphne nodes), and up to three
with ``TRIAGE_ROLES=ingest`` (one inference worker each, without EMR settings).

Phases with 1, 2 and 3 inference workers each store their share of ``SCALE_STUDIES`` (200) synthetic head CTs in
Orthanc, then notify them all ("complete", as Orthanc's OnStableStudy hook does) and time until the last job has
finished: studies/hour per phase. ``SCALE_CLIENTS`` (100) logged-in WebSocket clients, connected through nginx and so
spread over both web nodes, record every event's seq. Checked at the end: every study triaged exactly once (one claim,
one result per finding), one FHIR report each, and every client received every event, with no gap in seq.
Per-stage medians come from ``TriageJob.timings``. Writes bench/results/scale.json. Everything it starts is stopped
on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tools.fhirserver import FhirServer
from tools.orthanc import OrthancServer
from tools.postgres import PostgresCluster
from tools.procs import free_port, wait_until
from tools.redis import RedisServer
from tools.run import ROOT

STUDIES = int(os.environ.get("SCALE_STUDIES", "200"))
CLIENTS = int(os.environ.get("SCALE_CLIENTS", "100"))
SLICES = int(os.environ.get("SCALE_SLICES", "32"))
SIZE = int(os.environ.get("SCALE_SIZE", "128"))
DEADLINE_S = float(os.environ.get("SCALE_DEADLINE_S", "1800"))
PHASES = (1, 2, 3)
PASSWORD = secrets.token_urlsafe(16)  # the one user of this throwaway database
STAGES = ("discover", "fetch", "infer", "record")
RESULTS = ROOT / "bench" / "results" / "scale.json"


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Host:
    """One ``python -m tools.run`` in its own session, as one host of a split deployment."""

    def __init__(self, name: str, env: dict[str, str], directory: Path) -> None:
        self.name, self.env, self.log_path = name, env, directory / f"{name}.log"
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def running(self) -> bool:
        """True while it runs; a host that exited (refused to start) stops the run with its log's last line."""
        if self.process.poll() is None:
            return True
        last = self.log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {last[0]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env, check=True, timeout=600)


def study_blobs(count: int) -> list[tuple[str, list[bytes]]]:
    from tests.triage.dicom_build import SeriesSpec, StudySpec, study_datasets, to_bytes

    studies = []
    for i in range(count):
        spec = StudySpec(
            accession=f"SC{i:04d}", patient_id=f"SCP{i:04d}", series=[SeriesSpec(slices=SLICES, size=SIZE)]
        )
        studies.append((spec.study_uid, [to_bytes(ds) for ds in study_datasets(spec)]))
    return studies


def store(orthanc: OrthancServer, studies: list[tuple[str, list[bytes]]]) -> None:
    def post(blob: bytes) -> None:
        requests.post(f"{orthanc.url}/instances", data=blob, timeout=60).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, [blob for _, blobs in studies for blob in blobs]))


def healthy_in_a_row(url: str, times: int = 20) -> bool:
    """Both web nodes are up once nginx answers many times in a row (it alternates between them)."""
    return all(requests.get(f"{url}/healthz", timeout=5).ok for _ in range(times))


def session_cookie(url: str, username: str) -> str:
    session = requests.Session()
    page = session.get(f"{url}/accounts/login/", timeout=30)
    page.raise_for_status()
    form = {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]}
    session.post(f"{url}/accounts/login/", data=form, headers={"Referer": url}, timeout=30).raise_for_status()
    return session.cookies["sessionid"]


class Listeners:
    """CLIENTS WebSocket clients through nginx, each recording the seq of every item event it receives."""

    def __init__(self, url: str, cookie: str) -> None:
        self.url, self.cookie = url, cookie
        self.seqs: list[list[int]] = [[] for _ in range(CLIENTS)]
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _main(self) -> None:
        from websockets.asyncio.client import connect

        headers = {"Cookie": f"sessionid={self.cookie}", "Origin": self.url}
        ws_url = self.url.replace("http", "ws", 1) + "/ws/worklist/"
        sockets = []
        try:
            for _ in range(CLIENTS):
                sockets.append(await self._connect(connect, ws_url, headers))
        except Exception as err:  # noqa: BLE001 - reported to the main thread, which stops the run
            self.errors.append(f"connect: {type(err).__name__}: {err}")
            return
        finally:
            self.connected.set()
        await asyncio.gather(*(self._listen(i, ws) for i, ws in enumerate(sockets)))

    async def _connect(self, connect, ws_url: str, headers: dict[str, str]):
        """A node that nginx has just seen fail answers 502 for a few seconds: try again, as the page does."""
        for attempt in range(10):
            try:
                return await connect(ws_url, additional_headers=headers, open_timeout=60, max_queue=None)
            except Exception:
                if attempt == 9:
                    raise
                await asyncio.sleep(1.0)
        return None

    async def _listen(self, index: int, ws) -> None:
        try:
            while not self.stop.is_set():
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), timeout=1.0))
                except TimeoutError:
                    continue
                if message.get("type") == "item":
                    self.seqs[index].append(message["seq"])
        except Exception as err:  # noqa: BLE001 - a client that dropped is reported in the summary
            self.errors.append(f"client {index}: {type(err).__name__}: {err}")
        finally:
            await ws.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def jobs_finished(uids: list[str]) -> int:
    from triage.models import FINAL_JOB_STATES, TriageJob

    return TriageJob.objects.filter(study__study_instance_uid__in=uids, state__in=FINAL_JOB_STATES).count()


def phase(workers: int, studies: list[tuple[str, list[bytes]]], app_url: str, token: str, orthanc) -> dict:
    from triage.models import TriageJob

    store(orthanc, studies)
    uids = [uid for uid, _ in studies]
    started = time.time()
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    for uid in uids:
        body = {"study_instance_uid": uid, "complete": True}
        session.post(f"{app_url}/api/v1/studies/notify/", json=body, timeout=60).raise_for_status()
    wait_until(lambda: jobs_finished(uids) == len(uids), timeout=DEADLINE_S, what=f"{len(uids)} jobs", interval=1.0)
    finished = sorted(
        t.timestamp()
        for t in TriageJob.objects.filter(study__study_instance_uid__in=uids).values_list("finished_at", flat=True)
    )
    elapsed = finished[-1] - started
    result = {"workers": workers, "studies": len(uids), "seconds": round(elapsed, 1)}
    result["studies_per_hour"] = round(len(uids) / elapsed * 3600, 1)
    # Between the first and the last job finished: without the wait for the first result (a new worker loads models).
    steady = finished[-1] - finished[0]
    result["steady_studies_per_hour"] = round((len(uids) - 1) / steady * 3600, 1) if steady > 0 else None
    result["load_average"] = round(os.getloadavg()[0], 1)
    log(f"{workers} worker(s): {len(uids)} studies in {elapsed:.1f} s = {result['studies_per_hour']} studies/hour")
    return result


def checks(uids: list[str], listeners: Listeners, fhir: FhirServer) -> dict:
    from django.db.models import Count

    from triage.models import JobState, OutboxMessage, TriageJob, TriageResult

    jobs = TriageJob.objects.filter(study__study_instance_uid__in=uids)
    per_finding = TriageResult.objects.filter(study__study_instance_uid__in=uids).values("study_id", "finding")
    sent = OutboxMessage.objects.filter(study__study_instance_uid__in=uids, state="sent")
    union = sorted(set().union(*map(set, listeners.seqs)))
    return {
        "jobs": jobs.count(),
        "jobs_done_once": jobs.filter(state=JobState.DONE, attempts=1).count(),
        "results_duplicated": per_finding.annotate(n=Count("id")).filter(n__gt=1).count(),
        "reports_sent": sent.count(),
        "fhir_reports": fhir.search("DiagnosticReport", _count="1").get("total"),
        "events": len(union),
        "seq_gaps": (union[-1] - union[0] + 1 - len(union)) if union else None,
        "clients_missing_events": sum(1 for seqs in listeners.seqs if sorted(set(seqs)) != union),
        "client_duplicates": sum(len(seqs) - len(set(seqs)) for seqs in listeners.seqs),
        "client_errors": listeners.errors[:5],
    }


def medians() -> dict[str, float]:
    from triage.models import JobState, TriageJob

    timings = [t for t in TriageJob.objects.filter(state=JobState.DONE).values_list("timings", flat=True) if t]
    return {name: round(statistics.median(t.get(name, 0.0) for t in timings), 3) for name in STAGES if timings}


@contextlib.contextmanager
def services(directory: Path) -> Iterator[tuple[PostgresCluster, RedisServer, OrthancServer, FhirServer]]:
    started: list = []
    try:
        for service in (
            PostgresCluster(directory / "pg"), RedisServer(directory / "redis"),
            OrthancServer(directory / "orthanc"), FhirServer(directory / "fhir"),
        ):  # fmt: skip
            started.append(service.start())
        yield tuple(started)  # type: ignore[misc]
    finally:
        for service in reversed(started):
            with contextlib.suppress(Exception):
                service.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that SIGTERM, like Ctrl-C, stops every host and service on the way out


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="triage-scale-") as tmp:
        directory = Path(tmp)
        os.chmod(directory, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
        with services(directory) as (pg, redis, orthanc, fhir):
            return run(directory, pg, redis, orthanc, fhir)


def run(directory: Path, pg, redis, orthanc, fhir) -> int:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    base |= {"DATABASE_URL": pg.url, "REDIS_URL": redis.url, "TRIAGE_DEBUG": "1", "TRIAGE_SSL_REDIRECT": "0"}
    pacs = {"TRIAGE_DICOMWEB_URL": orthanc.dicomweb_url}
    # The notify hook drives the run; the poller would find stored studies before their phase starts.
    front = {**base, **pacs, "TRIAGE_FHIR_BASE_URL": fhir.base_url, "TRIAGE_POLL_SECONDS": "3600"}
    port = free_port()
    front |= {"TRIAGE_ROLES": "web,outbox,loops", "TRIAGE_WEB_PROCESSES": "2", "TRIAGE_HTTP_PORT": str(port)}
    manage(front, "migrate", "--noinput", "-v", "0")
    manage(front, "triage_seed_defaults")
    user_env = {**front, "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
    manage(user_env, "createsuperuser", "--noinput", "--username", "scale", "--email", "scale@example.org")
    os.environ.update(base)
    os.environ["DJANGO_SETTINGS_MODULE"] = "triage.settings"
    import django

    django.setup()
    from knox.models import AuthToken

    from triage.models import User

    _, token = AuthToken.objects.create(User.objects.get(username="scale"))
    cpus = os.cpu_count() or 1
    log(f"building {STUDIES} studies of {SLICES} slices of {SIZE}x{SIZE}; {cpus} CPUs")
    studies = study_blobs(STUDIES)
    hosts = [Host("front", front, directory)]
    listeners = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: hosts[0].running() and healthy_in_a_row(url), timeout=300, what="web nodes", interval=1.0)
        listeners = Listeners(url, session_cookie(url, "scale"))
        listeners.connected.wait(timeout=600)
        if listeners.errors:
            raise RuntimeError(f"WebSocket clients: {listeners.errors[0]}")
        log(f"{CLIENTS} WebSocket clients connected through nginx")
        report = {"cpus": cpus, "studies": STUDIES, "clients": CLIENTS, "slices": SLICES, "size": SIZE, "phases": []}
        shares = [STUDIES // len(PHASES) + (1 if i < STUDIES % len(PHASES) else 0) for i in range(len(PHASES))]
        offset = 0
        for workers, share in zip(PHASES, shares, strict=True):
            while len(hosts) - 1 < workers:
                worker_env = {**base, **pacs, "TRIAGE_ROLES": "ingest", "TRIAGE_WORKERS_INGEST": "1"}
                worker_env |= {"TRIAGE_HTTP_PORT": str(free_port()), "TRIAGE_DEVICE": "cpu"}
                worker_env["TRIAGE_TORCH_THREADS"] = str(max(1, cpus // workers))
                hosts.append(Host(f"ingest-{len(hosts)}", worker_env, directory))
            report["phases"].append(phase(workers, studies[offset : offset + share], url, token, orthanc))
            offset += share
        time.sleep(5)  # the last events and reports of the last phase
        listeners.close()
        report["checks"] = checks([uid for uid, _ in studies], listeners, fhir)
        report["stage_medians_s"] = medians()
    finally:
        if listeners is not None:
            listeners.close()
        for host in reversed(hosts):
            host.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    bad = report["checks"]
    ok = bad["jobs_done_once"] == STUDIES and bad["results_duplicated"] == 0 and bad["reports_sent"] == STUDIES
    ok = ok and bad["clients_missing_events"] == 0 and bad["seq_gaps"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

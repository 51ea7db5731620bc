"""``make chaos``: studies flow PACS → worklist → FHIR under ``make run`` while a seeded schedule kills processes and
takes the database, Redis, the PACS and the EMR away; then every study, result, worklist item and report is checked.

Usage: ``python -m tools.chaos [--studies N] [--kills K] [--seed S] [--duration-s T] [--outages a,b,…]``. Exit code
1 on any violation, with the list; a JSON summary goes to bench/results/chaos.json. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from tools import chaos_checks as checks
from tools.chaos_app import READER, USERS_SCRIPT, App, hook_token, wait_for
from tools.chaos_client import Pacs, WorklistClient, session_login, worklist_snapshot
from tools.faultproxy import FaultProxy
from tools.fhirserver import FhirServer
from tools.orthanc import OrthancServer
from tools.postgres import PostgresCluster
from tools.procs import free_port
from tools.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "bench" / "results" / "chaos.json"
ORTHANC_REUSE_WAIT_S = 4.5  # Orthanc needs about 4 s after it stops before the same storage can be reused

# Each outage: how long it lasts (seconds) and what it does at its start and at its end.
OUTAGES: dict[str, float] = {
    "postgres": 8.0,  # pg_ctl stop -m fast, then start
    "redis": 8.0,  # shutdown nosave, then a new redis-server on the same port
    "pacs_down": 20.0,  # the PACS proxy drops every connection
    "orthanc_restart": 6.0,  # Orthanc itself stopped, then started on the same storage
    "pacs_slow": 30.0,  # every PACS request 2 s late
    "emr_down": 25.0,  # the EMR proxy drops every connection
    "emr_5xx": 20.0,  # the EMR answers 503
    "emr_429": 20.0,  # the EMR answers 429 with Retry-After
}
PACS_DELAY_S = 2.0


@dataclass
class ChaosConfig:
    studies: int = 200
    kills: int = 20
    seed: int = 1
    duration_s: float = 600.0
    outages: tuple[str, ...] = tuple(OUTAGES)
    settle_timeout_s: float = 900.0
    notify_share: float = 0.8
    ingest_workers: int = 2
    slices: tuple[int, int] = (12, 16)
    size: int = 64
    json_path: Path | None = RESULTS_PATH
    keep_dir: bool = False


@dataclass
class Action:
    at: float
    kind: str
    arg: str = ""


def schedule(config: ChaosConfig, rng: random.Random) -> list[Action]:
    """Kills spread over the run; outages one after another in their own slots, so each one's effect is its own."""
    span = config.duration_s
    actions = [Action(rng.uniform(0.05 * span, 0.9 * span), "kill") for _ in range(config.kills)]
    names = list(config.outages)
    rng.shuffle(names)
    if names:
        slot = 0.72 * span / len(names)
        for index, name in enumerate(names):
            start = 0.08 * span + index * slot + rng.uniform(0, max(0.0, slot - OUTAGES[name]))
            actions += [Action(start, "outage_start", name), Action(start + OUTAGES[name], "outage_end", name)]
    return sorted(actions, key=lambda a: a.at)


@dataclass
class Services:
    postgres: PostgresCluster
    redis: RedisServer
    orthanc: OrthancServer
    fhir: FhirServer
    pacs_proxy: FaultProxy
    emr_proxy: FaultProxy


@dataclass
class Run:
    """One chaos run: its services, the app, the injected faults and what was measured."""

    config: ChaosConfig
    workdir: Path
    rng: random.Random
    services: Services | None = None
    app: App | None = None
    pacs: Pacs | None = None
    client: WorklistClient | None = None
    sent: dict[str, dict] = field(default_factory=dict)
    kills: list[dict] = field(default_factory=list)
    outages: list[dict] = field(default_factory=list)
    t0: float = 0.0
    _orthanc_stopped_at: float = 0.0
    _met_before: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    # --- start and stop ------------------------------------------------------------------------------------------

    def start_services(self, stack: contextlib.ExitStack) -> Services:
        postgres = PostgresCluster(self.workdir / "pg").start()
        stack.callback(postgres.stop)
        redis = RedisServer(self.workdir / "redis").start()
        stack.callback(redis.stop)
        orthanc = OrthancServer(self.workdir / "orthanc").start()
        stack.callback(lambda: orthanc.stop())
        fhir = FhirServer(self.workdir / "fhir").start()
        stack.callback(fhir.stop)
        pacs_proxy = FaultProxy(orthanc.url, timeout=30).start()
        stack.callback(pacs_proxy.stop)
        emr_proxy = FaultProxy(fhir.base_url, timeout=30).start()
        stack.callback(emr_proxy.stop)
        return Services(postgres, redis, orthanc, fhir, pacs_proxy, emr_proxy)

    def app_env(self, services: Services) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_") or k == "TRIAGE_DEVICE"}
        return {
            **env,
            "TRIAGE_DEBUG": "1",
            "DATABASE_URL": services.postgres.url,
            "REDIS_URL": services.redis.url,
            "TRIAGE_HTTP_PORT": str(free_port()),
            "TRIAGE_DICOMWEB_URL": f"{services.pacs_proxy.url}/dicom-web",
            "TRIAGE_FHIR_BASE_URL": services.emr_proxy.url,
            "TRIAGE_POLL_SECONDS": "2",
            "TRIAGE_STUDY_SETTLE_SECONDS": "3",
            "TRIAGE_JOB_LEASE_SECONDS": "15",
            "TRIAGE_HTTP_TIMEOUT_SECONDS": "10",
            "TRIAGE_PACS_HTTP_ATTEMPTS": "2",
            "TRIAGE_PACS_RETRY_BASE_SECONDS": "1",
            "TRIAGE_PACS_RETRY_MAX_SECONDS": "10",
            "TRIAGE_PACS_MAX_RETRIES": "200",
            "TRIAGE_WORKERS_INGEST": str(self.config.ingest_workers),
            "TRIAGE_WORKERS_OUTBOX": "1",
            "TRIAGE_LOG_LEVEL": "WARNING",
        }

    def start_app(self, stack: contextlib.ExitStack, services: Services) -> App:
        app = App(self.app_env(services), self.workdir / "run.log")
        stack.callback(app.stop)
        app.start(timeout=600)
        password = secrets.token_urlsafe(16)
        app.manage("shell", "-v", "0", "-c", USERS_SCRIPT, extra_env={"CHAOS_PASSWORD": password})
        token = hook_token(app)
        orthanc = services.orthanc
        self.pacs = Pacs(lambda: orthanc.url, f"{app.url}/api/v1/studies/notify/", token)
        self.client = WorklistClient(app.url, session_login(app.url, READER, password)).start()
        stack.callback(self.client.stop)
        return app

    # --- load ----------------------------------------------------------------------------------------------------

    def upload_all(self) -> None:
        """The studies arrive over the first 75 % of the run; a share is notified, the rest left to the poller."""
        from tests.triage.dicom_build import SeriesSpec, StudySpec, study_datasets, to_bytes

        config, rng = self.config, random.Random(self.config.seed + 1)
        assert self.pacs is not None
        for index in range(config.studies):
            due = self.t0 + 0.75 * config.duration_s * index / max(1, config.studies)
            time.sleep(max(0.0, due - time.monotonic()))
            series = SeriesSpec(slices=rng.randint(*config.slices), size=config.size)
            spec = StudySpec(accession=f"CHAOS{index:04d}", patient_id=f"CHAOS-P{index % 50:03d}", series=[series])
            notify = rng.random() < config.notify_share
            record = {"index": index, "uploaded_at": None, "notified": None}
            self.sent[spec.study_uid] = record
            if self.pacs.store([to_bytes(ds) for ds in study_datasets(spec)]):
                record["uploaded_at"] = self.now()
            if notify:
                record["notified"] = self.pacs.notify(spec.study_uid)

    # --- faults --------------------------------------------------------------------------------------------------

    def kill_one(self) -> None:
        assert self.app is not None
        running = [name for name, state in self.app.programs().items() if state == "RUNNING"]
        if not running:
            return
        # Every program is hit once before any is hit twice.
        hit = Counter(k["program"] for k in self.kills)
        fewest = min(hit.get(name, 0) for name in running)
        name = self.rng.choice(sorted(n for n in running if hit.get(n, 0) == fewest))
        pid = self.app.pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        kill = {"at": self.now(), "program": name, "pid": pid, "back_after_s": None}
        self.kills.append(kill)
        thread = threading.Thread(target=self._watch_restart, args=(kill,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch_restart(self, kill: dict) -> None:
        assert self.app is not None
        started = time.monotonic()
        while time.monotonic() - started < 180:
            pid = self.app.pid(kill["program"])
            if pid is not None and pid != kill["pid"] and self.app.programs().get(kill["program"]) == "RUNNING":
                kill["back_after_s"] = round(time.monotonic() - started, 1)
                return
            time.sleep(0.5)

    def outage(self, name: str, *, start: bool) -> None:
        if start:
            self.outages.append({"kind": name, "start": self.now(), "end": None, "requests_met": None})
            self._outage_begin(name)
            self._met_before = self._proxy_total(name)
            return
        met = self._proxy_total(name) - self._met_before
        self._outage_end(name)
        record = next(o for o in reversed(self.outages) if o["kind"] == name)
        record["end"] = self.now()
        # How many requests the outage answered for: 0 means nothing was in flight to meet it.
        record["requests_met"] = met if name.startswith(("pacs_", "emr_")) else None

    def _proxy_total(self, name: str) -> int:
        assert self.services is not None
        proxy = self.services.emr_proxy if name.startswith("emr_") else self.services.pacs_proxy
        return sum(count for key, count in proxy.counts.items() if key != "forwarded")

    def _outage_begin(self, name: str) -> None:
        services = self.services
        assert services is not None
        if name == "postgres":
            services.postgres.stop()
        elif name == "redis":
            services.redis.stop()
        elif name == "orthanc_restart":
            services.orthanc.stop()
            self._orthanc_stopped_at = time.monotonic()
        elif name == "pacs_down":
            services.pacs_proxy.set_down()
        elif name == "pacs_slow":
            services.pacs_proxy.set_slow(PACS_DELAY_S)
        elif name == "emr_down":
            services.emr_proxy.set_down()
        elif name == "emr_5xx":
            services.emr_proxy.set_failing(503)
        elif name == "emr_429":
            services.emr_proxy.set_failing(429, retry_after=5)

    def _outage_end(self, name: str) -> None:
        services = self.services
        assert services is not None
        if name == "postgres":
            services.postgres.start()
        elif name == "redis":
            services.redis.start()
        elif name == "orthanc_restart":
            time.sleep(max(0.0, ORTHANC_REUSE_WAIT_S - (time.monotonic() - self._orthanc_stopped_at)))
            services.orthanc.start()
        elif name.startswith("pacs_"):
            services.pacs_proxy.heal()
        else:
            services.emr_proxy.heal()

    def inject(self, actions: list[Action]) -> None:
        for action in actions:
            time.sleep(max(0.0, self.t0 + action.at - time.monotonic()))
            print(f"[{self.now():7.1f} s] {action.kind} {action.arg}".rstrip(), flush=True)
            if action.kind == "kill":
                self.kill_one()
            else:
                self.outage(action.arg, start=action.kind == "outage_start")

    # --- the run -------------------------------------------------------------------------------------------------

    def execute(self) -> dict:
        with contextlib.ExitStack() as stack:
            started = time.monotonic()
            self.services = self.start_services(stack)
            self.app = self.start_app(stack, self.services)
            startup_s = time.monotonic() - started
            self.t0 = time.monotonic()
            uploader = threading.Thread(target=self.upload_all, name="pacs", daemon=True)
            uploader.start()
            self.inject(schedule(self.config, self.rng))
            uploader.join(timeout=self.config.settle_timeout_s)
            load_s = self.now()
            quiet_s, state, progress = self.wait_quiescent()
            summary = self.verify(state)
            summary["durations_s"] = {
                "startup": round(startup_s, 1),
                "load_and_faults": load_s,
                "quiescence_wait": quiet_s,
                "total": round(time.monotonic() - started, 1),
            }
            summary["last_progress"] = progress
            return summary

    def wait_quiescent(self) -> tuple[float | None, dict, str]:
        assert self.app is not None
        expected = set(self.sent)
        started = time.monotonic()
        state: dict = {"studies": {}, "messages": []}
        progress = "never read"
        while time.monotonic() - started < self.config.settle_timeout_s:
            try:
                state = checks.app_state(self.app.env)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                progress = f"state unreadable: {str(err)[-200:]}"
            else:
                done, progress = checks.quiescent(state, expected)
                if done:
                    return round(time.monotonic() - started, 1), state, progress
            print(f"[{self.now():7.1f} s] waiting for quiescence: {progress}", flush=True)
            time.sleep(10)
        return None, state, progress

    def verify(self, state: dict) -> dict:
        assert self.app is not None
        assert self.services is not None
        assert self.client is not None
        expected = set(self.sent)
        violations = checks.check_pipeline(state, expected)
        outbox_violations, refused = checks.check_outbox(state)
        violations += outbox_violations
        fhir_violations, fhir_counts = checks.check_fhir(state, self.services.fhir.base_url)
        violations += fhir_violations
        violations += self.check_health_and_processes()
        violations += self.check_worklist_view(expected)
        return {
            "violations": violations,
            "refused_4xx": refused,
            "fhir": fhir_counts,
            "tracebacks": traceback_summary(self.app.log_path),
            "client": dict(self.client.counts),
            "latency_s": self.latency(),
        }

    def check_health_and_processes(self) -> list[str]:
        assert self.app is not None
        violations = []
        for path in ("/healthz", "/readyz"):
            try:
                wait_for(lambda p=path: self.app.answers(p), timeout=120, what=path)
            except TimeoutError:
                violations.append(f"web: {path} does not answer 200 at the end")
        for name, state in sorted(self.app.programs().items()):
            if state != "RUNNING":
                violations.append(f"process {name}: {state} at the end")
        for thread in self._threads:
            thread.join(timeout=180)
        for kill in self.kills:
            if kill["back_after_s"] is None:
                violations.append(f"process {kill['program']}: not back within 180 s of its SIGKILL at {kill['at']} s")
        return violations

    def check_worklist_view(self, expected: set[str]) -> list[str]:
        """The WebSocket client has had the events of the last changes (or a beat that makes it resync)."""
        assert self.app is not None
        assert self.client is not None
        api_view: dict = {}

        def agrees() -> bool:
            nonlocal api_view
            try:
                _, api_view = worklist_snapshot(self.client.session, self.app.url)
            except (requests.RequestException, ValueError, KeyError):
                return False
            return not checks.check_worklist_view(api_view, self.client.snapshot_of_view(), expected)

        with contextlib.suppress(TimeoutError):
            wait_for(agrees, timeout=60, what="the WebSocket client's view")
        return checks.check_worklist_view(api_view, self.client.snapshot_of_view(), expected)

    def latency(self) -> dict:
        """Seconds from a study's upload to its findings in the client's view."""
        assert self.client is not None
        waits = sorted(
            self.client.first_findings[uid] - (self.t0 + record["uploaded_at"])
            for uid, record in self.sent.items()
            if record["uploaded_at"] is not None and uid in self.client.first_findings
        )
        if not waits:
            return {}
        pick = lambda q: round(waits[min(len(waits) - 1, int(q * len(waits)))], 1)  # noqa: E731
        return {"p50": pick(0.5), "p95": pick(0.95), "max": round(waits[-1], 1), "n": len(waits)}


def traceback_summary(log_path: Path) -> dict[str, int]:
    """Tracebacks in the app's log, counted by the exception that ended each chain (its last line)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    found: Counter = Counter()
    for index, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        for offset, follow in enumerate(lines[index + 1 : index + 400], start=index + 1):
            if follow.startswith((" ", "\t")) or not follow:
                continue
            chained = any(
                later.startswith(("During handling of the above", "The above exception"))
                for later in lines[offset + 1 : offset + 4]
            )
            if not chained:
                found[follow.split(":")[0]] += 1
            break
    return dict(found.most_common())


def run_chaos(config: ChaosConfig, workdir: Path | None = None) -> dict:
    """Run the whole thing; returns the summary (``violations`` empty on a pass)."""
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="triage-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
    run = Run(config, workdir, random.Random(config.seed))
    summary: dict = {"config": {**asdict(config), "json_path": str(config.json_path)}, "workdir": str(workdir)}
    try:
        summary.update(run.execute())
    except Exception as err:
        summary["violations"] = [f"the run itself failed: {type(err).__name__}: {err}"]
        raise
    finally:
        summary.update(
            studies={"sent": len(run.sent), "notified": sum(1 for r in run.sent.values() if r["notified"])},
            kills=run.kills,
            outages=run.outages,
            pacs=dict(run.pacs.counts) if run.pacs else {},
            proxies=_proxy_counts(run.services),
        )
        if config.json_path is not None:
            config.json_path.parent.mkdir(parents=True, exist_ok=True)
            config.json_path.write_text(json.dumps(summary, indent=2, default=str))
        if own_dir and not summary.get("violations") and not config.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _proxy_counts(services: Services | None) -> dict:
    if services is None:
        return {}
    return {"pacs": dict(services.pacs_proxy.counts), "emr": dict(services.emr_proxy.counts)}


def _outage_text(outage: dict) -> str:
    met = outage.get("requests_met")
    text = f"{outage['kind']} {outage['start']}–{outage['end']} s"
    return text if met is None else f"{text} ({met} requests met)"


def print_table(summary: dict) -> None:
    rows = [
        ("studies sent / notified", f"{summary['studies']['sent']} / {summary['studies']['notified']}"),
        ("SIGKILLs", f"{len(summary['kills'])}: {dict(Counter(k['program'] for k in summary['kills']))}"),
        ("slowest restart after a kill (s)", max((k["back_after_s"] or 0 for k in summary["kills"]), default=0)),
        ("outages", ", ".join(_outage_text(o) for o in summary["outages"])),
        ("durations (s)", summary.get("durations_s")),
        ("upload → worklist (s)", summary.get("latency_s")),
        ("EMR", summary.get("fhir")),
        ("WebSocket client", summary.get("client")),
        ("PACS side", summary.get("pacs")),
        ("proxies", summary.get("proxies")),
        ("tracebacks in the app's log", summary.get("tracebacks")),
        ("dead on a 4xx (accepted)", len(summary.get("refused_4xx") or [])),
        ("violations", len(summary.get("violations") or [])),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for line in summary.get("violations") or []:
        print(f"VIOLATION  {line}")


def parse_args(argv: list[str]) -> ChaosConfig:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=600.0, help="Length of the load and fault phase")
    parser.add_argument("--settle-timeout-s", type=float, default=900.0, help="Longest wait for quiescence")
    parser.add_argument("--outages", default=",".join(OUTAGES), help=f"Comma-separated, from {', '.join(OUTAGES)}")
    parser.add_argument("--json", type=Path, default=RESULTS_PATH, help="Where the summary goes")
    parser.add_argument("--keep", action="store_true", help="Keep the working directory (logs, databases)")
    args = parser.parse_args(argv)
    outages = tuple(o for o in args.outages.split(",") if o)
    unknown = set(outages) - set(OUTAGES)
    if unknown:
        parser.error(f"unknown outages: {', '.join(sorted(unknown))}")
    return ChaosConfig(
        studies=args.studies,
        kills=args.kills,
        seed=args.seed,
        duration_s=args.duration_s,
        settle_timeout_s=args.settle_timeout_s,
        outages=outages,
        json_path=args.json,
        keep_dir=args.keep,
    )


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every service started is stopped."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    summary = run_chaos(config)
    print_table(summary)
    if summary.get("violations"):
        print(f"\nchaos: {len(summary['violations'])} violations; logs in {summary['workdir']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

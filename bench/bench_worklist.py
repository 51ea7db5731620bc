"""Worklist benchmarks (``make bench``), on a private PostgreSQL and Redis on loopback.

1. 100,000 open studies: the first page of ``GET /api/v1/worklist/`` through the whole Django/DRF stack
   (test client, session login). Target p95 ≤ 50 ms.
2. 500 WebSocket clients on one daphne server with the Redis channel layer: time from a worklist change's commit
   to its event reaching each client. Target p95 ≤ 250 ms. Reported next to a bare channel-layer round trip
   (send → receive on one Redis channel) measured in the same run.

Prints a table and writes bench/results/worklist.json. Every loop is bounded; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STUDIES = int(os.environ.get("BENCH_WORKLIST_STUDIES", "100000"))
API_REQUESTS = 200
WS_CLIENTS = int(os.environ.get("BENCH_WORKLIST_CLIENTS", "500"))
WS_EVENTS = 20
LAYER_ROUND_TRIPS = 200
API_TARGET_MS = 50.0
WS_TARGET_MS = 250.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p95_ms": round(percentile(values, 95), 2),
        "max_ms": round(max(values), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def setup_django(database_url: str, redis_url: str) -> None:
    os.environ.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "TRIAGE_DEBUG": "1"})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "triage.settings")
    os.environ["TRIAGE_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def populate(count: int) -> None:
    """``count`` open studies over the last three days; one in ten has a current AI result, a third positive."""
    from django.db import connection
    from django.utils import timezone

    from triage.models import Series, Study, TriageResult
    from worklist import priority
    from worklist.models import WorklistItem

    rng = random.Random(4)
    now = timezone.now()
    batch = 5000
    for start in range(0, count, batch):
        studies = [
            Study(
                study_instance_uid=f"1.2.826.0.1.3680043.10.9.{n}",
                accession_number=f"B{n:08d}",
                modalities="CT",
                study_description="CT HEAD WO CONTRAST",
                requested_priority=rng.choice(["ROUTINE"] * 8 + ["HIGH", "STAT"]),
                received_at=now - timedelta(seconds=rng.uniform(0, 3 * 86400)),
            )
            for n in range(start, min(count, start + batch))
        ]
        Study.objects.bulk_create(studies)
        flagged = [s for s in studies if rng.random() < 0.1]
        series = Series.objects.bulk_create(
            [Series(study=s, series_instance_uid=f"{s.study_instance_uid}.1", modality="CT") for s in flagged]
        )
        scores = {s.study_id: rng.random() for s in series}
        TriageResult.objects.bulk_create(
            [
                TriageResult(
                    study_id=s.study_id, series=s, finding="ich", model_name="ich2d", model_version="0.1.0",
                    score=scores[s.study_id], threshold=0.7, positive=scores[s.study_id] >= 0.7,
                )
                for s in series
            ]
        )  # fmt: skip
        items = []
        for s in studies:
            findings = [priority.FindingScore(scores[s.pk], scores[s.pk] >= 0.7)] if s.pk in scores else []
            urgency = priority.urgency_from_code(s.requested_priority)
            critical = priority.critical_from(findings)
            key = priority.sort_key(urgency=urgency, findings=findings)
            items.append(
                WorklistItem(
                    study=s, received_at=s.received_at, urgency=urgency, critical=critical,
                    critical_at=now if critical else None, sort_key=key,
                )
            )  # fmt: skip
        WorklistItem.objects.bulk_create(items)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # what autovacuum does for a table that grew this much


def bench_api() -> dict:
    from django.test import Client

    from tests.factories import UserFactory

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(UserFactory(username="bench-rad"))
    for _ in range(10):  # warm the connection and the plan cache
        client.get("/api/v1/worklist/")
    timings, first = [], None
    for _ in range(API_REQUESTS):
        start = time.perf_counter()
        response = client.get("/api/v1/worklist/")
        timings.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.status_code
        first = first or response.json()
    return {
        **summary(timings),
        "studies": STUDIES,
        "page_size": len(first["results"]),
        "count": first["count"],
        "target_p95_ms": API_TARGET_MS,
    }


async def bench_layer_round_trip() -> dict:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = await layer.new_channel()
    timings = []
    for n in range(LAYER_ROUND_TRIPS):
        start = time.perf_counter()
        await layer.send(channel, {"type": "bench.ping", "n": n})
        await asyncio.wait_for(layer.receive(channel), timeout=5)
        timings.append((time.perf_counter() - start) * 1000)
    return summary(timings)


def start_daphne(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "triage.asgi:application"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def session_cookie() -> str:
    from django.test import Client

    from tests.factories import UserFactory

    client = Client()
    client.force_login(UserFactory(username="bench-ws"))
    return client.cookies["sessionid"].value


def commit_change(item_id: int, user_id: int, commit_times: dict[int, float]) -> None:
    """Claim or release one item; the commit time is taken by an on_commit hook registered before the broadcast."""
    from django.db import transaction

    from triage.models import User
    from worklist import services
    from worklist.models import WorklistEventCounter, WorklistItem

    item = WorklistItem.objects.select_related("study").get(pk=item_id)
    user = User.objects.get(pk=user_id)
    with transaction.atomic():
        seq = WorklistEventCounter.objects.values_list("value", flat=True).get(pk=1) + 1
        transaction.on_commit(lambda: commit_times.__setitem__(seq, time.time()))
        action = services.worklist_item_release if item.claimed_by_id else services.worklist_item_claim
        action(study_instance_uid=item.study.study_instance_uid, user=user)


async def ws_client(url: str, cookie: str, received: dict[int, list[float]], hello: asyncio.Future) -> None:
    import websockets

    headers = {"Cookie": f"sessionid={cookie}", "Origin": "http://127.0.0.1"}
    try:
        async with websockets.connect(url, additional_headers=headers, max_queue=None, open_timeout=60) as socket:
            first = json.loads(await asyncio.wait_for(socket.recv(), timeout=60))
            hello.set_result(first["type"] == "hello")
            raw = []
            for _ in range(WS_EVENTS):
                text = await asyncio.wait_for(socket.recv(), timeout=30)
                raw.append((time.time(), text))  # stamp first, decode after: the client's JSON is not the server's
            for stamp, text in raw:
                received.setdefault(json.loads(text)["seq"], []).append(stamp)
    except BaseException as err:
        if not hello.done():
            hello.set_exception(err)
        raise


async def bench_websockets(port: int) -> dict:
    from asgiref.sync import sync_to_async

    from triage.models import User
    from worklist.models import WorklistEventCounter, WorklistItem
    from worklist.services import _seq_next  # noqa: F401 - the counter row must exist before the first commit

    cookie = await sync_to_async(session_cookie)()
    await sync_to_async(lambda: WorklistEventCounter.objects.get_or_create(pk=1))()
    item_id = await sync_to_async(lambda: WorklistItem.objects.order_by("-sort_key").values_list("id", flat=True)[0])()
    user_id = await sync_to_async(lambda: User.objects.get(username="bench-ws").pk)()
    received: dict[int, list[float]] = {}
    loop = asyncio.get_running_loop()
    hellos = [loop.create_future() for _ in range(WS_CLIENTS)]
    url = f"ws://127.0.0.1:{port}/ws/worklist/"
    start = time.perf_counter()
    clients = []
    for hello in hellos:  # paced so the server's accept queue is never the bottleneck
        clients.append(asyncio.create_task(ws_client(url, cookie, received, hello)))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*hellos, return_exceptions=True), timeout=240)
    connect_seconds = time.perf_counter() - start
    commit_times: dict[int, float] = {}
    for _ in range(WS_EVENTS):
        await sync_to_async(commit_change, thread_sensitive=False)(item_id, user_id, commit_times)
        await asyncio.sleep(0.25)  # one change at a time: the measure is latency, not a backlog
    outcomes = await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), timeout=120)
    failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    latencies = [
        (t - commit_times[seq]) * 1000 for seq, times in received.items() for t in times if seq in commit_times
    ]
    return {
        **summary(latencies),
        "clients": WS_CLIENTS,
        "events": WS_EVENTS,
        "deliveries_expected": WS_CLIENTS * WS_EVENTS,
        "connect_all_seconds": round(connect_seconds, 2),
        "client_failures": len(failures),
        "first_failures": failures[:3],
        "target_p95_ms": WS_TARGET_MS,
    }


def table(results: dict) -> str:
    rows = [
        ("worklist API first page", results["api"], f"≤ {API_TARGET_MS:.0f}"),
        (f"commit → delivery, {WS_CLIENTS} WebSockets", results["websocket"], f"≤ {WS_TARGET_MS:.0f}"),
        ("bare channel-layer round trip (Redis)", results["layer_round_trip"], "—"),
    ]
    lines = [f"{'measure':44} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  target p95"]
    for name, r, target in rows:
        lines.append(f"{name:44} {r['n']:>6} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['max_ms']:>8}  {target}")
    return "\n".join(lines)


def main() -> int:
    from tools.postgres import PostgresCluster
    from tools.procs import free_port, port_open, wait_until
    from tools.redis import RedisServer

    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
        cluster = PostgresCluster(Path(tmp) / "pg").start()
        redis = RedisServer(Path(tmp) / "redis").start()
        server = None
        try:
            setup_django(cluster.url, redis.url)
            started = time.perf_counter()
            populate(STUDIES)
            populate_seconds = time.perf_counter() - started
            results = {"api": bench_api(), "populate_seconds": round(populate_seconds, 1)}
            print(f"API first page over {STUDIES} studies: {results['api']}", flush=True)
            results["layer_round_trip"] = asyncio.run(bench_layer_round_trip())
            port = free_port()
            server = start_daphne(port, Path(tmp) / "daphne.log")
            wait_until(lambda: port_open(port), timeout=60, what="daphne")
            results["websocket"] = asyncio.run(bench_websockets(port))
        except BaseException:
            log = Path(tmp) / "daphne.log"
            if log.exists():
                print("daphne log (tail):", log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=15)
            redis.stop()
            cluster.stop()
    results["passed"] = (
        results["api"]["p95_ms"] <= API_TARGET_MS
        and results["websocket"]["p95_ms"] <= WS_TARGET_MS
        and results["websocket"]["n"] == results["websocket"]["deliveries_expected"]
    )
    results["machine"] = {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    print(table(results))
    print(f"populated {STUDIES} studies in {results['populate_seconds']} s; passed: {results['passed']}")
    out = ROOT / "bench" / "results" / "worklist.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

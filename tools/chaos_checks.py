"""What a chaos run must leave behind, checked from the outside: the database (read through ``manage.py shell``), the
FHIR server (read directly, not through its fault proxy) and the worklist as the API and a WebSocket client see it.
Each check returns violations as one line each; an empty list is a pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the app (manage.py shell): prints one JSON line describing every study and outbox message.
STATE_SCRIPT = """
import json
from django.db.models import Count
from triage.models import FINAL_JOB_STATES, OutboxMessage, Series, Study, TriageJob, TriageResult
from worklist.models import WorklistItem

studies = {s.pk: s.study_instance_uid for s in Study.objects.all()}
jobs = {}
for job in TriageJob.objects.all():
    jobs.setdefault(job.study_id, []).append(
        {"state": job.state, "error_code": job.error_code, "attempts": job.attempts,
         "pacs_failures": job.pacs_failures, "final": job.state in FINAL_JOB_STATES}
    )
routed = {}
for row in Series.objects.exclude(routed_model="").values("study_id", "routed_model"):
    routed.setdefault(row["study_id"], set()).add(row["routed_model"])
current = {}
for row in TriageResult.objects.filter(is_current=True).values("study_id", "finding").annotate(n=Count("id")):
    current.setdefault(row["study_id"], {})[row["finding"]] = row["n"]
items = dict(WorklistItem.objects.values_list("study_id").annotate(n=Count("id")))
messages = []
for m in OutboxMessage.objects.all():
    entries = [e["resource"] for e in (m.payload or {}).get("entry", [])]
    report = next((r for r in entries if r["resourceType"] == "DiagnosticReport"), {})
    messages.append(
        {"study": studies.get(m.study_id), "finding": m.finding, "resource_id": m.resource_id,
         "version": m.report_version, "state": m.state, "last_status_code": m.last_status_code,
         "attempts": m.attempts, "report": [report.get("status"), report.get("issued"), report.get("conclusion")]}
    )
out = {
    "studies": {
        uid: {"jobs": jobs.get(pk, []), "routed": sorted(routed.get(pk, ())), "current": current.get(pk, {}),
              "items": items.get(pk, 0)}
        for pk, uid in studies.items()
    },
    "messages": messages,
}
print("CHAOS-STATE " + json.dumps(out))
"""


def app_state(env: dict[str, str], *, timeout: float = 180.0) -> dict:
    """The app's rows that the checks need; raises when the database cannot be read."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-v", "0", "-c", STATE_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("CHAOS-STATE "):
            return json.loads(line.removeprefix("CHAOS-STATE "))
    raise RuntimeError(f"reading the app's state failed ({done.returncode}): {done.stderr[-2000:]}")


def quiescent(state: dict, expected: set[str]) -> tuple[bool, str]:
    """Every expected study known, every job final, no report waiting or in flight."""
    studies = state["studies"]
    missing = len(expected - set(studies))
    open_jobs = sum(1 for s in studies.values() for j in s["jobs"] if not j["final"])
    in_flight = sum(1 for m in state["messages"] if m["state"] in ("pending", "sending"))
    summary = f"{len(studies)} studies, {missing} not yet known, {open_jobs} jobs open, {in_flight} reports waiting"
    return missing == 0 and open_jobs == 0 and in_flight == 0, summary


def check_pipeline(state: dict, expected: set[str]) -> list[str]:
    """One job, one current result per routed finding and one worklist item per study; no stray study."""
    violations = []
    studies = state["studies"]
    for uid in sorted(expected - set(studies)):
        violations.append(f"study {uid}: lost (never reached the database)")
    for uid in sorted(set(studies) - expected):
        violations.append(f"study {uid}: in the database but never sent")
    for uid in sorted(expected & set(studies)):
        row = studies[uid]
        if len(row["jobs"]) != 1:
            violations.append(f"study {uid}: {len(row['jobs'])} jobs")
            continue
        job = row["jobs"][0]
        if job["state"] != "done" or job["error_code"]:
            violations.append(f"study {uid}: job ended {job['state']} {job['error_code']!r}")
        if not row["routed"]:
            violations.append(f"study {uid}: no routed series")
        for finding in row["routed"]:
            if row["current"].get(finding, 0) != 1:
                violations.append(f"study {uid}: {row['current'].get(finding, 0)} current {finding} results")
        for finding in set(row["current"]) - set(row["routed"]):
            violations.append(f"study {uid}: a current {finding} result without a routed series")
        if row["items"] != 1:
            violations.append(f"study {uid}: {row['items']} worklist items")
    return violations


def check_outbox(state: dict) -> tuple[list[str], list[str]]:
    """No message dead except for a 4xx (returned second, as accepted refusals); every current result reported."""
    violations, refused = [], []
    for m in state["messages"]:
        if m["state"] != "dead":
            continue
        code = m["last_status_code"] or 0
        line = f"report {m['resource_id']} v{m['version']}: dead after {m['attempts']} attempts (last answer {code})"
        (refused if 400 <= code < 500 else violations).append(line)
    sent = {(m["study"], m["finding"]) for m in state["messages"] if m["state"] == "sent"}
    for uid, row in state["studies"].items():
        for finding in row["current"]:
            if (uid, finding) not in sent:
                violations.append(f"study {uid}: current {finding} result never reported to the EMR")
    return violations, refused


def fhir_reports(base_url: str) -> list[dict]:
    """Every DiagnosticReport the FHIR server holds (paged with _offset against total)."""
    reports: list[dict] = []
    while True:
        params = {"_count": "200", "_offset": str(len(reports))}
        body = requests.get(f"{base_url}/DiagnosticReport", params=params, timeout=60).json()
        page = [entry["resource"] for entry in body.get("entry", [])]
        reports += page
        if not page or len(reports) >= int(body.get("total", 0)):
            return reports


def _study_uid(report: dict) -> str | None:
    for identifier in report.get("identifier", []):
        if identifier.get("system") == "urn:dicom:uid":
            return str(identifier["value"]).removeprefix("urn:oid:")
    return None


def _finding(report: dict) -> str | None:
    codes = report.get("code", {}).get("coding", [])
    return codes[0]["code"].removesuffix("-triage") if codes else None


def _fingerprint(report: dict) -> list:
    return [report.get("status"), report.get("issued"), report.get("conclusion")]


def check_fhir(state: dict, base_url: str) -> tuple[list[str], dict[str, int]]:
    """One DiagnosticReport per (study, finding); its history holds each sent version once, and the newest last."""
    violations = []
    reports = fhir_reports(base_url)
    per_key = Counter((_study_uid(r), _finding(r)) for r in reports)
    for key, count in sorted(per_key.items(), key=str):
        if count != 1:
            violations.append(f"EMR: {count} DiagnosticReports for study {key[0]} finding {key[1]}")
    sent: dict[str, list[dict]] = defaultdict(list)
    for m in state["messages"]:
        if m["state"] == "sent":
            sent[m["resource_id"]].append(m)
    stored = {r["id"]: r for r in reports}
    replays = 0
    for resource_id, messages in sorted(sent.items()):
        if resource_id not in stored:
            violations.append(f"EMR: report {resource_id} sent but not on the server")
            continue
        history = requests.get(f"{base_url}/DiagnosticReport/{resource_id}/_history", timeout=60).json()
        versions = [e["resource"] for e in history.get("entry", [])]
        violations += _history_violations(resource_id, messages, versions, stored[resource_id])
        replays += len(versions) - len({json.dumps(_fingerprint(v)) for v in versions})
    return violations, {"diagnostic_reports": len(reports), "reports_sent": len(sent), "replayed_versions": replays}


def _history_violations(resource_id: str, messages: list[dict], versions: list[dict], current: dict) -> list[str]:
    """Each sent version's content in the history (as a distinct content), and the newest sent one is current."""
    distinct = {json.dumps(_fingerprint(v)) for v in versions}
    expected = {json.dumps(m["report"]) for m in messages}
    violations = []
    if distinct != expected:
        violations.append(
            f"EMR: report {resource_id}: {len(distinct)} distinct versions on the server, {len(expected)} sent"
        )
    newest_sent = max(messages, key=lambda m: m["version"])["report"]
    if _fingerprint(current) != newest_sent:
        violations.append(f"EMR: report {resource_id}: the server's current version is not the newest sent")
    return violations


def check_worklist_view(api_view: dict[str, list], client_view: dict[str, list], expected: set[str]) -> list[str]:
    """The WebSocket client's view is the API's: every study, with the same findings."""
    violations = []
    for uid in sorted(expected):
        if uid not in api_view:
            violations.append(f"worklist API: study {uid} missing")
        elif not api_view[uid]:
            violations.append(f"worklist API: study {uid} has no findings")
        if uid not in client_view:
            violations.append(f"WebSocket client: study {uid} missing")
        elif client_view[uid] != api_view.get(uid):
            violations.append(f"WebSocket client: study {uid} shows {client_view[uid]}, API {api_view.get(uid)}")
    return violations

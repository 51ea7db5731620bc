"""The FHIR outbox against a real FHIR server: versions, amendments, outages, dead letters, crashes and auth."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from tests.factories import JobFactory, ResultFactory, SeriesFactory, StudyFactory
from tools.procs import free_port
from triage.core.outbox import backoff_seconds
from triage.fhir import client as fhirclient
from triage.fhir import resources as fhir
from triage.fhir.delivery import _attempt, _claim, outbox_deliver_due
from triage.fhir.outbox import endpoint_ensure_from_env, outbox_enqueue_report, outbox_requeue, outbox_retract
from triage.models import AuditEvent, FhirEndpoint, OutboxMessage, OutboxState, TriageResult, WorkerHeartbeat
from worklist.models import Feedback


def make_result(*, score: float = 0.9, threshold: float = 0.5, study=None, **kwargs) -> TriageResult:
    study = study or StudyFactory()
    series = SeriesFactory(
        study=study, series_instance_uid=f"{study.study_instance_uid}.{TriageResult.objects.count()}"
    )
    return ResultFactory(series=series, score=score, threshold=threshold, **kwargs)


def rerun(result: TriageResult, **changes) -> TriageResult:
    """A new current result for the same study and finding, as results_record writes it."""
    TriageResult.objects.filter(study=result.study, finding=result.finding).update(is_current=False)
    fields = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "score": result.score,
        "threshold": result.threshold,
        **changes,
    }
    fields.setdefault("positive", fields["score"] >= fields["threshold"])
    return ResultFactory(series=result.series, finding=result.finding, **fields)


def make_due() -> None:
    OutboxMessage.objects.filter(state=OutboxState.PENDING).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def stored_reports(fhir_emr, result: TriageResult) -> list[dict]:
    uid = result.study.study_instance_uid
    found = fhir_emr.search("DiagnosticReport", identifier=f"urn:dicom:uid|urn:oid:{uid}")
    return [e["resource"] for e in found.get("entry", [])]


def report_versions(fhir_emr, result: TriageResult) -> int:
    report_id = fhir.report_id(study_instance_uid=result.study.study_instance_uid, finding=result.finding)
    return len(fhir_emr.history("DiagnosticReport", report_id).get("entry", []))


# ---------------------------------------------------------------------------------------------------------------
# Enqueue


def test_report_is_queued_in_the_callers_transaction_and_rolls_back_with_it(endpoint):
    result = make_result()

    def record_then_fail() -> None:
        with transaction.atomic():
            outbox_enqueue_report(study=result.study, finding="ich")
            raise RuntimeError("the result write failed")

    with pytest.raises(RuntimeError):
        record_then_fail()

    assert not OutboxMessage.objects.exists()


def test_first_version_is_preliminary_for_every_enabled_endpoint(endpoint):
    FhirEndpoint.objects.create(name="second", base_url="http://127.0.0.1:9/fhir")
    FhirEndpoint.objects.create(name="off", base_url="http://127.0.0.1:9/fhir", enabled=False)
    result = make_result()

    messages = outbox_enqueue_report(study=result.study, finding="ich")

    assert sorted(m.endpoint.name for m in messages) == ["emr", "second"]
    assert {(m.report_status, m.report_version, m.state) for m in messages} == {("preliminary", 1, "pending")}
    assert messages[0].result_ids == [result.pk]


def test_default_endpoint_follows_the_environment(db, settings, monkeypatch):
    settings.TRIAGE_FHIR_BASE_URL = "http://127.0.0.1:9/fhir/"
    settings.TRIAGE_FHIR_TOKEN = "secret-token"
    result = make_result()
    endpoint_ensure_from_env()

    (message,) = outbox_enqueue_report(study=result.study, finding="ich")

    assert message.endpoint.name == "default"
    assert message.endpoint.base_url == "http://127.0.0.1:9/fhir"
    assert (message.endpoint.auth, message.endpoint.secret_env) == ("bearer", "TRIAGE_FHIR_TOKEN")


def test_a_newer_result_supersedes_an_undelivered_version(endpoint, fhir_emr):
    first = make_result(score=0.3)
    outbox_enqueue_report(study=first.study, finding="ich")
    second = rerun(first, score=0.95, model_version="0.2.0")
    outbox_enqueue_report(study=first.study, finding="ich")

    outbox_deliver_due(limit=10)

    states = list(OutboxMessage.objects.order_by("report_version").values_list("state", "report_status"))
    assert states == [("superseded", "preliminary"), ("sent", "preliminary")]
    (stored,) = stored_reports(fhir_emr, second)
    assert "0.2.0" in stored["conclusion"]
    assert report_versions(fhir_emr, second) == 1


def test_unchanged_content_is_not_queued_twice(endpoint):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")

    again = outbox_enqueue_report(study=result.study, finding="ich")

    assert again == []
    assert OutboxMessage.objects.count() == 1


def test_backfill_queues_current_results_an_endpoint_never_had(endpoint, fhir_emr):
    earlier = [make_result(), make_result()]
    outbox_enqueue_report(study=earlier[0].study, finding="ich")
    late = FhirEndpoint.objects.create(name="late", base_url=fhir_emr.base_url, timeout_seconds=5)

    call_command("triage_outbox", "--once", "--backfill")

    assert OutboxMessage.objects.filter(endpoint=late).count() == 2
    assert OutboxMessage.objects.filter(endpoint=endpoint).count() == 2
    assert set(OutboxMessage.objects.values_list("state", flat=True)) == {"sent"}
    for result in earlier:
        assert len(stored_reports(fhir_emr, result)) == 1


def test_an_unchanged_delivered_report_is_not_amended(endpoint, fhir_emr):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    outbox_deliver_due(limit=10)

    again = outbox_enqueue_report(study=result.study, finding="ich")
    retracted = outbox_retract(study=result.study, finding="ich", reason="duplicate study")
    retracted_again = outbox_retract(study=result.study, finding="ich", reason="duplicate study")

    assert again == []
    assert [m.report_status for m in retracted] == ["entered-in-error"]
    assert retracted_again == []


def test_no_current_result_queues_nothing(endpoint):
    study = StudyFactory()

    assert outbox_enqueue_report(study=study, finding="lvo") == []


# ---------------------------------------------------------------------------------------------------------------
# Amendments


def test_amendment_replaces_the_report_rather_than_adding_one(endpoint, fhir_emr):
    result = make_result(score=0.4)
    outbox_enqueue_report(study=result.study, finding="ich")
    outbox_deliver_due(limit=10)
    rerun(result, threshold=0.3)  # a threshold change flips the finding

    (message,) = outbox_enqueue_report(study=result.study, finding="ich", reason="threshold")
    outbox_deliver_due(limit=10)

    assert (message.report_status, message.report_version) == ("amended", 2)
    (stored,) = stored_reports(fhir_emr, result)
    assert stored["status"] == "amended"
    assert "suspected (score 0.40, threshold 0.30" in stored["conclusion"]
    assert report_versions(fhir_emr, result) == 2
    assert fhir_emr.search("Observation", code=f"{fhir.CODE_SYSTEM}|ich")["total"] == 1


def test_radiologist_disagreement_marks_the_report_corrected(endpoint, fhir_emr, radiologist):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    outbox_deliver_due(limit=10)
    Feedback.objects.create(result=result, user=radiologist, verdict="disagree", model_version=result.model_version)

    (message,) = outbox_enqueue_report(study=result.study, finding="ich", reason="radiologist_disagrees")
    outbox_deliver_due(limit=10)

    (stored,) = stored_reports(fhir_emr, result)
    assert message.report_status == stored["status"] == "corrected"
    assert "radiologist has marked this AI finding as incorrect" in stored["conclusion"]


def test_disagreement_before_the_first_delivery_is_in_the_first_report(endpoint, fhir_emr, radiologist):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    Feedback.objects.create(result=result, user=radiologist, verdict="disagree", model_version=result.model_version)

    (message,) = outbox_enqueue_report(study=result.study, finding="ich", reason="radiologist_disagrees")
    outbox_deliver_due(limit=10)

    (stored,) = stored_reports(fhir_emr, result)
    assert message.report_status == stored["status"] == "preliminary"
    assert "radiologist has marked this AI finding as incorrect" in stored["conclusion"]


def test_retraction_marks_report_and_observation_entered_in_error(endpoint, fhir_emr):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    outbox_deliver_due(limit=10)

    outbox_retract(study=result.study, finding="ich", reason="wrong patient")
    outbox_deliver_due(limit=10)

    (stored,) = stored_reports(fhir_emr, result)
    observation_id = stored["result"][0]["reference"].split("/")[1]
    assert stored["status"] == "entered-in-error"
    assert fhir_emr.read("Observation", observation_id).json()["status"] == "entered-in-error"


def test_retracting_a_report_never_sent_sends_nothing(endpoint, fhir_emr):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")

    assert outbox_retract(study=result.study, finding="ich", reason="wrong study") == []

    assert set(OutboxMessage.objects.values_list("state", flat=True)) == {"superseded"}
    assert outbox_deliver_due(limit=10).claimed == 0


# ---------------------------------------------------------------------------------------------------------------
# Outages, retries and dead letters


def test_every_report_arrives_exactly_once_after_the_emr_was_down_and_restarted(endpoint, fhir_emr):
    results = [make_result(score=0.2 * i) for i in range(1, 5)]
    for result in results:
        outbox_enqueue_report(study=result.study, finding="ich")
    fhir_emr.stop()
    try:
        down = outbox_deliver_due(limit=10)
    finally:
        fhir_emr.start()
    make_due()

    up = outbox_deliver_due(limit=10)
    again = outbox_deliver_due(limit=10)

    assert (down.claimed, down.retried, down.sent) == (4, 4, 0)
    assert (up.sent, again.claimed) == (4, 0)
    for result in results:
        assert len(stored_reports(fhir_emr, result)) == 1
        assert report_versions(fhir_emr, result) == 1
    assert all(m.attempts == 2 for m in OutboxMessage.objects.all())


def test_a_closed_port_is_a_network_error_to_retry(db, settings):
    settings.TRIAGE_FHIR_BASE_URL = None
    FhirEndpoint.objects.create(name="nowhere", base_url=f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")

    summary = outbox_deliver_due(limit=10)

    message = OutboxMessage.objects.get()
    assert summary.retried == 1
    assert message.state == "pending"
    assert message.last_error.startswith("Network error")
    assert message.next_attempt_at > timezone.now()


@pytest.mark.parametrize("status", [503, 429])
def test_retryable_answers_wait_at_least_retry_after(endpoint, fhir_emr, status):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    fhir_emr.control(fail_next=1, status=status, retry_after=120)

    before = timezone.now()
    outbox_deliver_due(limit=10)

    message = OutboxMessage.objects.get()
    assert (message.state, message.last_status_code) == ("pending", status)
    assert message.next_attempt_at >= before + timedelta(seconds=120)
    make_due()
    assert outbox_deliver_due(limit=10).sent == 1
    assert len(stored_reports(fhir_emr, result)) == 1


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    delays = [backoff_seconds(n) for n in range(1, 12)]

    assert 1.0 <= delays[0] <= 2.0
    assert 8.0 <= delays[3] <= 16.0
    assert max(delays) <= 600.0
    assert len({round(backoff_seconds(6), 6) for _ in range(20)}) > 1


def test_a_400_lands_in_the_dead_letter_with_the_servers_operation_outcome(endpoint, fhir_emr):
    endpoint.fhir_version = "R5"  # an R5 report at an R4 server: the server refuses R5-only elements
    endpoint.save()
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")

    summary = outbox_deliver_due(limit=10)

    message = OutboxMessage.objects.get()
    assert summary.dead == 1
    assert (message.state, message.last_status_code) == ("dead", 400)
    assert message.operation_outcome["resourceType"] == "OperationOutcome"
    assert message.operation_outcome["issue"][0]["severity"] == "error"
    assert "Invalid additional property" in message.last_error
    make_due()
    assert outbox_deliver_due(limit=10).claimed == 0
    assert stored_reports(fhir_emr, result) == []


def test_requeue_after_fixing_the_endpoint_delivers_and_is_audited(endpoint, fhir_emr, admin_user):
    endpoint.fhir_version = "R5"
    endpoint.save()
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    outbox_deliver_due(limit=10)
    endpoint.fhir_version = "R4"
    endpoint.save()

    assert outbox_requeue(message=OutboxMessage.objects.get(), actor=admin_user)
    outbox_deliver_due(limit=10)

    assert OutboxMessage.objects.get().state == "sent"
    assert len(stored_reports(fhir_emr, result)) == 1
    assert AuditEvent.objects.filter(action="outbox.requeued", actor=admin_user).count() == 1


def test_admin_requeue_action_is_one_click(endpoint, fhir_emr, admin_user, client):
    endpoint.fhir_version = "R5"
    endpoint.save()
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    outbox_deliver_due(limit=10)
    message = OutboxMessage.objects.get()
    client.force_login(admin_user)

    page = client.get(f"/admin/triage/outboxmessage/{message.pk}/change/")
    response = client.post(
        "/admin/triage/outboxmessage/", {"action": "requeue", "_selected_action": [message.pk]}, follow=True
    )

    assert page.status_code == 200
    assert b"OperationOutcome" in page.content
    assert response.status_code == 200
    assert OutboxMessage.objects.get().state == "pending"
    assert AuditEvent.objects.filter(action="outbox.requeued").exists()


# ---------------------------------------------------------------------------------------------------------------
# Crashes and ordering


def test_a_lost_acknowledgement_is_resent_without_a_duplicate(endpoint, fhir_emr):
    endpoint.resolve_patient = False  # one request per attempt: the transaction itself
    endpoint.save()
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    fhir_emr.control(drop_next=1)  # the transaction is stored; its answer never arrives

    first = outbox_deliver_due(limit=10)
    make_due()
    second = outbox_deliver_due(limit=10)

    assert (first.retried, second.sent) == (1, 1)
    assert len(stored_reports(fhir_emr, result)) == 1
    assert report_versions(fhir_emr, result) == 2  # it did land the first time


def test_a_failing_patient_lookup_retries_the_whole_attempt(endpoint, fhir_emr):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    fhir_emr.control(fail_next=1, status=503)

    summary = outbox_deliver_due(limit=10)

    assert summary.retried == 1
    assert stored_reports(fhir_emr, result) == []


def test_worker_killed_between_send_and_acknowledgement_does_not_duplicate(endpoint, fhir_emr):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    (claimed,) = _claim(limit=10, worker_id="doomed")
    assert _attempt(claimed).state == "sent"  # the EMR has it; the worker dies before recording that
    OutboxMessage.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    summary = outbox_deliver_due(limit=10, worker_id="survivor")

    assert summary.sent == 1
    assert len(stored_reports(fhir_emr, result)) == 1
    assert report_versions(fhir_emr, result) == 2  # written twice, to the same resource
    assert OutboxMessage.objects.get().attempts == 2


def test_crash_then_amendment_leaves_one_report_with_the_newest_content(endpoint, fhir_emr):
    result = make_result(score=0.9)
    outbox_enqueue_report(study=result.study, finding="ich")
    (claimed,) = _claim(limit=10, worker_id="doomed")
    _attempt(claimed)
    OutboxMessage.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    rerun(result, score=0.1, model_version="0.3.0")

    (newer,) = outbox_enqueue_report(study=result.study, finding="ich")
    outbox_deliver_due(limit=10)

    assert newer.report_status == "amended"  # the EMR may already hold version 1
    (stored,) = stored_reports(fhir_emr, result)
    assert stored["status"] == "amended"
    assert "0.3.0" in stored["conclusion"]
    assert list(OutboxMessage.objects.order_by("report_version").values_list("state", flat=True)) == [
        "superseded",
        "sent",
    ]


def test_a_newer_version_waits_while_an_older_one_is_in_flight(endpoint, fhir_emr):
    result = make_result(score=0.9)
    outbox_enqueue_report(study=result.study, finding="ich")
    (in_flight,) = _claim(limit=10, worker_id="slow-worker")
    rerun(result, score=0.2)
    outbox_enqueue_report(study=result.study, finding="ich")

    while_in_flight = outbox_deliver_due(limit=10)
    OutboxMessage.objects.filter(pk=in_flight.pk).update(lease_owner="", lease_expires_at=None)
    after = outbox_deliver_due(limit=10)

    assert while_in_flight.claimed == 0
    assert after.sent == 1
    (stored,) = stored_reports(fhir_emr, result)
    assert "not suspected" in stored["conclusion"]


def test_outbox_command_once_delivers_and_beats(endpoint, fhir_emr):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")

    call_command("triage_outbox", "--once")

    assert OutboxMessage.objects.get().state == "sent"
    assert WorkerHeartbeat.objects.filter(kind="outbox").exists()


# ---------------------------------------------------------------------------------------------------------------
# Authentication


class FakeEmr:
    """A loopback token endpoint and FHIR base that record what clients send; checks SMART client assertions."""

    def __init__(self, public_key=None, algorithm: str = "RS384", fhir_status: int = 200) -> None:
        self.public_key, self.algorithm, self.fhir_status = public_key, algorithm, fhir_status
        self.authorizations: list[str] = []
        self.token_requests = 0
        self.assertion_errors: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self):
        emr = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"resourceType": "Bundle", "type": "searchset", "total": 0})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/token":
                    self._send(*emr.token(parse_qs(body.decode())))
                    return
                emr.authorizations.append(self.headers.get("Authorization", ""))
                entries = [{"response": {"status": "200 OK"}} for _ in json.loads(body)["entry"]]
                self._send(
                    emr.fhir_status, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
                )

        return Handler

    def token(self, form: dict) -> tuple[int, dict]:
        self.token_requests += 1
        try:
            assert form["grant_type"] == ["client_credentials"]
            assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
            assertion = form["client_assertion"][0]
            assert jwt.get_unverified_header(assertion)["kid"] == "key-1"
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=[self.algorithm],
                audience=f"{self.url}/token",
                options={"require": ["exp", "jti", "iss", "sub"]},
            )
            assert claims["iss"] == claims["sub"] == "triage-client"
        except (AssertionError, KeyError, jwt.PyJWTError) as err:
            self.assertion_errors.append(repr(err))
            return 401, {"error": "invalid_client"}
        return 200, {"access_token": f"access-{self.token_requests}", "expires_in": 300, "token_type": "bearer"}

    def __enter__(self) -> FakeEmr:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    fhirclient.token_cache_clear()
    yield
    fhirclient.token_cache_clear()


def _auth_endpoint(emr: FakeEmr, **fields) -> FhirEndpoint:
    return FhirEndpoint.objects.create(name="auth-emr", base_url=f"{emr.url}/fhir", timeout_seconds=5, **fields)


def test_bearer_token_comes_from_the_named_environment_variable(db, settings, monkeypatch, caplog):
    settings.TRIAGE_FHIR_BASE_URL = None
    monkeypatch.setenv("TRIAGE_EMR_TOKEN", "bearer-abc")
    with FakeEmr() as emr, caplog.at_level(logging.DEBUG):
        _auth_endpoint(emr, auth="bearer", secret_env="TRIAGE_EMR_TOKEN")
        result = make_result()
        outbox_enqueue_report(study=result.study, finding="ich")
        summary = outbox_deliver_due(limit=10)

    assert summary.sent == 1
    assert emr.authorizations == ["Bearer bearer-abc"]
    assert "bearer-abc" not in caplog.text


def test_basic_auth_uses_username_and_password_from_the_environment(db, settings, monkeypatch):
    settings.TRIAGE_FHIR_BASE_URL = None
    monkeypatch.setenv("TRIAGE_EMR_PASSWORD", "pa55")
    with FakeEmr() as emr:
        _auth_endpoint(emr, auth="basic", username="triage", secret_env="TRIAGE_EMR_PASSWORD")
        result = make_result()
        outbox_enqueue_report(study=result.study, finding="ich")
        outbox_deliver_due(limit=10)

    assert emr.authorizations == ["Basic dHJpYWdlOnBhNTU="]


def test_a_missing_secret_is_a_dead_letter_that_names_the_variable(db, settings, monkeypatch):
    settings.TRIAGE_FHIR_BASE_URL = None
    monkeypatch.delenv("TRIAGE_EMR_TOKEN", raising=False)
    with FakeEmr() as emr:
        _auth_endpoint(emr, auth="bearer", secret_env="TRIAGE_EMR_TOKEN")
        result = make_result()
        outbox_enqueue_report(study=result.study, finding="ich")
        outbox_deliver_due(limit=10)

    message = OutboxMessage.objects.get()
    assert message.state == "dead"
    assert "TRIAGE_EMR_TOKEN" in message.last_error
    assert emr.authorizations == []


def _pem(private_key) -> str:
    return private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS384"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    ],
)
def test_smart_backend_services_signs_an_assertion_and_caches_the_token(
    db, settings, monkeypatch, caplog, make_key, algorithm
):
    settings.TRIAGE_FHIR_BASE_URL = None
    key = make_key()
    monkeypatch.setenv("TRIAGE_EMR_PRIVATE_KEY", _pem(key))
    with FakeEmr(public_key=key.public_key(), algorithm=algorithm) as emr, caplog.at_level(logging.DEBUG):
        _auth_endpoint(
            emr,
            auth="smart",
            client_id="triage-client",
            token_url=f"{emr.url}/token",
            secret_env="TRIAGE_EMR_PRIVATE_KEY",
            jwt_key_id="key-1",
        )
        for _ in range(2):
            result = make_result()
            outbox_enqueue_report(study=result.study, finding="ich")
            outbox_deliver_due(limit=10)

    assert emr.assertion_errors == []
    assert emr.token_requests == 1
    assert emr.authorizations == ["Bearer access-1", "Bearer access-1"]
    assert "access-1" not in caplog.text


def test_a_401_from_the_emr_drops_the_cached_token_and_retries(db, settings, monkeypatch):
    settings.TRIAGE_FHIR_BASE_URL = None
    key = ec.generate_private_key(ec.SECP384R1())
    monkeypatch.setenv("TRIAGE_EMR_PRIVATE_KEY", _pem(key))
    with FakeEmr(public_key=key.public_key(), algorithm="ES384", fhir_status=401) as emr:
        _auth_endpoint(
            emr,
            auth="smart",
            client_id="triage-client",
            token_url=f"{emr.url}/token",
            secret_env="TRIAGE_EMR_PRIVATE_KEY",
            jwt_key_id="key-1",
        )
        result = make_result()
        outbox_enqueue_report(study=result.study, finding="ich")
        outbox_deliver_due(limit=10)
        emr.fhir_status = 200
        make_due()
        outbox_deliver_due(limit=10)

    assert emr.token_requests == 2
    assert emr.authorizations == ["Bearer access-1", "Bearer access-2"]
    assert OutboxMessage.objects.get().state == "sent"


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_send_each_message_once(fhir_emr, settings):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no row locks: one writer at a time")
    settings.TRIAGE_FHIR_BASE_URL = None
    FhirEndpoint.objects.create(name="emr", base_url=fhir_emr.base_url, resolve_patient=False, timeout_seconds=5)
    results = [make_result() for _ in range(24)]
    for result in results:
        outbox_enqueue_report(study=result.study, finding="ich")
    sent: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def worker(name: str) -> None:
        try:
            start.wait(timeout=10)
            while (summary := outbox_deliver_due(limit=4, worker_id=name)).claimed:
                sent.extend(summary.message_ids)
        except BaseException as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(sent) == sorted(OutboxMessage.objects.values_list("pk", flat=True))
    assert fhir_emr.control()["requests"] == len(results)
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}


# ---------------------------------------------------------------------------------------------------------------
# Reports that cannot be built, answers that cannot be read, and the attempt limit


@dataclass
class _Output:
    """What a model runner returns, as far as results_record reads it."""

    finding: str = "ich"
    model_name: str = "ich"
    model_version: str = "0.1.0"
    score: float = 0.9
    threshold: float = 0.5
    positive: bool = True
    key_slice: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


def test_a_report_that_cannot_be_built_is_a_dead_letter_and_the_result_commits(endpoint, monkeypatch):
    from triage.ingest.services import results_record
    from worklist.models import WorklistItem

    study = StudyFactory(study_instance_uid="1.2.826.0.1.3680043.9.7_42")
    series = SeriesFactory(study=study, series_instance_uid=f"{study.study_instance_uid}.1", series_number=-1)

    def unbuildable(**kwargs) -> dict:
        raise fhir.ReportBuildError("ImagingStudy is not valid FHIR R4: series.0.number, series.0.uid")

    monkeypatch.setattr(fhir, "report_bundle_build", unbuildable)

    with transaction.atomic():  # the worker's transaction around results_record
        results_record(job=JobFactory(study=study), outputs=[(series, _Output(), None)])

    message = OutboxMessage.objects.get()
    assert (message.state, message.payload, message.attempts) == ("dead", {}, 0)
    assert message.last_error == "fhir_invalid: ImagingStudy is not valid FHIR R4: series.0.number, series.0.uid"
    assert TriageResult.objects.filter(study=study, is_current=True).count() == 1
    assert WorklistItem.objects.get(study=study).critical


def test_a_dead_letter_that_still_cannot_be_built_is_not_requeued(endpoint, admin_user, monkeypatch):
    result = make_result()

    def unbuildable(**kwargs) -> dict:
        raise fhir.ReportBuildError("ImagingStudy is not valid FHIR R4: series.0.uid")

    monkeypatch.setattr(fhir, "report_bundle_build", unbuildable)
    outbox_enqueue_report(study=result.study, finding="ich")

    requeued = outbox_requeue(message=OutboxMessage.objects.get(), actor=admin_user)

    message = OutboxMessage.objects.get()
    assert (requeued, message.state, message.last_error) == (
        False,
        "dead",
        "fhir_invalid: ImagingStudy is not valid FHIR R4: series.0.uid",
    )


class MalformedEmr:
    """A loopback EMR that answers every transaction with a fixed status and body; patient searches find nobody."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/fhir+json") -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self):
        emr = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, b'{"resourceType": "Bundle", "type": "searchset", "total": 0}', emr.content_type)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(emr.status, emr.body, emr.content_type)

        return Handler

    def __enter__(self) -> MalformedEmr:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _one_entry(response: object) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [response] * 5}).encode()


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, b"<html><body>502 Bad Gateway</body></html>", "Unreadable answer from the EMR: not a transaction"),
        (200, b"\xff\xfe\x00garbage", "Unreadable answer from the EMR: not a transaction"),
        (200, b"[1, 2, 3]", "Unreadable answer from the EMR: not a transaction"),
        (200, b'{"resourceType": "Bundle", "type": "transaction-response"}', "a Bundle without entries"),
        (200, b'{"resourceType": "Bundle", "entry": []}', "a Bundle without entries"),
        (200, b'{"resourceType": "Bundle", "entry": "all good"}', "a Bundle without entries"),
        (200, b'{"resourceType": "Bundle", "entry": [{"response": {"status": "200 OK"}}]}', "1 entries for the 5"),
        (200, _one_entry("200 OK"), "an entry without a response"),
        (200, _one_entry({"response": ["200 OK"]}), "an entry without a response"),
        (200, _one_entry({"response": {"status": "500", "outcome": "boom"}}), "Entry answered 500"),
        (503, b'{"resourceType": "OperationOutcome", "issue": "down for maintenance"}', "HTTP 503"),
        (502, b'{"resourceType": "OperationOutcome", "issue": [{"diagnostics": ["x"], "expression": "a"}]}', "['x']"),
    ],
)
def test_an_answer_that_cannot_be_read_is_retried_with_a_clear_error(db, settings, status, body, error):
    settings.TRIAGE_FHIR_BASE_URL = None
    with MalformedEmr(status, body) as emr:
        FhirEndpoint.objects.create(name="odd-emr", base_url=f"http://127.0.0.1:{emr.server.server_address[1]}")
        result = make_result()
        outbox_enqueue_report(study=result.study, finding="ich")
        summary = outbox_deliver_due(limit=10)

    message = OutboxMessage.objects.get()
    assert (summary.retried, message.state, message.lease_owner, message.lease_expires_at) == (1, "pending", "", None)
    assert error in message.last_error
    assert message.next_attempt_at > timezone.now()


def test_a_patient_search_answer_of_the_wrong_shape_keeps_the_logical_reference(endpoint, fhir_emr, monkeypatch):
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    real_request = fhirclient.fhir_request

    def odd_search(endpoint, method, path, **kwargs):
        response = real_request(endpoint, method, path, **kwargs)
        if method == "GET":
            response._content = b'{"resourceType": "Bundle", "entry": [1, {"resource": "Patient/1"}]}'
        return response

    monkeypatch.setattr(fhirclient, "fhir_request", odd_search)

    assert outbox_deliver_due(limit=10).sent == 1


def test_an_error_inside_this_app_releases_the_lease_and_retries(endpoint, monkeypatch, caplog):
    from triage.fhir import delivery

    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")

    def broken(endpoint, bundle):
        raise KeyError("entry")

    monkeypatch.setattr(delivery, "_with_patient_reference", broken)
    summary = outbox_deliver_due(limit=10)

    message = OutboxMessage.objects.get()
    assert (summary.retried, message.state, message.lease_owner) == (1, "pending", "")
    assert message.last_error == "Internal error: KeyError"


def test_retries_stop_after_the_attempt_limit_with_the_last_error(endpoint, fhir_emr, settings):
    settings.TRIAGE_OUTBOX_MAX_ATTEMPTS = 3
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    fhir_emr.control(down=True)
    try:
        summaries = []
        for _ in range(4):
            summaries.append(outbox_deliver_due(limit=10))
            make_due()
    finally:
        fhir_emr.control(down=False)

    message = OutboxMessage.objects.get()
    assert [(s.retried, s.dead) for s in summaries] == [(1, 0), (1, 0), (0, 1), (0, 0)]
    assert (message.state, message.attempts, message.last_status_code) == ("dead", 3, 503)
    assert message.last_error.endswith("(gave up after 3 attempts)")


def test_a_401_that_persists_goes_to_the_dead_letter_after_the_attempt_limit(db, settings, monkeypatch):
    settings.TRIAGE_FHIR_BASE_URL = None
    settings.TRIAGE_OUTBOX_MAX_ATTEMPTS = 2
    monkeypatch.setenv("TRIAGE_EMR_TOKEN", "revoked")
    with FakeEmr(fhir_status=401) as emr:
        _auth_endpoint(emr, auth="bearer", secret_env="TRIAGE_EMR_TOKEN")
        result = make_result()
        outbox_enqueue_report(study=result.study, finding="ich")
        outbox_deliver_due(limit=10)
        make_due()
        outbox_deliver_due(limit=10)

    message = OutboxMessage.objects.get()
    assert (message.state, message.last_status_code, len(emr.authorizations)) == ("dead", 401, 2)


def test_a_requeued_dead_letter_counts_its_attempts_again(endpoint, fhir_emr, settings, admin_user):
    settings.TRIAGE_OUTBOX_MAX_ATTEMPTS = 3
    result = make_result()
    outbox_enqueue_report(study=result.study, finding="ich")
    fhir_emr.control(fail_next=3, status=503)
    for _ in range(3):
        outbox_deliver_due(limit=10)
        make_due()
    fhir_emr.control(fail_next=1, status=503)

    outbox_requeue(message=OutboxMessage.objects.get(), actor=admin_user)
    first = outbox_deliver_due(limit=10)
    make_due()
    second = outbox_deliver_due(limit=10)

    assert (first.retried, second.sent, OutboxMessage.objects.get().state) == (1, 1, "sent")

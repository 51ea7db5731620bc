"""The worklist REST API (CONTRACT.md, "HTTP API")."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from triage.models import AuditEvent
from worklist import services

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_worklist_lists_items_in_reading_order_with_ranks(radiologist_client, make_study):
    low, high = make_study(ich=0.2), make_study(ich=0.97)
    body = radiologist_client.get("/api/v1/worklist/").json()
    rows = [(r["study_instance_uid"], r["rank"]) for r in body["results"]]
    assert rows == [(high.study.study_instance_uid, 1), (low.study.study_instance_uid, 2)]


def test_worklist_item_has_contract_fields(radiologist_client, make_study):
    make_study(ich=0.93, png=PNG)
    item = radiologist_client.get("/api/v1/worklist/").json()["results"][0]
    required = {"study_instance_uid", "accession_number", "rank", "priority", "status", "claimed_by", "received_at"}
    assert required <= item.keys()
    assert item["findings"][0] | {"id": 0, "key_image_url": None} == {
        "id": 0,
        "model": "ich",
        "model_version": "0.1.0",
        "finding": "ich",
        "finding_label": "Intracranial hemorrhage",
        "score": 0.93,
        "threshold": 0.5,
        "positive": True,
        "in_validated_range": True,
        "input_check_reasons": [],
        "advisory": True,
        "key_image_url": None,
    }
    assert (item["priority"], item["critical"], item["acknowledged"]) == ("critical", True, False)
    assert item["key_image_url"].endswith("/key-image.png")


def test_worklist_snapshot_reports_event_sequence(radiologist_client, make_study):
    make_study()
    make_study()
    assert radiologist_client.get("/api/v1/worklist/").json()["seq"] == 2


def test_worklist_paginates_with_continuing_ranks(radiologist_client, make_study):
    for _ in range(3):
        make_study()
    body = radiologist_client.get("/api/v1/worklist/?limit=2&offset=2").json()
    assert (body["count"], [r["rank"] for r in body["results"]]) == (3, [3])


def test_worklist_next_link_follows_the_rows_not_the_count(radiologist_client, make_study):
    for _ in range(3):
        make_study()
    first = radiologist_client.get("/api/v1/worklist/?limit=2").json()
    last = radiologist_client.get(first["next"]).json()
    assert (first["count_exact"], [r["rank"] for r in last["results"]], last["next"]) == (True, [3], None)
    assert radiologist_client.get("/api/v1/worklist/?limit=3").json()["next"] is None


def test_worklist_count_stops_at_its_bound_but_paging_goes_on(radiologist_client, make_study, monkeypatch):
    from worklist import selectors

    monkeypatch.setattr(selectors, "COUNT_EXACT_UP_TO", 2)
    for _ in range(4):
        make_study()
    first = radiologist_client.get("/api/v1/worklist/?limit=2").json()
    second = radiologist_client.get(first["next"]).json()
    assert (first["count"], first["count_exact"]) == (2, False)
    assert ([r["rank"] for r in second["results"]], second["next"]) == ([3, 4], None)


def test_worklist_filters_by_finding(radiologist_client, make_study):
    make_study(ich=0.9)
    lvo = make_study(lvo=0.8)
    body = radiologist_client.get("/api/v1/worklist/?finding=lvo").json()
    assert [r["study_instance_uid"] for r in body["results"]] == [lvo.study.study_instance_uid]


def test_worklist_filters_claimed_by_me(radiologist_client, radiologist, rad2, make_study):
    mine, theirs = make_study(), make_study()
    services.worklist_item_claim(study_instance_uid=mine.study.study_instance_uid, user=radiologist)
    services.worklist_item_claim(study_instance_uid=theirs.study.study_instance_uid, user=rad2)
    body = radiologist_client.get("/api/v1/worklist/?claimed_by=me").json()
    assert [r["claimed_by"] for r in body["results"]] == ["rad1"]


def test_worklist_filters_by_status_and_modality(radiologist_client, radiologist, make_study):
    item = make_study(modalities="CT")
    make_study(modalities="MR")
    services.worklist_item_report(study_instance_uid=item.study.study_instance_uid, user=radiologist)
    assert radiologist_client.get("/api/v1/worklist/?modality=CT").json()["count"] == 0
    assert radiologist_client.get("/api/v1/worklist/?status=reported&modality=CT").json()["count"] == 1


def test_worklist_rejects_unknown_filter_value(radiologist_client):
    response = radiologist_client.get("/api/v1/worklist/?status=lost")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_input")


def test_worklist_shows_starving_study_first(radiologist_client, make_study, settings):
    make_study(ich=0.99)
    old = make_study(received_at=timezone.now() - timedelta(minutes=settings.TRIAGE_MAX_WAIT_MINUTES + 1))
    first = radiologist_client.get("/api/v1/worklist/").json()["results"][0]
    assert (first["study_instance_uid"], first["starving"]) == (old.study.study_instance_uid, True)


def test_claim_then_second_claim_gets_409(radiologist_client, api_client, rad2, make_study):
    item = make_study()
    url = f"/api/v1/studies/{item.study.study_instance_uid}/claim/"
    assert radiologist_client.post(url).json()["claimed_by"] == "rad1"
    api_client.force_authenticate(rad2)
    response = api_client.post(url)
    assert (response.status_code, response.json()["error"]["code"]) == (409, "already_claimed")


def test_release_report_acknowledge_and_pin(radiologist_client, make_study):
    item = make_study(ich=0.9)
    base = f"/api/v1/studies/{item.study.study_instance_uid}"
    radiologist_client.post(f"{base}/claim/")
    assert radiologist_client.post(f"{base}/release/").json()["status"] == "waiting"
    assert radiologist_client.post(f"{base}/acknowledge/").json()["acknowledged_by"] == "rad1"
    assert radiologist_client.post(f"{base}/pin/", {"level": 0}, format="json").json()["priority"] == "routine"
    assert radiologist_client.post(f"{base}/report/").json()["status"] == "reported"


def test_pin_rejects_out_of_range_level(radiologist_client, make_study):
    item = make_study()
    response = radiologist_client.post(f"/api/v1/studies/{item.study.study_instance_uid}/pin/", {"level": 9})
    assert response.status_code == 400


def test_action_on_unknown_study_is_404(radiologist_client):
    response = radiologist_client.post("/api/v1/studies/1.2.999/claim/")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_study_detail_has_series_findings_and_is_audited(radiologist_client, make_study):
    item = make_study(ich=0.9, png=PNG)
    body = radiologist_client.get(f"/api/v1/studies/{item.study.study_instance_uid}/").json()
    assert (len(body["series"]), body["findings"][0]["model_version"], body["item"]["rank"]) == (1, "0.1.0", None)
    assert AuditEvent.objects.filter(action="study.view").count() == 1


def test_feedback_post_records_verdict_and_model_version(radiologist_client, make_study):
    result = make_study(ich=0.9).study.results.get()
    response = radiologist_client.post(
        f"/api/v1/results/{result.pk}/feedback/", {"verdict": "agree", "comment": "clear"}, format="json"
    )
    assert response.json() | {"updated_at": None} == {
        "result_id": result.pk,
        "verdict": "agree",
        "comment": "clear",
        "model": "ich",
        "model_version": "0.1.0",
        "updated_at": None,
    }


def test_feedback_shows_in_study_detail(radiologist_client, make_study):
    item = make_study(ich=0.9)
    result = item.study.results.get()
    radiologist_client.post(f"/api/v1/results/{result.pk}/feedback/", {"verdict": "unsure"}, format="json")
    body = radiologist_client.get(f"/api/v1/studies/{item.study.study_instance_uid}/").json()
    assert body["findings"][0]["my_verdict"] == "unsure"


def test_key_image_is_png_for_logged_in_user(radiologist_client, make_study):
    result = make_study(ich=0.9, png=PNG).study.results.get()
    response = radiologist_client.get(f"/api/v1/results/{result.pk}/key-image.png")
    assert (response.status_code, response["Content-Type"], response.content) == (200, "image/png", PNG)


def test_key_image_needs_login(api_client, make_study):
    result = make_study(ich=0.9, png=PNG).study.results.get()
    assert api_client.get(f"/api/v1/results/{result.pk}/key-image.png").status_code in (401, 403)


def test_viewer_url_follows_configured_template(radiologist_client, make_study, settings):
    settings.TRIAGE_VIEWER_URL = "http://ohif/viewer?StudyInstanceUIDs={study_instance_uid}"
    item = make_study()
    url = radiologist_client.get("/api/v1/worklist/").json()["results"][0]["viewer_url"]
    assert url == f"http://ohif/viewer?StudyInstanceUIDs={item.study.study_instance_uid}"


def test_schema_lists_worklist_operations(radiologist_client):
    schema = radiologist_client.get("/api/v1/schema/?format=json").json()
    assert {"/api/v1/worklist/", "/api/v1/studies/{study_instance_uid}/claim/"} <= schema["paths"].keys()


def test_token_authenticated_client_reads_worklist(api_client, radiologist, make_study):
    make_study()
    token = api_client.post(
        "/api/v1/auth/token/", {"username": "rad1", "password": "correct-horse-battery"}, format="json"
    ).json()["token"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api_client.get("/api/v1/worklist/").json()["count"] == 1


def test_hand_built_payload_matches_declared_fields(radiologist_client, make_study):
    from worklist.serializers import FindingSerializer, WorklistItemSerializer

    make_study(ich=0.9)
    item = radiologist_client.get("/api/v1/worklist/").json()["results"][0]
    assert set(item) == set(WorklistItemSerializer().fields)
    assert set(item["findings"][0]) == set(FindingSerializer().fields)


def test_pages_across_the_starving_tier_follow_reading_order(radiologist_client, make_study, settings):
    old = timezone.now() - timedelta(minutes=settings.TRIAGE_MAX_WAIT_MINUTES + 10)
    starving = [make_study(received_at=old - timedelta(minutes=n)) for n in range(2)]
    fresh = [make_study(ich=0.9), make_study()]
    expected = [i.study.study_instance_uid for i in (starving[1], starving[0], fresh[0], fresh[1])]
    pages = [radiologist_client.get(f"/api/v1/worklist/?limit=3&offset={o}").json() for o in (0, 3)]
    listed = [r["study_instance_uid"] for page in pages for r in page["results"]]
    assert (listed, pages[0]["count"], pages[1]["results"][0]["rank"]) == (expected, 4, 4)


# ---------------------------------------------------------------------------------------------------------------
# The patient on the worklist


def test_worklist_item_shows_the_patient_and_the_order_from_the_headers(radiologist_client, make_study):
    when = timezone.now().replace(microsecond=0)
    make_study(
        patient_name="Doe^Jane^Q",
        patient_id="MRN123",
        patient_age_years=61,
        patient_sex="F",
        study_datetime=when,
        institution="General Hospital",
        department="Emergency",
        referring_physician="House^Gregory",
    )
    item = radiologist_client.get("/api/v1/worklist/").json()["results"][0]
    shown = {k: item[k] for k in ("patient_name", "patient_id", "patient_age", "patient_sex")}
    assert shown == {"patient_name": "Doe, Jane Q", "patient_id": "MRN123", "patient_age": 61, "patient_sex": "F"}
    assert (item["institution"], item["department"], item["referring_physician"]) == (
        "General Hospital",
        "Emergency",
        "House, Gregory",
    )
    assert item["study_datetime"] == when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_worklist_filters_by_department_in_any_case(radiologist_client, make_study):
    emergency = make_study(department="Emergency")
    make_study(department="Outpatients")
    body = radiologist_client.get("/api/v1/worklist/?department=emergency").json()
    assert [r["study_instance_uid"] for r in body["results"]] == [emergency.study.study_instance_uid]


def test_teaching_screens_show_initials_instead_of_names(radiologist_client, make_study, settings):
    settings.TRIAGE_HIDE_PATIENT_NAMES = True
    make_study(patient_name="Doe^Jane-Marie")
    assert radiologist_client.get("/api/v1/worklist/").json()["results"][0]["patient_name"] == "D. J. M."


def test_schema_documents_the_department_filter(radiologist_client):
    schema = radiologist_client.get("/api/v1/schema/?format=json").json()
    parameters = {p["name"] for p in schema["paths"]["/api/v1/worklist/"]["get"]["parameters"]}
    assert {"department", "institution"} <= parameters

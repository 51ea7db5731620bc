"""The advisory report as FHIR: what it contains, that it validates (R4 and R5), and what the EMR stores."""

from __future__ import annotations

import re

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from tests.factories import ResultFactory, SeriesFactory, StudyFactory
from tests.triage.fhir_helpers import PATIENT_SYSTEM
from triage.fhir import resources as fhir
from triage.fhir.delivery import outbox_deliver_due
from triage.fhir.outbox import outbox_enqueue_report

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _spec(fhir_version: str = "R4", status: str = "preliminary") -> fhir.ReportSpec:
    from django.utils import timezone

    return fhir.ReportSpec(
        status=status,
        reason="result",
        fhir_version=fhir_version,
        patient_id_system=PATIENT_SYSTEM,
        recorded_at=timezone.now(),
    )


@pytest.fixture
def lvo_result(db):
    study = StudyFactory(study_description="CTA HEAD", patient_id="MRN-1001")
    series = SeriesFactory(study=study, routed_model="lvo")
    return ResultFactory(
        series=series,
        finding="lvo",
        model_name="lvo3d",
        model_version="1.2.0",
        score=0.81,
        threshold=0.4,
        details={"key_slice": 17, "side": "left"},
    )


def test_negative_result_reports_no_side(lvo_result):
    lvo_result.score, lvo_result.positive = 0.1, False
    observation = fhir.bundle_resource(
        fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec()), "Observation"
    )
    codes = {c["code"]["coding"][0]["code"] for c in observation["component"]}
    assert codes == {"score", "threshold", "key-slice"}


def test_r4_report_is_a_preliminary_radiology_report_labelled_as_ai(lvo_result):
    bundle = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec())

    report = fhir.bundle_resource(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
        "code": "RAD",
        "display": "Radiology",
    }
    assert report["meta"]["security"][0]["code"] == "AIAST"
    assert report["subject"]["identifier"] == {"system": PATIENT_SYSTEM, "value": "MRN-1001"}
    assert {
        "use": "secondary",
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{lvo_result.study.study_instance_uid}",
    } in report["identifier"]
    assert report["imagingStudy"][0]["reference"].startswith("ImagingStudy/")
    assert "not a diagnosis" in report["conclusion"]
    assert "AI-generated" in report["conclusion"]


def test_a_report_on_a_study_outside_the_validated_range_says_so(lvo_result):
    lvo_result.details["input_check"] = {"in_range": False, "reasons": ["pixel size (mm) 1.2 is above 0.8"]}
    bundle = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec())

    report = fhir.bundle_resource(bundle, "DiagnosticReport")

    assert fhir.OUTSIDE_VALIDATED_RANGE in report["conclusion"]
    assert "not a diagnosis" in report["conclusion"]


def test_observation_carries_presence_score_threshold_study_and_model(lvo_result):
    bundle = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec())

    observation = fhir.bundle_resource(bundle, "Observation")
    device = fhir.bundle_resource(bundle, "Device")
    study = fhir.bundle_resource(bundle, "ImagingStudy")
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "52101004"  # present
    values = {c["code"]["coding"][0]["code"]: c for c in observation["component"]}
    assert values["score"]["valueQuantity"]["value"] == pytest.approx(0.81)
    assert values["threshold"]["valueQuantity"]["value"] == pytest.approx(0.4)
    assert values["side"]["valueString"] == "left"
    assert observation["derivedFrom"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert observation["device"] == {"reference": f"Device/{device['id']}"}
    assert device["deviceName"][0]["name"] == "lvo3d"
    assert device["version"][0]["value"] == "1.2.0"
    assert device["manufacturer"]


def test_provenance_names_the_model_as_author_of_the_report(lvo_result):
    bundle = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec())

    provenance = fhir.bundle_resource(bundle, "Provenance")
    report = fhir.bundle_resource(bundle, "DiagnosticReport")
    device = fhir.bundle_resource(bundle, "Device")
    assert {"reference": f"DiagnosticReport/{report['id']}"} in provenance["target"]
    assert provenance["agent"][0]["who"] == {"reference": f"Device/{device['id']}"}


def test_every_entry_is_a_put_to_a_deterministic_valid_id(lvo_result):
    first = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec())
    again = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec())

    for entry in first["entry"]:
        assert FHIR_ID.match(entry["resource"]["id"])
        assert entry["request"] == {
            "method": "PUT",
            "url": f"{entry['resource']['resourceType']}/{entry['resource']['id']}",
        }
    assert [e["request"] for e in first["entry"]] == [e["request"] for e in again["entry"]]
    assert fhir.content_hash(first) == fhir.content_hash(again)


@pytest.mark.parametrize("fhir_version", ["R4", "R5"])
def test_the_whole_bundle_validates_as_a_transaction(lvo_result, fhir_version):
    bundle = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec(fhir_version))

    fhir.resource_validate(bundle, fhir_version=fhir_version)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
        "Device",
        "ImagingStudy",
        "Observation",
        "DiagnosticReport",
        "Provenance",
    ]


def test_r5_report_uses_study_and_r5_device_name_and_validates(lvo_result):
    bundle = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec("R5"))

    report = fhir.bundle_resource(bundle, "DiagnosticReport")
    device = fhir.bundle_resource(bundle, "Device")
    assert "imagingStudy" not in report
    assert report["study"][0]["reference"].startswith("ImagingStudy/")
    assert device["name"][0]["value"] == "lvo3d"
    for entry in bundle["entry"]:
        fhir.resource_validate(entry["resource"], fhir_version="R5")


def test_an_element_unknown_to_r4_is_refused_before_sending(lvo_result):
    r5_report = fhir.bundle_resource(
        fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec("R5")), "DiagnosticReport"
    )

    with pytest.raises(fhir.ReportBuildError, match="study"):
        fhir.resource_validate(r5_report, fhir_version="R4")


def test_a_missing_required_element_is_refused(lvo_result):
    report = fhir.bundle_resource(
        fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec()), "DiagnosticReport"
    )
    del report["status"]

    with pytest.raises(fhir.ReportBuildError, match="status"):
        fhir.resource_validate(report, fhir_version="R4")


def test_delivered_report_is_stored_valid_and_found_by_study_identifier(endpoint, fhir_server, lvo_result):
    outbox_enqueue_report(study=lvo_result.study, finding="lvo")
    outbox_deliver_due(limit=10)

    uid = lvo_result.study.study_instance_uid
    found = fhir_server.search("DiagnosticReport", identifier=f"urn:dicom:uid|urn:oid:{uid}")
    assert found["total"] == 1
    stored = found["entry"][0]["resource"]
    DiagnosticReport.model_validate(stored)
    assert stored["id"] == fhir.report_id(study_instance_uid=uid, finding="lvo")
    observation = fhir_server.read("Observation", stored["result"][0]["reference"].split("/")[1]).json()
    Observation.model_validate(observation)
    assert fhir_server.search("ImagingStudy", identifier=f"urn:dicom:uid|urn:oid:{uid}")["total"] == 1


def test_delivered_report_is_found_by_patient_the_emr_knows(endpoint, fhir_server, lvo_result):
    patient = fhir_server_post_patient(fhir_server, system=PATIENT_SYSTEM, value="MRN-1001")
    outbox_enqueue_report(study=lvo_result.study, finding="lvo")
    outbox_deliver_due(limit=10)

    found = fhir_server.search("DiagnosticReport", subject=f"Patient/{patient['id']}")
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["subject"]["identifier"]["value"] == "MRN-1001"
    assert fhir_server.search("Observation", subject=f"Patient/{patient['id']}")["total"] == 1


def test_report_for_a_patient_unknown_to_the_emr_keeps_a_logical_reference(endpoint, fhir_server, lvo_result):
    outbox_enqueue_report(study=lvo_result.study, finding="lvo")
    outbox_deliver_due(limit=10)

    report_id = fhir.report_id(study_instance_uid=lvo_result.study.study_instance_uid, finding="lvo")
    stored = fhir_server.read("DiagnosticReport", report_id).json()
    assert "reference" not in stored["subject"]
    assert stored["subject"]["identifier"] == {"system": PATIENT_SYSTEM, "value": "MRN-1001"}


def test_reports_are_found_by_ai_security_label_and_category(endpoint, fhir_server, lvo_result):
    outbox_enqueue_report(study=lvo_result.study, finding="lvo")
    outbox_deliver_due(limit=10)

    labelled = fhir_server.search(
        "DiagnosticReport", _security="http://terminology.hl7.org/CodeSystem/v3-ObservationValue|AIAST"
    )
    radiology = fhir_server.search("DiagnosticReport", category="http://terminology.hl7.org/CodeSystem/v2-0074|RAD")
    assert labelled["total"] == 1
    assert radiology["total"] == 1


def fhir_server_post_patient(fhir_server, *, system: str, value: str) -> dict:
    import requests

    response = requests.post(
        f"{fhir_server.base_url}/Patient",
        json={"resourceType": "Patient", "identifier": [{"system": system, "value": value}]},
        headers={"Content-Type": "application/fhir+json"},
        timeout=5,
    )
    response.raise_for_status()
    return response.json()


def _odd_tag_result():
    """A series with SeriesNumber -1 in a study whose UID holds a character no DICOM UID may (seen from PACSes
    that mint their own UIDs)."""
    study = StudyFactory(study_instance_uid="1.2.826.0.1.3680043.9.7_42", patient_id="MRN-1002")
    series = SeriesFactory(study=study, series_instance_uid=f"{study.study_instance_uid}.1", series_number=-1)
    return ResultFactory(series=series, finding="ich", score=0.9, threshold=0.5)


@pytest.mark.parametrize("fhir_version", ["R4", "R5"])
def test_odd_dicom_tags_are_left_out_rather_than_losing_the_report(db, fhir_version):
    result = _odd_tag_result()

    bundle = fhir.report_bundle_build(study=result.study, result=result, spec=_spec(fhir_version))

    imaging_study = fhir.bundle_resource(bundle, "ImagingStudy")
    assert "series" not in imaging_study  # its UID is no FHIR id: the optional element is left out
    assert f"urn:oid:{result.study.study_instance_uid}" in str(imaging_study["identifier"])
    fhir.resource_validate(bundle, fhir_version=fhir_version)


def test_a_negative_series_number_is_left_out_and_the_series_kept(lvo_result):
    lvo_result.series.series_number = -1

    bundle = fhir.report_bundle_build(study=lvo_result.study, result=lvo_result, spec=_spec())

    (series,) = fhir.bundle_resource(bundle, "ImagingStudy")["series"]
    assert (series["uid"], "number" in series) == (lvo_result.series.series_instance_uid, False)


def test_a_report_with_odd_tags_reaches_the_emr(endpoint, fhir_server):
    result = _odd_tag_result()
    outbox_enqueue_report(study=result.study, finding="ich")

    summary = outbox_deliver_due(limit=10)

    assert summary.sent == 1

"""The advisory FHIR report for one study and one finding, as a transaction Bundle of PUTs to deterministic ids.

The resources and codes: docs/fhir.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from triage.core.exceptions import TriageError
from triage.models import Finding, ReportStatus, Series, Study, TriageResult

ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ct-triage:fhir")
CODE_SYSTEM = "urn:ct-triage:fhir:ai-triage"
DEVICE_ID_SYSTEM = "urn:ct-triage:fhir:model"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DICOM_MODALITY_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
MANUFACTURER = "ct-triage open-source project"
AI_SECURITY_LABEL = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
RADIOLOGY_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]
}
IMAGING_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }
    ]
}
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "2667000", "display": "Absent"}
FINDING_SNOMED = {
    Finding.ICH: {"system": SNOMED, "code": "1386000", "display": "Intracranial hemorrhage"},
    Finding.LVO: {"system": SNOMED, "code": "20059004", "display": "Cerebral artery occlusion"},
}
REPORT_STATUSES = tuple(ReportStatus.values)
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
UNSIGNED_INT_MAX = 2**31 - 1
ADVISORY = (
    "AI-generated advisory triage result, not a diagnosis. It only helps order the reading worklist; a radiologist "
    "reads every study and the radiologist's report is the result of record."
)


class ReportBuildError(TriageError):
    """The report does not validate as FHIR: a programming or data error, never sent."""

    code = "fhir_invalid"
    status = 500


@dataclass(frozen=True)
class ReportSpec:
    """What one version of a report says, beyond the study and the result it describes."""

    status: str
    reason: str
    fhir_version: str
    patient_id_system: str
    recorded_at: datetime
    note: str = ""  # said in the conclusion and on the Observation: a radiologist's dispute, a retraction's reason


def fhir_id(*parts: str) -> str:
    """A FHIR id ([A-Za-z0-9-.]{1,64}) that depends only on ``parts``: UUIDv5, 36 characters."""
    return str(uuid.uuid5(ID_NAMESPACE, "|".join(parts)))


def report_id(*, study_instance_uid: str, finding: str) -> str:
    return fhir_id("DiagnosticReport", study_instance_uid, finding)


def observation_id(*, study_instance_uid: str, finding: str) -> str:
    return fhir_id("Observation", study_instance_uid, finding)


def provenance_id(*, study_instance_uid: str, finding: str) -> str:
    return fhir_id("Provenance", study_instance_uid, finding)


def imaging_study_id(*, study_instance_uid: str) -> str:
    return fhir_id("ImagingStudy", study_instance_uid)


def device_id(*, model_name: str, model_version: str) -> str:
    return fhir_id("Device", model_name, model_version)


def report_identifier(*, study_instance_uid: str, finding: str) -> dict[str, str]:
    """The report's own business identifier: searchable, and the same on every EMR."""
    value = report_id(study_instance_uid=study_instance_uid, finding=finding)
    return {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{value}"}


def study_identifier(study_instance_uid: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_instance_uid}"}


def _device_ref(result: TriageResult) -> dict[str, str]:
    return {"reference": f"Device/{device_id(model_name=result.model_name, model_version=result.model_version)}"}


def _study_ref(study_instance_uid: str) -> dict[str, str]:
    return {"reference": f"ImagingStudy/{imaging_study_id(study_instance_uid=study_instance_uid)}"}


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


def _patient_reference(study: Study, system: str) -> dict[str, Any]:
    # A logical reference: the EMR owns its Patient resources; we know only the DICOM PatientID.
    if not study.patient_id:
        return {"type": "Patient", "display": "Patient ID not given in the DICOM study"}
    return {"type": "Patient", "identifier": {"system": system, "value": study.patient_id}}


def _quantity(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "1", "system": UCUM, "code": "1"}


def _local(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": CODE_SYSTEM, "code": code, "display": display}], "text": display}


def _finding_label(finding: str) -> str:
    return Finding(finding).label.lower()


def report_code(finding: str) -> dict[str, Any]:
    display = f"AI triage result: {_finding_label(finding)}"
    return _local(f"{finding}-triage", display)


def observation_code(finding: str) -> dict[str, Any]:
    codings = [
        {"system": CODE_SYSTEM, "code": finding, "display": Finding(finding).label},
        FINDING_SNOMED[Finding(finding)],
    ]
    return {"coding": codings, "text": f"{Finding(finding).label} (AI triage)"}


OUTSIDE_VALIDATED_RANGE = (
    "The study lay outside the model's validated input ranges (scanner, noise or geometry): the score may not be "
    "reliable and did not raise the study's priority."
)


def conclusion_text(*, result: TriageResult, spec: ReportSpec) -> str:
    verdict = "suspected" if result.positive else "not suspected"
    summary = (
        f"{Finding(result.finding).label}: {verdict} (score {result.score:.2f}, threshold {result.threshold:.2f}; "
        f"model {result.model_name} {result.model_version})."
    )
    prefixes: dict[str, str] = {
        ReportStatus.AMENDED: "Amended result. ",
        ReportStatus.CORRECTED: "Corrected result. ",
        ReportStatus.ENTERED_IN_ERROR: "Withdrawn: this AI result was entered in error and must be disregarded. ",
    }
    prefix = prefixes.get(spec.status, "")
    note = f" {spec.note}" if spec.note else ""
    if not result.in_validated_range:
        note += f" {OUTSIDE_VALIDATED_RANGE}"
    return f"{prefix}{summary}{note} {ADVISORY}"


def device_resource(*, result: TriageResult, fhir_version: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(model_name=result.model_name, model_version=result.model_version),
        "identifier": [{"system": DEVICE_ID_SYSTEM, "value": f"{result.model_name}@{result.model_version}"}],
        "status": "active",
        "manufacturer": MANUFACTURER,
        "version": [{"value": result.model_version}],
        "note": [
            {
                "text": "Advisory AI triage software. The shipped models are trained on synthetic data and are not a "
                "medical device; a site validates its own weights on its own cases before use."
            }
        ],
    }
    device_type = {"text": "AI triage software (advisory)"}
    if fhir_version == "R5":
        resource["name"] = [{"value": result.model_name, "type": "user-friendly-name"}]
        resource["type"] = [device_type]
    else:
        resource["deviceName"] = [{"name": result.model_name, "type": "model-name"}]
        resource["type"] = device_type
    return resource


def _modality(code: str, fhir_version: str) -> dict[str, Any]:
    coding = {"system": DICOM_MODALITY_SYSTEM, "code": code or "CT"}
    return {"coding": [coding]} if fhir_version == "R5" else coding


def imaging_study_resource(*, study: Study, series: Series, spec: ReportSpec) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [study_identifier(study.study_instance_uid)]
    if study.accession_number:
        identifiers.append(_accession_identifier(study.accession_number))
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": imaging_study_id(study_instance_uid=study.study_instance_uid),
        "identifier": identifiers,
        "status": "available",
        "subject": _patient_reference(study, spec.patient_id_system),
        "modality": [_modality(m, spec.fhir_version) for m in _modalities(study, series)],
    }
    entry = _series_entry(series, spec.fhir_version)
    if entry is not None:
        resource["series"] = [entry]
    if study.study_datetime:
        resource["started"] = study.study_datetime.isoformat()
    if study.study_description:
        resource["description"] = study.study_description[:200]
    return resource


def _modalities(study: Study, series: Series) -> list[str]:
    codes = [m.strip() for m in study.modalities.replace("\\", ",").split(",") if m.strip()]
    return codes or [series.modality or "CT"]


def _series_entry(series: Series, fhir_version: str) -> dict[str, Any] | None:
    """The series as the report's ImagingStudy names it; optional elements whose DICOM value FHIR cannot hold are
    left out rather than losing the report (a negative SeriesNumber; a UID that is not a FHIR id, which a valid
    DICOM UID always is, drops the series element, which is optional)."""
    uid = series.series_instance_uid.rstrip("\x00 ")  # DICOM pads UIDs to an even length
    if not FHIR_ID.fullmatch(uid):
        return None
    entry: dict[str, Any] = {"uid": uid, "modality": _modality(series.modality, fhir_version)}
    if series.series_number is not None and 0 <= series.series_number <= UNSIGNED_INT_MAX:
        entry["number"] = series.series_number
    if series.description:
        entry["description"] = series.description[:200]
    if series.instance_count and series.instance_count <= UNSIGNED_INT_MAX:
        entry["numberOfInstances"] = series.instance_count
    return entry


def _accession_identifier(accession: str) -> dict[str, Any]:
    acsn = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN", "display": "Accession ID"}
    return {"type": {"coding": [acsn]}, "value": accession}


def observation_resource(*, study: Study, result: TriageResult, spec: ReportSpec) -> dict[str, Any]:
    uid = study.study_instance_uid
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(study_instance_uid=uid, finding=result.finding),
        "meta": {"security": [AI_SECURITY_LABEL]},
        "status": _observation_status(spec.status),
        "category": [IMAGING_CATEGORY],
        "code": observation_code(result.finding),
        "subject": _patient_reference(study, spec.patient_id_system),
        "issued": _instant(result.created_at),
        "valueCodeableConcept": {
            "coding": [PRESENT if result.positive else ABSENT],
            "text": "Suspected by AI (advisory)" if result.positive else "Not suspected by AI (advisory)",
        },
        "note": [{"text": ADVISORY}, *([{"text": spec.note}] if spec.note else [])],
        "device": _device_ref(result),
        "derivedFrom": [_study_ref(uid)],
        "component": _components(result),
    }
    if study.study_datetime:
        resource["effectiveDateTime"] = study.study_datetime.isoformat()
    return resource


def _observation_status(report_status: str) -> str:
    # Observation and DiagnosticReport share these four codes in R4 and R5.
    return report_status


def _components(result: TriageResult) -> list[dict[str, Any]]:
    components: list[dict[str, Any]] = [
        {"code": _local("score", "Model score (0 to 1)"), "valueQuantity": _quantity(result.score)},
        {"code": _local("threshold", "Operating threshold (0 to 1)"), "valueQuantity": _quantity(result.threshold)},
    ]
    key_slice = (result.details or {}).get("key_slice")
    if isinstance(key_slice, int) and not isinstance(key_slice, bool) and abs(key_slice) <= UNSIGNED_INT_MAX:
        components.append({"code": _local("key-slice", "Key slice index"), "valueInteger": key_slice})
    if result.reported_side:
        components.append({"code": _local("side", "Side"), "valueString": result.reported_side})
    return components


def diagnostic_report_resource(*, study: Study, result: TriageResult, spec: ReportSpec) -> dict[str, Any]:
    uid = study.study_instance_uid
    identifiers: list[dict[str, Any]] = [
        {"use": "official", **report_identifier(study_instance_uid=uid, finding=result.finding)},
        {"use": "secondary", **study_identifier(uid)},
    ]
    if study.accession_number:
        identifiers.append(_accession_identifier(study.accession_number))
    study_ref = _study_ref(uid)
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id(study_instance_uid=uid, finding=result.finding),
        "meta": {"security": [AI_SECURITY_LABEL]},
        "identifier": identifiers,
        "status": spec.status,
        "category": [RADIOLOGY_CATEGORY],
        "code": report_code(result.finding),
        "subject": _patient_reference(study, spec.patient_id_system),
        "issued": _instant(result.created_at),
        "result": [{"reference": f"Observation/{observation_id(study_instance_uid=uid, finding=result.finding)}"}],
        "conclusion": conclusion_text(result=result, spec=spec),
    }
    resource["study" if spec.fhir_version == "R5" else "imagingStudy"] = [study_ref]
    if study.study_datetime:
        resource["effectiveDateTime"] = study.study_datetime.isoformat()
    return resource


def provenance_resource(*, study: Study, result: TriageResult, spec: ReportSpec) -> dict[str, Any]:
    uid = study.study_instance_uid
    operations: dict[str, str] = {ReportStatus.PRELIMINARY: "CREATE", ReportStatus.ENTERED_IN_ERROR: "NULLIFY"}
    operation = operations.get(spec.status, "UPDATE")
    author = {"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}
    return {
        "resourceType": "Provenance",
        "id": provenance_id(study_instance_uid=uid, finding=result.finding),
        "target": [
            {"reference": f"DiagnosticReport/{report_id(study_instance_uid=uid, finding=result.finding)}"},
            {"reference": f"Observation/{observation_id(study_instance_uid=uid, finding=result.finding)}"},
        ],
        "recorded": _instant(spec.recorded_at),
        "activity": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": operation}]
        },
        "agent": [
            {
                "type": {"coding": [author]},
                "who": _device_ref(result),
            }
        ],
        "entity": [{"role": "source", "what": _study_ref(uid)}],
    }


def report_bundle_build(*, study: Study, result: TriageResult, spec: ReportSpec) -> dict[str, Any]:
    """The transaction Bundle for one version of the report, every resource validated, as JSON-ready data."""
    if spec.status not in REPORT_STATUSES:
        raise ValueError(f"Report status {spec.status!r} is not one of {', '.join(REPORT_STATUSES)}")
    resources = [
        device_resource(result=result, fhir_version=spec.fhir_version),
        imaging_study_resource(study=study, series=result.series, spec=spec),
        observation_resource(study=study, result=result, spec=spec),
        diagnostic_report_resource(study=study, result=result, spec=spec),
        provenance_resource(study=study, result=result, spec=spec),
    ]
    for resource in resources:
        resource_validate(resource, fhir_version=spec.fhir_version)
    # The envelope is fixed code (tests validate it as a Bundle); validating it here would validate every entry again.
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ],
    }


def _model_class(resource_type: str, fhir_version: str) -> type[BaseModel]:
    if fhir_version == "R5":
        from fhir.resources import get_fhir_model_class
    elif fhir_version == "R4":
        from fhir.resources.R4B import get_fhir_model_class
    else:
        raise ValueError(f"FHIR version {fhir_version!r} is not supported (R4 or R5)")
    return get_fhir_model_class(resource_type)


def resource_validate(resource: dict[str, Any], *, fhir_version: str) -> None:
    """Validate by building the fhir.resources model: cardinality, types, unknown elements, primitive formats."""
    model_class = _model_class(resource["resourceType"], fhir_version)
    try:
        model_class.model_validate(resource)
    except ValidationError as err:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in err.errors()})
        raise ReportBuildError(
            f"{resource['resourceType']} is not valid FHIR {fhir_version}: {', '.join(fields)}"
        ) from err


def content_hash(bundle: dict[str, Any]) -> str:
    """SHA-256 of what the report says: the Bundle without the Provenance's recording time."""
    entries = []
    for entry in bundle["entry"]:
        resource = dict(entry["resource"])
        if resource["resourceType"] == "Provenance":
            resource.pop("recorded", None)
        entries.append(resource)
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def bundle_resource(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == resource_type:
            return entry["resource"]
    raise KeyError(resource_type)

"""Our AI results as the PACS holds them: the TID 1500 SRs that write-back stored, found by QIDO-RS, fetched by
WADO-RS and read with highdicom. The DICOMweb client comes from the caller; nothing here touches the database."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import highdicom as hd
from dicomweb_client.protocol import DICOMClient
from highdicom.sr import ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from triage.writeback.documents import LOCAL_SCHEME, MANUFACTURER, RETRACTED, SCORE, THRESHOLD

logger = logging.getLogger(__name__)

SOP_INSTANCE_UID = "00080018"
SERIES_INSTANCE_UID = "0020000E"
INSTANCE_NUMBER = "00200013"


@dataclass(frozen=True)
class StoredResult:
    """What one SR document says, as the radiologist reads it beside the images."""

    finding: str
    evaluation: str
    positive: bool
    retracted: bool
    laterality: str | None
    score: float | None
    threshold: float | None
    model_name: str
    model_version: str
    comments: tuple[str, ...]
    version: int
    series_instance_uid: str
    sop_instance_uid: str
    evaluated_series_uid: str | None
    key_instance_uid: str | None
    key_image_series_uid: str | None


def stored_results_read(client: DICOMClient, study_instance_uid: str) -> list[StoredResult]:
    """The newest version of each of our SRs in the study, the most suspicious first.

    Other SRs (another vendor's, a dose report) are skipped; so is a document of ours that cannot be read, with a
    log line that names no patient.
    """
    found = []
    for series in client.search_for_series(study_instance_uid, search_filters={"Modality": "SR"}):
        series_uid = _first(series, SERIES_INSTANCE_UID)
        newest = _newest_instance(client, study_instance_uid, series_uid) if series_uid else None
        if not series_uid or not newest:
            continue
        dataset = client.retrieve_instance(study_instance_uid, series_uid, newest)
        result = stored_result_parse(dataset)
        if result is not None:
            found.append(result)
    return sorted(found, key=lambda r: (r.retracted, not r.positive, -(r.score or 0.0)))


def _newest_instance(client: DICOMClient, study_uid: str, series_uid: str) -> str | None:
    """Each amended version is a new instance in the finding's SR series, numbered by its version."""
    instances = client.search_for_instances(study_uid, series_uid, fields=["InstanceNumber"])
    numbered = [(int(_first(i, INSTANCE_NUMBER) or 0), _first(i, SOP_INSTANCE_UID)) for i in instances]
    newest = max((n for n in numbered if n[1]), default=None)
    return str(newest[1]) if newest else None


def _first(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def stored_result_parse(dataset: Dataset) -> StoredResult | None:
    """Our TID 1500 document as a ``StoredResult``; None for an SR that is not ours or not readable as ours."""
    if dataset.get("Manufacturer") != MANUFACTURER:
        return None
    try:
        report = hd.sr.Comprehensive3DSR.from_dataset(dataset, copy=False).content
        if not isinstance(report, hd.sr.MeasurementReport):
            return None
        return _result(dataset, report.get_image_measurement_groups()[0])
    except (IndexError, AttributeError, ValueError, TypeError, KeyError) as err:
        logger.warning("an SR of ours could not be read back (%s)", type(err).__name__)
        return None


def _result(dataset: Dataset, group: hd.sr.MeasurementsAndQualitativeEvaluations) -> StoredResult:
    evaluations = {
        e.name.meaning: e.value for e in group.get_qualitative_evaluations() if isinstance(e.value, hd.sr.CodedConcept)
    }
    laterality = evaluations.pop("Laterality", None)
    finding, value = next(iter(evaluations.items()))
    numbers = {m.name.value: m.value for m in group.get_measurements() if m.name.scheme_designator == LOCAL_SCHEME}
    texts = find_content_items(group[0], value_type=ValueTypeValues.TEXT, recursive=True)
    named = {item.name.meaning: str(item.value) for item in texts}
    source = group.source_images
    key_instance = source[0].referenced_sop_instance_uid if source else None
    evidence = _evidence_series(dataset)
    return StoredResult(
        finding=finding,
        evaluation=value.meaning,
        positive=value == hd.sr.CodedConcept("52101004", "SCT", "Present"),
        retracted=value == RETRACTED,
        laterality=laterality.meaning if laterality is not None else None,
        score=_number(numbers, SCORE.value),
        threshold=_number(numbers, THRESHOLD.value),
        model_name=named.get("Algorithm Name", ""),
        model_version=named.get("Algorithm Version", ""),
        comments=tuple(str(i.value) for i in texts if i.name.meaning == "Comment"),
        version=int(dataset.get("InstanceNumber", 0) or 0),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        evaluated_series_uid=_evaluated_series(evidence, key_instance),
        key_instance_uid=key_instance,
        key_image_series_uid=_key_image_series(evidence),
    )


def _number(numbers: dict, code: str) -> float | None:
    value = numbers.get(code)
    return float(value) if value is not None else None


def _evidence_series(dataset: Dataset) -> list[tuple[str, dict[str, str]]]:
    """(Series Instance UID, {SOP Instance UID: SOP Class UID}) of each series the document names as evidence."""
    series: list[tuple[str, dict[str, str]]] = []
    for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", []):
        for item in study.get("ReferencedSeriesSequence", []):
            sops = item.get("ReferencedSOPSequence", [])
            series.append(
                (
                    str(item.SeriesInstanceUID),
                    {str(s.ReferencedSOPInstanceUID): str(s.ReferencedSOPClassUID) for s in sops},
                )
            )
    return series


def _key_image_series(evidence: Iterable[tuple[str, dict[str, str]]]) -> str | None:
    return next((uid for uid, sops in evidence if SecondaryCaptureImageStorage in sops.values()), None)


def _evaluated_series(evidence: Iterable[tuple[str, dict[str, str]]], key_instance: str | None) -> str | None:
    """The image series the model read: the one holding the key slice, else the first that is not our key image."""
    images = [(uid, sops) for uid, sops in evidence if SecondaryCaptureImageStorage not in sops.values()]
    holding = [uid for uid, sops in images if key_instance in sops]
    return holding[0] if holding else (images[0][0] if images else None)

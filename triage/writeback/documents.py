"""DICOM objects for one result version: a Comprehensive 3D SR (TID 1500) and a Secondary Capture key image.

Built with highdicom from the series' instance metadata (DICOM JSON from WADO-RS) and the stored result; nothing
here talks to the network or the database. Codes and why: docs/dicom-sr.md.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from triage.core.exceptions import TriageError
from triage.models import Finding

MANUFACTURER = "ct-triage open-source project"
ADVISORY_TEXT = (
    "AI generated, advisory triage result: not a diagnosis. It only helps order the reading worklist; a radiologist "
    "reads every study. The model was trained on synthetic data and is not a medical device."
)
LOCAL_SCHEME = "99CTTRIAGE"  # a private coding scheme: DICOM reserves designators starting with "99" for these
LOCAL_SCHEME_NAME = "ct-triage local codes"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SAME_POSITION_MM = 0.01
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

FINDING_CODES = {
    Finding.ICH: hd.sr.CodedConcept("1386000", "SCT", "Intracranial hemorrhage"),
    Finding.LVO: hd.sr.CodedConcept("20059004", "SCT", "Cerebral artery occlusion"),
}
# From CID 100 (the procedures TID 1500 suggests); the finding site (brain) says where.
PROCEDURE_CODES = {
    Finding.ICH: [codes.cid100.CTUnspecifiedBodyRegion],
    Finding.LVO: [codes.cid100.CTUnspecifiedBodyRegion, codes.cid100.Angiography],
}
SCORE = hd.sr.CodedConcept("score", LOCAL_SCHEME, "AI triage score")
THRESHOLD = hd.sr.CodedConcept("threshold", LOCAL_SCHEME, "AI operating threshold")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
RETRACTED = hd.sr.CodedConcept("retracted", LOCAL_SCHEME, "AI result withdrawn (entered in error)")


class DocumentBuildError(TriageError):
    """The PACS's metadata or the stored result cannot make a valid DICOM object."""

    code = "writeback_build"
    status = 422


@dataclass(frozen=True)
class ResultFacts:
    """What one result version says, as plain values (the content hash is taken over these)."""

    result_id: int
    finding: str
    model_name: str
    model_version: str
    score: float
    threshold: float
    positive: bool
    side: str | None
    key_slice: int | None
    subtype_scores: dict[str, float]
    in_validated_range: bool
    retracted: bool = False


@dataclass(frozen=True)
class VersionUids:
    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str


@dataclass(frozen=True)
class Predecessor:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


def version_uids(*, study_instance_uid: str, finding: str, result_id: int, version: int) -> VersionUids:
    """The same UIDs on every attempt, so a retry after a lost acknowledgement overwrites instead of duplicating."""

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["ct-triage", "writeback", study_instance_uid, finding, *map(str, parts)])

    return VersionUids(
        sr_series=uid("sr-series"),
        sr_instance=uid("sr", result_id, version),
        sc_series=uid("sc-series"),
        sc_instance=uid("sc", result_id, version),
    )


# ---------------------------------------------------------------------------------------------------------------
# The PACS's metadata


def series_datasets(metadata: Sequence[dict]) -> list[Dataset]:
    """The instances' headers as datasets, without bulk data (never fetched for write-back)."""
    datasets = []
    for item in metadata:
        try:
            ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
        except (ValueError, TypeError, KeyError) as err:
            raise DocumentBuildError("The PACS sent instance metadata that cannot be read.") from err
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                del ds[keyword]
        if "SOPInstanceUID" in ds and "SOPClassUID" in ds:
            for keyword in STUDY_KEYWORDS:  # type 2: highdicom copies them from the evidence, present if empty
                if keyword not in ds:
                    setattr(ds, keyword, "")
            datasets.append(ds)
    if not datasets:
        raise DocumentBuildError("The PACS holds no instances of the evaluated series.")
    return datasets


def key_slice_instance(datasets: Sequence[Dataset], key_slice: int | None) -> Dataset | None:
    """The instance at volume index ``key_slice``, ordered as inference.dicom orders slices: along the normal.

    None when it cannot be told (no key slice, multi-frame images, missing geometry, index out of range).
    """
    if key_slice is None or key_slice < 0 or any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        return None
    try:
        orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        placed = sorted(datasets, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)))
    except (AttributeError, ValueError, TypeError):
        return None
    distinct: list[tuple[float, Dataset]] = []
    for ds in placed:
        position = float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal))
        if not distinct or position - distinct[-1][0] > SAME_POSITION_MM:
            distinct.append((position, ds))
    return distinct[key_slice][1] if key_slice < len(distinct) else None


def reference_dataset(datasets: Sequence[Dataset]) -> Dataset:
    """Patient and study attributes for the new series (the first instance's, type 2 ones present if empty)."""
    ref = Dataset()
    for keyword in ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", *STUDY_KEYWORDS):
        if keyword in datasets[0]:
            setattr(ref, keyword, datasets[0].get(keyword))
    return ref


# ---------------------------------------------------------------------------------------------------------------
# Secondary Capture


def key_image_build(
    *, png: bytes | None, reference: Dataset, uids: VersionUids, version: int, content_time: dt.datetime
) -> hd.sc.SCImage | None:
    """The key image PNG (advisory banner burnt in) as an RGB Secondary Capture; None when there is none to read."""
    if not png:
        return None
    try:
        with Image.open(io.BytesIO(png)) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=version,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        series_description="AI key image (advisory, not a diagnosis)",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.ImageComments = ADVISORY_TEXT
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = "AI triage key image with heatmap; advisory"
    _stamp(sc, content_time)
    return sc


# ---------------------------------------------------------------------------------------------------------------
# Structured report


def sr_build(
    *,
    facts: ResultFacts,
    evidence: Sequence[Dataset],
    key_instance: Dataset | None,
    uids: VersionUids,
    version: int,
    content_time: dt.datetime,
    predecessor: Predecessor | None = None,
) -> hd.sr.Comprehensive3DSR:
    """One TID 1500 Measurement Report with one TID 1501 group: the finding, score, threshold, side, advisory."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=facts.model_name,
        version=facts.model_version,
        parameters=[f"threshold={facts.threshold:.4f}"],
        manufacturer=MANUFACTURER,
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[uids.sr_series, "tracking", str(facts.finding)]),
            identifier=f"AI triage: {Finding(facts.finding).label}",
        ),
        finding_type=FINDING_CODES[Finding(facts.finding)],
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
        measurements=_measurements(facts, algorithm),
        qualitative_evaluations=_evaluations(facts),
        source_images=_source_images(key_instance),
    )
    _texts_append(group, facts)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(facts),
        procedure_reported=PROCEDURE_CODES[Finding(facts.finding)],
        imaging_measurements=[group],
        referenced_images=[key_instance] if key_instance is not None else None,
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(evidence),
            content=report[0],
            series_instance_uid=uids.sr_series,
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=uids.sr_instance,
            instance_number=version,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=f"AI triage {facts.finding.upper()} (advisory, not a diagnosis)",
            previous_versions=[_predecessor_dataset(predecessor)] if predecessor is not None else None,
        )
    except (ValueError, TypeError, AttributeError) as err:
        raise DocumentBuildError(f"The SR could not be built: {type(err).__name__}.") from err
    sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    _stamp(sr, content_time)
    return sr


def _observation_context(facts: ResultFacts) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["ct-triage", "device", facts.model_name, facts.model_version]),
        name=f"{facts.model_name} {facts.model_version}",
        manufacturer_name=MANUFACTURER,
        model_name=facts.model_name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _measurements(facts: ResultFacts, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    named = [(SCORE, facts.score), (THRESHOLD, facts.threshold)]
    for subtype, value in sorted(facts.subtype_scores.items()):
        named.append(
            (hd.sr.CodedConcept(f"subtype-{subtype}"[:16], LOCAL_SCHEME, f"AI subtype score: {subtype}"), value)
        )
    return [
        hd.sr.Measurement(name=name, value=float(value), unit=NO_UNITS, algorithm_id=algorithm) for name, value in named
    ]


def _evaluations(facts: ResultFacts) -> list[hd.sr.QualitativeEvaluation]:
    finding = FINDING_CODES[Finding(facts.finding)]
    if facts.retracted:
        return [hd.sr.QualitativeEvaluation(name=finding, value=RETRACTED)]
    evaluations = [
        hd.sr.QualitativeEvaluation(name=finding, value=codes.SCT.Present if facts.positive else codes.SCT.Absent)
    ]
    if facts.positive and facts.side in ("left", "right"):
        side = codes.SCT.Left if facts.side == "left" else codes.SCT.Right
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.SCT.Laterality, value=side))
    return evaluations


def _source_images(key_instance: Dataset | None) -> list[hd.sr.SourceImageForMeasurementGroup] | None:
    if key_instance is None:
        return None
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(key_instance)]


def _texts_append(group: hd.sr.MeasurementsAndQualitativeEvaluations, facts: ResultFacts) -> None:
    """The advisory statement (and why a score was outside the validated range) as TEXT Comment items."""
    texts = [ADVISORY_TEXT]
    if not facts.in_validated_range:
        texts.append("The study lay outside the model's validated input ranges; the score raises no priority.")
    if facts.retracted:
        texts.append("This AI result was withdrawn as entered in error; disregard the earlier version.")
    for text in texts:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )


def _predecessor_dataset(predecessor: Predecessor) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = predecessor.sop_instance_uid
    ds.StudyInstanceUID = predecessor.study_instance_uid
    ds.SeriesInstanceUID = predecessor.series_instance_uid
    return ds


def _local_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _stamp(ds: Any, moment: dt.datetime) -> None:
    """Content date and time from the version's creation, not the attempt's, so every retry sends the same."""
    ds.ContentDate = moment.strftime("%Y%m%d")
    ds.ContentTime = moment.strftime("%H%M%S")

"""Our SRs read back from the PACS (triage/writeback/readback.py): what the viewer page lists beside the images."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import Dataset

from tests.triage.dicom_build import SeriesSpec, StudySpec, study_datasets, to_bytes
from triage.ingest.dicomweb import client_for_source
from triage.writeback import documents
from triage.writeback.readback import stored_result_parse, stored_results_read

KEY_SLICE = 3
MOMENT = dt.datetime(2026, 3, 4, 9, 30)


def key_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 180, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def headers(images: list[Dataset]) -> list[Dataset]:
    """The series' instances as write-back reads them: from their metadata (DICOM JSON), without pixel data."""
    return documents.series_datasets([ds.to_json_dict() for ds in images])


def facts(**changes) -> documents.ResultFacts:
    fields = {
        "result_id": 7,
        "finding": "ich",
        "model_name": "ich2d",
        "model_version": "3.0",
        "score": 0.93,
        "threshold": 0.5,
        "positive": True,
        "side": None,
        "key_slice": KEY_SLICE,
        "subtype_scores": {"sdh": 0.8},
        "in_validated_range": True,
    }
    return documents.ResultFacts(**{**fields, **changes})


def documents_for(images: list[Dataset], said: documents.ResultFacts, *, version: int = 1) -> list[Dataset]:
    """The key image and the SR that write-back stores for one result version of the study of ``images``."""
    evidence = headers(images)
    study_uid = str(images[0].StudyInstanceUID)
    uids = documents.version_uids(
        study_instance_uid=study_uid, finding=said.finding, result_id=said.result_id, version=version
    )
    key_image = documents.key_image_build(
        png=key_png(), reference=documents.reference_dataset(evidence), uids=uids, version=version, content_time=MOMENT
    )
    assert key_image is not None
    sr = documents.sr_build(
        facts=said,
        evidence=[*evidence, key_image],
        key_instance=documents.key_slice_instance(evidence, said.key_slice),
        uids=uids,
        version=version,
        content_time=MOMENT,
    )
    return [key_image, sr]


def test_an_sr_of_ours_reads_back_as_finding_evaluation_score_threshold_model_and_advisory():
    _, sr = documents_for(study_datasets(StudySpec()), facts())

    result = stored_result_parse(sr)

    assert result is not None
    assert (result.finding, result.evaluation, result.positive) == ("Intracranial hemorrhage", "Present", True)
    assert (result.score, result.threshold) == (0.93, 0.5)
    assert (result.model_name, result.model_version, result.version) == ("ich2d", "3.0", 1)
    assert any("AI generated" in c and "not a diagnosis" in c for c in result.comments)


def test_the_key_slice_its_series_and_the_key_image_series_are_read_from_the_sr():
    spec = StudySpec()
    images = study_datasets(spec)
    key_image, sr = documents_for(images, facts())
    ordered = sorted(images, key=lambda ds: float(ds.ImagePositionPatient[2]))

    result = stored_result_parse(sr)

    assert result is not None
    assert result.key_instance_uid == ordered[KEY_SLICE].SOPInstanceUID
    assert result.evaluated_series_uid == spec.series[0].series_uid
    assert result.key_image_series_uid == key_image.SeriesInstanceUID


def test_an_absent_lvo_reads_back_negative_and_a_left_sided_one_with_its_side():
    images = study_datasets(StudySpec())
    absent = stored_result_parse(documents_for(images, facts(finding="lvo", score=0.2, positive=False))[1])
    left = stored_result_parse(documents_for(images, facts(finding="lvo", side="left"))[1])

    assert absent is not None
    assert left is not None
    assert (absent.evaluation, absent.positive, absent.laterality) == ("Absent", False, None)
    assert (left.finding, left.laterality) == ("Cerebral artery occlusion", "Left")


def test_a_withdrawn_result_reads_back_as_retracted_not_positive():
    _, sr = documents_for(study_datasets(StudySpec()), facts(retracted=True))

    result = stored_result_parse(sr)

    assert result is not None
    assert (result.retracted, result.positive) == (True, False)


def test_an_sr_of_another_manufacturer_is_not_listed():
    _, sr = documents_for(study_datasets(StudySpec()), facts())
    sr.Manufacturer = "Another vendor"

    assert stored_result_parse(sr) is None


@pytest.mark.django_db
def test_the_newest_version_of_each_finding_is_read_from_the_pacs_most_suspicious_first(pacs_source, orthanc):
    images = study_datasets(StudySpec(series=[SeriesSpec(slices=6)]))
    for ds in images:
        requests.post(f"{orthanc.url}/instances", data=to_bytes(ds), timeout=30).raise_for_status()
    study_uid = str(images[0].StudyInstanceUID)
    client = client_for_source(pacs_source)
    negative_lvo = facts(finding="lvo", score=0.1, positive=False)
    for said, version in ((facts(score=0.4, positive=False), 1), (facts(), 2), (negative_lvo, 1)):
        client.store_instances(documents_for(images, said, version=version), study_instance_uid=study_uid)

    found = stored_results_read(client, study_uid)

    assert [(r.finding, r.version, r.evaluation) for r in found] == [
        ("Intracranial hemorrhage", 2, "Present"),
        ("Cerebral artery occlusion", 1, "Absent"),
    ]

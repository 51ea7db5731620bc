"""Results back in the PACS (docs/dicom-sr.md): DICOM SR and key image by STOW-RS to a real Orthanc."""

from __future__ import annotations

import io
from datetime import timedelta

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from django.db import transaction
from django.utils import timezone
from highdicom.sr import ValueTypeValues
from highdicom.sr.utils import find_content_items
from PIL import Image
from pydicom.uid import Comprehensive3DSRStorage

from tests.factories import JobFactory, ResultFactory
from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import FakeOutput, upload_study
from triage.ingest.dicomweb import client_for_source
from triage.ingest.services import results_record
from triage.models import Series, Study, TriageResult, WritebackMessage, WritebackState
from triage.writeback.delivery import writeback_deliver_due
from triage.writeback.outbox import writeback_enqueue, writeback_requeue, writeback_retract

pytestmark = pytest.mark.django_db

KEY_SLICE = 3


def key_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 200, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pacs_study(orthanc):
    """A CT series of eight slices in Orthanc."""
    spec = StudySpec(series=[SeriesSpec(slices=8)])
    return upload_study(orthanc, spec)


@pytest.fixture
def write_back_source(pacs_source):
    pacs_source.write_back = True
    pacs_source.save()
    return pacs_source


def recorded_result(source, spec: StudySpec, **changes) -> TriageResult:
    study, _ = Study.objects.get_or_create(study_instance_uid=spec.study_uid, defaults={"source": source})
    series, _ = Series.objects.get_or_create(study=study, series_instance_uid=spec.series[0].series_uid)
    TriageResult.objects.filter(study=study, finding="lvo").update(is_current=False)
    fields = {"score": 0.87, "threshold": 0.5, "model_name": "lvo3d", "model_version": "1.2.0", **changes}
    details = {"key_slice": KEY_SLICE, "side": "left", "subtype_scores": {"m1": 0.7}}
    result = ResultFactory(series=series, finding="lvo", details=details, key_image_png=key_png(), **fields)
    writeback_enqueue(study=study, finding="lvo")
    return result


def deliver() -> None:
    WritebackMessage.objects.filter(state=WritebackState.PENDING).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    writeback_deliver_due(client_for=client_for_source)


def series_in_pacs(orthanc, study_uid: str) -> dict[str, list[str]]:
    """Modality → SOP Instance UIDs of every series of the study in Orthanc."""
    found: dict[str, list[str]] = {}
    for series in requests.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series", timeout=10).json():
        uid, modality = series["0020000E"]["Value"][0], series["00080060"]["Value"][0]
        instances = requests.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{uid}/instances", timeout=10)
        found.setdefault(modality, []).extend(i["00080018"]["Value"][0] for i in instances.json())
    return found


def stored_sr(source, message: WritebackMessage) -> pydicom.Dataset:
    client = client_for_source(source)
    return client.retrieve_instance(message.study.study_instance_uid, message.sr_series_uid, message.sr_instance_uid)


def test_result_is_stored_as_one_sr_series_and_one_key_image_series(orthanc, write_back_source, pacs_study):
    recorded_result(write_back_source, pacs_study)
    deliver()
    found = series_in_pacs(orthanc, pacs_study.study_uid)
    assert (len(found["SR"]), len(found["OT"]), len(found["CT"])) == (1, 1, 8)
    assert WritebackMessage.objects.get().state == WritebackState.SENT


def test_sr_reads_back_as_tid_1500_with_algorithm_finding_score_threshold_side_and_advisory(
    write_back_source, pacs_study
):
    recorded_result(write_back_source, pacs_study)
    deliver()
    message = WritebackMessage.objects.get()
    dataset = stored_sr(write_back_source, message)
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    group = sr.content.get_image_measurement_groups()[0]
    assert dataset.SOPClassUID == Comprehensive3DSRStorage
    algorithm = {
        i.name.meaning: i.value for i in find_content_items(group[0], value_type=ValueTypeValues.TEXT, recursive=True)
    }
    assert (algorithm["Algorithm Name"], algorithm["Algorithm Version"]) == ("lvo3d", "1.2.0")
    assert algorithm["Algorithm Manufacturer"] == "ct-triage open-source project"
    evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    assert evaluations == {"Cerebral artery occlusion": "Present", "Laterality": "Left"}
    numbers = {m.name.value: m.value for m in group.get_measurements()}
    assert (numbers["score"], numbers["threshold"]) == (0.87, 0.5)
    comments = [i.TextValue for i in group[0].ContentSequence if i.ValueType == "TEXT" and i.name.meaning == "Comment"]
    assert any("advisory" in text and "not a diagnosis" in text for text in comments)


def test_sr_references_the_evaluated_series_and_the_key_slice(write_back_source, pacs_study):
    recorded_result(write_back_source, pacs_study)
    deliver()
    dataset = stored_sr(write_back_source, WritebackMessage.objects.get())
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    key = sr.content.get_image_measurement_groups()[0].source_images[0]
    evaluated = [
        s for s in dataset.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        if s.SeriesInstanceUID == pacs_study.series[0].series_uid
    ]  # fmt: skip
    z_sorted = sorted(pydicom_series(write_back_source, pacs_study), key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert key.referenced_sop_instance_uid == z_sorted[KEY_SLICE].SOPInstanceUID
    assert len(evaluated[0].ReferencedSOPSequence) == 8


def pydicom_series(source, spec: StudySpec) -> list[pydicom.Dataset]:
    client = client_for_source(source)
    metadata = client.retrieve_series_metadata(spec.study_uid, spec.series[0].series_uid)
    return [pydicom.Dataset.from_json(m, bulk_data_uri_handler=lambda *_: b"") for m in metadata]


def test_key_image_is_a_secondary_capture_labelled_advisory(write_back_source, pacs_study):
    recorded_result(write_back_source, pacs_study)
    deliver()
    message = WritebackMessage.objects.get()
    client = client_for_source(write_back_source)
    sc = client.retrieve_instance(pacs_study.study_uid, message.sc_series_uid, message.sc_instance_uid)
    assert (sc.Rows, sc.Columns, sc.PhotometricInterpretation, sc.BurnedInAnnotation) == (48, 64, "RGB", "YES")
    assert "not a diagnosis" in sc.ImageComments
    assert message.key_image_sent


def test_a_lost_acknowledgement_leaves_one_sr_instance_per_version(orthanc, write_back_source, pacs_study):
    recorded_result(write_back_source, pacs_study)
    deliver()
    # The PACS stored it but the answer was lost: the version is sent again with the same UIDs.
    WritebackMessage.objects.update(state=WritebackState.PENDING)
    deliver()
    found = series_in_pacs(orthanc, pacs_study.study_uid)
    assert (len(found["SR"]), len(found["OT"])) == (1, 1)
    message = WritebackMessage.objects.get()
    assert (message.state, message.attempts) == (WritebackState.SENT, 2)


def test_an_amended_result_stores_a_second_sr_that_references_the_first(orthanc, write_back_source, pacs_study):
    recorded_result(write_back_source, pacs_study)
    deliver()
    recorded_result(write_back_source, pacs_study, score=0.31, model_version="1.3.0")
    deliver()
    first, second = WritebackMessage.objects.order_by("version")
    dataset = stored_sr(write_back_source, second)
    predecessor = dataset.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first.sr_instance_uid
    assert sorted(series_in_pacs(orthanc, pacs_study.study_uid)["SR"]) == sorted(
        [first.sr_instance_uid, second.sr_instance_uid]
    )
    evaluations = hd.sr.Comprehensive3DSR.from_dataset(dataset).content.get_image_measurement_groups()[0]
    assert [e.value.meaning for e in evaluations.get_qualitative_evaluations()] == ["Absent"]


def test_a_retraction_stores_a_successor_sr_that_withdraws_the_first(write_back_source, pacs_study):
    result = recorded_result(write_back_source, pacs_study)
    deliver()
    writeback_retract(study=result.study, finding="lvo", reason="entered_in_error")
    deliver()
    first, second = WritebackMessage.objects.order_by("version")
    dataset = stored_sr(write_back_source, second)
    group = hd.sr.Comprehensive3DSR.from_dataset(dataset).content.get_image_measurement_groups()[0]
    assert [e.value.value for e in group.get_qualitative_evaluations()] == ["retracted"]
    predecessor = dataset.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (predecessor.ReferencedSOPInstanceUID, second.retract) == (first.sr_instance_uid, True)


def test_an_unchanged_result_is_not_queued_again(write_back_source, pacs_study):
    result = recorded_result(write_back_source, pacs_study)
    writeback_enqueue(study=result.study, finding="lvo")
    assert WritebackMessage.objects.count() == 1


def test_sources_without_write_back_get_nothing(pacs_source, pacs_study):
    recorded_result(pacs_source, pacs_study)
    assert not WritebackMessage.objects.exists()


def test_results_record_queues_the_write_back_in_its_transaction(write_back_source, pacs_study):
    study = Study.objects.create(study_instance_uid=pacs_study.study_uid, source=write_back_source)
    series = Series.objects.create(study=study, series_instance_uid=pacs_study.series[0].series_uid)
    output = FakeOutput("ich", "ich2d", "3.0", 0.9, 0.5, True)

    def record_then_fail() -> None:
        with transaction.atomic():
            results_record(job=JobFactory(study=study), outputs=[(series, output, None)])
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        record_then_fail()
    assert not WritebackMessage.objects.exists()
    results_record(job=JobFactory(study=study), outputs=[(series, output, None)])
    assert WritebackMessage.objects.get().finding == "ich"


def test_without_a_key_image_png_only_the_sr_is_stored(orthanc, write_back_source, pacs_study):
    result = recorded_result(write_back_source, pacs_study)
    TriageResult.objects.filter(pk=result.pk).update(key_image_png=b"\x89PNG not really")
    deliver()
    found = series_in_pacs(orthanc, pacs_study.study_uid)
    assert ("SR" in found, "OT" in found) == (True, False)


def test_a_pacs_answering_5xx_is_retried_then_dead_lettered_and_can_be_requeued(
    orthanc, proxy, proxied_source, pacs_study, settings
):
    settings.TRIAGE_WRITEBACK_MAX_ATTEMPTS = 2
    proxied_source.write_back = True
    proxied_source.save()
    recorded_result(proxied_source, pacs_study)
    proxy.script.fail_next = 100
    deliver()
    message = WritebackMessage.objects.get()
    assert (message.state, message.attempts, message.last_status_code) == (WritebackState.PENDING, 1, 503)
    deliver()
    message.refresh_from_db()
    assert (message.state, message.attempts) == (WritebackState.DEAD, 2)
    proxied_source.url = orthanc.dicomweb_url  # the admin points the source at a PACS that answers
    proxied_source.save()
    assert writeback_requeue(message=message, actor=None)
    deliver()
    message.refresh_from_db()
    assert message.state == WritebackState.SENT


def test_dead_letters_are_listed_in_the_admin(admin_web, write_back_source, pacs_study):
    recorded_result(write_back_source, pacs_study)
    WritebackMessage.objects.update(state=WritebackState.DEAD, last_error="The PACS answered HTTP 503.")
    page = admin_web.get("/admin/triage/writebackmessage/?state__exact=dead")
    assert page.status_code == 200
    assert b"Dead letter" in page.content

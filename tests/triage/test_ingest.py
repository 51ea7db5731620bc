"""A study's trip from a real Orthanc to stored results: routing, retrieval, volume, bad input, PACS failures."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests.dicom_helpers import compress_jpeg_lossless
from tests.triage.dicom_build import SeriesSpec, StudySpec, hu_volume
from tests.triage.ingest_helpers import upload_study
from triage.ingest.dicomweb import Pacs
from triage.ingest.pipeline import job_process, series_volume
from triage.ingest.services import study_request_triage
from triage.models import JobState, Series, TriageJob, TriageResult

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_settle")]


def queue(spec: StudySpec, source_name: str = "pacs") -> TriageJob:
    return study_request_triage(study_instance_uid=spec.study_uid, source_name=source_name)


def run(job: TriageJob) -> TriageJob:
    job_process(job_id=job.pk, worker_id="test-worker")
    job.refresh_from_db()
    return job


def test_valid_study_is_fetched_routed_and_recorded(orthanc, pacs_source, fake_models):
    spec = upload_study(orthanc, StudySpec(accession="ACC42", patient_id="PID42"))

    job = run(queue(spec))

    study = job.study
    study.refresh_from_db()
    result = TriageResult.objects.get(study=study)
    assert job.state == JobState.DONE
    assert (study.accession_number, study.patient_id, study.patient_age_years) == ("ACC42", "PID42", 61)
    assert Series.objects.get(study=study).routed_model == "ich"
    assert fake_models.calls == [("ich", (12, 32, 32))]
    assert (result.finding, result.is_current, result.threshold) == ("ich", True, 0.5)
    assert set(job.timings) >= {"discover", "fetch", "infer", "record"}


def test_study_without_a_routable_series_is_done_with_a_visible_reason(orthanc, pacs_source, fake_models):
    spec = upload_study(orthanc, StudySpec(description="CT CHEST", series=[SeriesSpec(body_part="CHEST")]))

    job = run(queue(spec))

    assert (job.state, job.error_code) == (JobState.DONE, "no_routable_series")
    assert "1 CT series checked" in job.error_message
    assert "no rule matched" in Series.objects.get(study=job.study).routing_reason
    assert fake_models.calls == []


def drop_pixels(index, ds):
    if index == 3:
        del ds.PixelData
    return ds


def truncate_pixels(index, ds):
    if index == 3:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


def tilt_one(index, ds):
    if index == 3:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    return ds


def drop_middle(index, ds):
    return None if index == 5 else ds


def duplicate_position(index, ds):
    if index == 4:
        ds.ImagePositionPatient = [-64.0, -64.0, 3 * 5.0]
    return ds


BAD_INPUTS = [
    ("missing_pixel_data", drop_pixels, {}),
    ("corrupt_file", truncate_pixels, {}),
    ("mixed_orientation", tilt_one, {}),
    ("missing_slices", drop_middle, {}),
    ("duplicate_slices", duplicate_position, {}),
    ("series_too_large", None, {"slices": 24}),
]


def test_each_bad_input_is_rejected_with_its_reason_and_a_valid_study_succeeds(
    orthanc,
    pacs_source,
    fake_models,
    settings,
):
    settings.TRIAGE_MAX_SERIES_INSTANCES = 20
    bad = {}
    for code, mutate, series_kwargs in BAD_INPUTS:
        spec = StudySpec(accession=code[:16], series=[SeriesSpec(**series_kwargs)])
        bad[code] = queue(upload_study(orthanc, spec, mutate=mutate))
    valid = queue(upload_study(orthanc, StudySpec()))

    outcomes = {code: run(job) for code, job in bad.items()}
    valid = run(valid)

    assert {code: (job.state, job.error_code) for code, job in outcomes.items()} == {
        code: (JobState.REJECTED, code) for code in bad
    }
    assert all(job.error_message for job in outcomes.values())
    assert valid.state == JobState.DONE
    assert TriageResult.objects.filter(study=valid.study).count() == 1


def test_pacs_failure_during_retrieval_requeues_with_backoff_then_succeeds(
    orthanc,
    proxy,
    proxied_source,
    fake_models,
    settings,
):
    settings.TRIAGE_PACS_RETRY_BASE_SECONDS = 30
    settings.TRIAGE_PACS_HTTP_ATTEMPTS = 1
    spec = upload_study(orthanc, StudySpec())
    job = queue(spec)
    proxy.script.fail_retrievals_next, proxy.script.fail_status = 1, 503

    first = run(job)
    after_failure = (first.state, first.error_code, first.pacs_failures, first.attempts)
    delay = (first.available_at - first.started_at).total_seconds()
    TriageJob.objects.filter(pk=job.pk).update(available_at=first.created_at)  # let the backoff pass
    second = run(job)

    assert after_failure == (JobState.QUEUED, "pacs_unavailable", 1, 0)
    assert 15 <= delay <= 31
    assert (second.state, second.pacs_failures, second.attempts) == (JobState.DONE, 0, 1)


def test_pacs_outage_loses_no_study(orthanc_server, orthanc, pacs_source, fake_models, quick_retries):
    from triage.ingest.poll import source_poll

    specs = [upload_study(orthanc, StudySpec(accession=f"OUT{i}")) for i in range(2)]
    source_poll(source=pacs_source)
    orthanc_server.stop()
    try:
        during = [run(job) for job in TriageJob.objects.all()]
        polled = source_poll(source=pacs_source)
    finally:
        orthanc_server.start()
    TriageJob.objects.update(available_at=TriageJob.objects.earliest("created_at").created_at)
    after = [run(job) for job in TriageJob.objects.all()]

    assert [job.state for job in during] == [JobState.QUEUED, JobState.QUEUED]
    assert polled.error
    assert [job.state for job in after] == [JobState.DONE, JobState.DONE]
    assert TriageResult.objects.count() == len(specs)


COMPRESSIONS = {
    "rle": (lambda ds: ds.compress(RLELossless, encoding_plugin="pydicom") or ds, RLELossless),
    "jpeg2000": (lambda ds: ds.compress(JPEG2000Lossless) or ds, JPEG2000Lossless),
    "jpeg_lossless": (compress_jpeg_lossless, "1.2.840.10008.1.2.4.70"),
}


@pytest.mark.parametrize("name", sorted(COMPRESSIONS))
def test_compressed_series_decode_to_the_same_hu_through_orthanc(orthanc, pacs_source, name):
    series = SeriesSpec(slices=4, size=64)
    plain = upload_study(orthanc, StudySpec(series=[series]))
    packed = upload_study(
        orthanc, StudySpec(series=[SeriesSpec(slices=4, size=64)]), mutate=lambda i, ds: COMPRESSIONS[name][0](ds)
    )
    pacs = Pacs.for_source(pacs_source)

    volumes = []
    for spec in (plain, packed):
        queue(spec)
        row = Series(study=TriageJob.objects.get(study__study_instance_uid=spec.study_uid).study)
        row.series_instance_uid = spec.series[0].series_uid
        volumes.append(series_volume(pacs=pacs, series=row))

    assert volumes[1].meta["transfer_syntaxes"] == [COMPRESSIONS[name][1]]
    assert np.array_equal(volumes[0].hu, volumes[1].hu)
    assert np.array_equal(volumes[0].hu, hu_volume(series).astype(np.float32))


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres_only
def test_an_inference_longer_than_the_lease_keeps_the_job(orthanc, pacs_source, fake_models, monkeypatch, settings):
    import time

    from tests.triage.ingest_helpers import FakeRunner
    from triage.ingest import jobs

    settings.TRIAGE_JOB_LEASE_SECONDS = 1
    spec = upload_study(orthanc, StudySpec())
    job = queue(spec)
    taken_by_another: list[object] = []
    slow_run = FakeRunner.run

    def slow(self, volume_hu, spacing_mm):
        time.sleep(2.5)  # the stage outlives the 1 s lease; another worker then tries to take the job
        taken_by_another.append(jobs.job_claim(job_id=job.pk, worker_id="another-worker"))
        return slow_run(self, volume_hu, spacing_mm)

    monkeypatch.setattr(FakeRunner, "run", slow)

    done = run(job)

    assert taken_by_another == [None]
    assert (done.state, done.lease_owner) == (JobState.DONE, "")
    assert TriageResult.objects.filter(study=done.study, is_current=True).count() == 1


def test_a_series_uid_reused_by_another_study_is_not_moved_to_it(orthanc, pacs_source, fake_models):
    first = upload_study(orthanc, StudySpec())
    first_job = run(queue(first))
    reused = StudySpec(series=[SeriesSpec(series_uid=first.series[0].series_uid)])
    upload_study(orthanc, reused)

    second_job = run(queue(reused))

    series = Series.objects.get(series_instance_uid=first.series[0].series_uid)
    assert series.study_id == first_job.study_id
    assert TriageResult.objects.filter(study=first_job.study, is_current=True).count() == 1
    assert (second_job.state, second_job.error_code) == (JobState.DONE, "no_routable_series")
    assert not TriageResult.objects.filter(study=second_job.study).exists()


def test_a_database_error_mid_job_leaves_it_to_its_lease_instead_of_failing_the_study(
    orthanc, pacs_source, fake_models, monkeypatch
):
    from django.db import OperationalError

    from tests.triage.ingest_helpers import FakeRunner

    def database_gone(self, volume_hu, spacing_mm):
        raise OperationalError("the database restarted")

    monkeypatch.setattr(FakeRunner, "run", database_gone)
    job = queue(upload_study(orthanc, StudySpec()))

    outcome = job_process(job_id=job.pk, worker_id="test-worker")

    job.refresh_from_db()
    assert outcome is None
    assert job.state not in (JobState.FAILED, JobState.DONE)
    assert (job.lease_owner, job.error_code) == ("test-worker", "")

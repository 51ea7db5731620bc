"""Polling a real Orthanc with QIDO-RS: incremental, paged, deduplicated, and safe across restarts and outages."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from triage.ingest.poll import source_poll
from triage.models import JobState, Study, TriageJob

pytestmark = pytest.mark.django_db


def tiny(**kwargs) -> StudySpec:
    return StudySpec(series=[SeriesSpec(slices=1, size=8)], **kwargs)


def days_ago(n: int) -> str:
    return (dt.date.today() - dt.timedelta(days=n)).strftime("%Y%m%d")


def test_poll_queues_every_study_over_several_pages_once(orthanc, pacs_source, settings):
    settings.TRIAGE_POLL_PAGE_SIZE = 3
    first = [upload_study(orthanc, tiny(accession=f"A{i}")).study_uid for i in range(7)]

    report = source_poll(source=pacs_source)
    later = [upload_study(orthanc, tiny(accession=f"B{i}")).study_uid for i in range(2)]
    second = source_poll(source=pacs_source)

    assert sorted(report.queued) == sorted(first)
    assert sorted(second.queued) == sorted(later)
    assert report.pages >= 3
    assert TriageJob.objects.filter(state=JobState.QUEUED).count() == 9


def test_poll_cursor_survives_a_restart(orthanc, pacs_source, settings):
    settings.TRIAGE_POLL_PAGE_SIZE = 2
    for i in range(3):
        upload_study(orthanc, tiny(accession=f"A{i}"))
    source_poll(source=pacs_source)
    pacs_source.refresh_from_db()
    restarted = type(pacs_source).objects.get(pk=pacs_source.pk)

    again = source_poll(source=restarted)

    assert again.queued == []
    assert restarted.poll_cursor["watermark"] == dt.date.today().strftime("%Y%m%d")
    assert Study.objects.count() == 3


def test_study_arriving_late_with_an_old_study_date_is_found_by_the_sweep(orthanc, pacs_source, settings):
    settings.TRIAGE_POLL_PAGE_SIZE = 2
    settings.TRIAGE_POLL_LOOKBACK_DAYS = 7
    source_poll(source=pacs_source)
    late = upload_study(orthanc, tiny(study_date=days_ago(4)))
    too_old = upload_study(orthanc, tiny(study_date=days_ago(400)))

    queued = []
    for _ in range(3):
        queued += source_poll(source=pacs_source).queued

    assert queued == [late.study_uid]
    assert not Study.objects.filter(study_instance_uid=too_old.study_uid).exists()


def test_only_ct_studies_are_queued(orthanc, pacs_source):
    ct = upload_study(orthanc, tiny())

    def as_mr(index, ds):
        ds.Modality = "MR"
        return ds

    upload_study(orthanc, tiny(), mutate=as_mr)

    assert source_poll(source=pacs_source).queued == [ct.study_uid]


def test_pacs_outage_is_recorded_and_the_next_poll_catches_up(orthanc, proxy, proxied_source, quick_retries):
    source_poll(source=proxied_source)
    during = upload_study(orthanc, tiny())
    proxy.script.fail_next, proxy.script.fail_status = 100, 503

    failed = source_poll(source=proxied_source)
    proxy.script.fail_next = 0
    recovered = source_poll(source=proxied_source)

    proxied_source.refresh_from_db()
    assert failed.queued == []
    assert "503" in failed.error
    assert recovered.queued == [during.study_uid]
    assert proxied_source.last_error == ""


def test_poll_and_notify_of_the_same_study_make_one_job(orthanc, pacs_source, radiologist_client):
    spec = upload_study(orthanc, tiny())

    response = radiologist_client.post(
        "/api/v1/studies/notify/", {"study_instance_uid": spec.study_uid, "source": "pacs"}, format="json"
    )
    report = source_poll(source=pacs_source)
    again = radiologist_client.post(
        "/api/v1/studies/notify/", {"study_instance_uid": spec.study_uid, "source": "pacs"}, format="json"
    )

    assert response.status_code == again.status_code == 202
    assert report.queued == []
    assert TriageJob.objects.filter(study__study_instance_uid=spec.study_uid).count() == 1


def test_notify_enqueues_the_task_after_commit(pacs_source, radiologist_client, django_capture_on_commit_callbacks):
    from django_tasks_db.models import DBTaskResult

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        radiologist_client.post(
            "/api/v1/studies/notify/", {"study_instance_uid": "1.2.3.4", "source": "pacs"}, format="json"
        )

    job = TriageJob.objects.get(study__study_instance_uid="1.2.3.4")
    task = DBTaskResult.objects.get(id=job.task_id)
    assert len(callbacks) == 1
    assert task.queue_name == "ingest"
    assert task.args_kwargs["args"] == [job.pk]


def test_notify_takes_the_pacs_word_that_the_study_is_complete(pacs_source, radiologist_client):
    body = {"study_instance_uid": "1.2.3.5", "source": "pacs", "complete": True}

    response = radiologist_client.post("/api/v1/studies/notify/", body, format="json")

    assert response.status_code == 202
    assert TriageJob.objects.get(study__study_instance_uid="1.2.3.5").complete is True


def test_triage_poll_once_polls_sweeps_and_beats(orthanc, pacs_source):
    from django.core.management import call_command

    from triage.models import WorkerHeartbeat

    spec = upload_study(orthanc, tiny())

    call_command("triage_poll", "--once")

    assert Study.objects.filter(study_instance_uid=spec.study_uid).exists()
    assert WorkerHeartbeat.objects.filter(kind="poller").count() == 1

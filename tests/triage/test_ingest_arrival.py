"""Studies that arrive instance by instance, and models that cannot be loaded, against a real Orthanc.

A study is triaged only once its instance count has held for TRIAGE_STUDY_SETTLE_SECONDS; time is moved by
rewriting the job's ``available_at`` and ``instance_count_since``, not by sleeping.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from triage.ingest.pipeline import job_process
from triage.ingest.poll import source_poll
from triage.ingest.runners import runner_load
from triage.ingest.services import study_request_triage
from triage.models import JobState, ModelConfig, TriageJob, TriageResult

pytestmark = pytest.mark.django_db


def run(job: TriageJob) -> TriageJob:
    job_process(job_id=job.pk, worker_id="test-worker")
    job.refresh_from_db()
    return job


def make_due(job: TriageJob, *, settled_for: float = 0.0) -> None:
    """Let the job's wait pass; ``settled_for``: pretend its last count was first seen that many seconds ago."""
    now = timezone.now()
    changes: dict = {"available_at": now - timedelta(seconds=1)}
    if settled_for:
        changes["instance_count_since"] = now - timedelta(seconds=settled_for)
    TriageJob.objects.filter(pk=job.pk).update(**changes)


def first(n: int):
    return lambda index, ds: ds if index < n else None


def after(n: int):
    return lambda index, ds: ds if index >= n else None


def snapshot(job: TriageJob) -> tuple:
    return (job.state, job.error_code, job.instance_count, job.attempts)


def test_partial_study_waits_until_its_count_has_settled_then_is_read_whole(
    orthanc,
    pacs_source,
    fake_models,
    settings,
):
    settings.TRIAGE_STUDY_SETTLE_SECONDS = 5
    spec = StudySpec(series=[SeriesSpec(slices=12)])
    upload_study(orthanc, spec, mutate=first(8))
    job = study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")

    partial = run(job)
    partial_state, wait = snapshot(partial), (partial.available_at - timezone.now()).total_seconds()
    upload_study(orthanc, spec, mutate=after(8))
    make_due(job)
    grown = snapshot(run(job))
    make_due(job, settled_for=5)
    done = run(job)

    assert partial_state == (JobState.QUEUED, "settling", 8, 0)
    assert 4 <= wait <= 5
    assert grown == (JobState.QUEUED, "settling", 12, 0)
    assert snapshot(done) == (JobState.DONE, "", 12, 1)
    assert fake_models.calls == [("ich", (12, 32, 32))]
    assert TriageResult.objects.filter(study=job.study, is_current=True).count() == 1


def test_study_unchanged_for_the_settle_time_is_processed_at_the_next_claim(
    orthanc,
    pacs_source,
    fake_models,
    settings,
):
    settings.TRIAGE_STUDY_SETTLE_SECONDS = 5
    spec = upload_study(orthanc, StudySpec())
    job = study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")

    waited = run(job).state
    make_due(job, settled_for=5)
    done = run(job)

    assert waited == JobState.QUEUED
    assert (done.state, done.error_code, done.error_message) == (JobState.DONE, "", "")


def test_a_study_the_pacs_vouches_complete_is_read_at_the_first_claim(
    orthanc,
    pacs_source,
    fake_models,
    settings,
):
    settings.TRIAGE_STUDY_SETTLE_SECONDS = 600
    spec = upload_study(orthanc, StudySpec())

    job = run(study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs", complete=True))

    assert (job.state, job.error_code, job.complete) == (JobState.DONE, "", True)
    assert TriageResult.objects.filter(study=job.study, is_current=True).count() == 1


def test_a_complete_notice_releases_a_job_that_waits_to_settle(
    orthanc,
    pacs_source,
    fake_models,
    settings,
):
    settings.TRIAGE_STUDY_SETTLE_SECONDS = 600
    spec = upload_study(orthanc, StudySpec())
    job = study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")
    waiting = run(job)
    waiting_state, waiting_for = waiting.state, (waiting.available_at - timezone.now()).total_seconds()

    study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs", complete=True)
    done = run(job)

    assert waiting_state == JobState.QUEUED
    assert waiting_for > 500
    assert (done.state, done.error_code) == (JobState.DONE, "")


def test_a_notify_without_complete_keeps_the_settle_wait(
    orthanc,
    pacs_source,
    fake_models,
    settings,
):
    settings.TRIAGE_STUDY_SETTLE_SECONDS = 600
    spec = upload_study(orthanc, StudySpec())

    job = run(study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs"))

    assert (job.state, job.error_code, job.complete) == (JobState.QUEUED, "settling", False)


def test_series_that_grows_between_routing_and_retrieval_is_requeued_not_rejected(
    orthanc,
    pacs_source,
    fake_models,
    no_settle,
    monkeypatch,
):
    from triage.ingest.dicomweb import Pacs

    spec = StudySpec(series=[SeriesSpec(slices=14)])
    upload_study(orthanc, spec, mutate=first(11))
    retrieve = Pacs.retrieve_series

    def rest_arrives_first(self, *args, **kwargs):
        monkeypatch.setattr(Pacs, "retrieve_series", retrieve)
        upload_study(orthanc, spec, mutate=after(11))
        return retrieve(self, *args, **kwargs)

    monkeypatch.setattr(Pacs, "retrieve_series", rest_arrives_first)
    job = study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")

    changed = run(job)
    changed_state, changed_message = snapshot(changed), changed.error_message
    make_due(job)
    done = run(job)

    assert changed_state == (JobState.QUEUED, "settling", None, 1)
    assert "11 instances when routed and 14 when retrieved" in changed_message
    assert snapshot(done) == (JobState.DONE, "", 14, 2)
    assert fake_models.calls == [("ich", (14, 32, 32))]


CTA = SeriesSpec(description="CTA HEAD NECK", contrast="IODINE", thickness=1.0, slices=50, size=16)


def test_finished_study_that_gets_a_new_series_is_queued_again_by_the_poller(
    orthanc,
    pacs_source,
    fake_models,
    no_settle,
):
    head = upload_study(orthanc, StudySpec())
    source_poll(source=pacs_source)
    job = run(TriageJob.objects.get())
    unchanged = source_poll(source=pacs_source)
    upload_study(orthanc, StudySpec(study_uid=head.study_uid, series=[CTA]))

    grown = source_poll(source=pacs_source)
    again = source_poll(source=pacs_source)
    make_due(job)
    job = run(job)

    assert unchanged.requeued == []
    assert grown.requeued == [head.study_uid]
    assert again.requeued == []
    assert snapshot(job) == (JobState.DONE, "", 62, 1)
    assert sorted(TriageResult.objects.filter(is_current=True).values_list("finding", flat=True)) == ["ich", "lvo"]
    assert ("lvo", (50, 16, 16)) in fake_models.calls


def untrained_weights_at(path: Path) -> None:
    """Real ICH network with random weights and its model card: what an admin installs."""
    import torch

    from inference.networks import DEFAULT_ARCHITECTURE, build_network

    architecture = DEFAULT_ARCHITECTURE["ich"]
    torch.manual_seed(0)
    torch.save(build_network(architecture).state_dict(), path)
    card = {"architecture": architecture, "name": "ich-installed", "version": "test", "threshold": 0.5}
    path.with_name(path.stem + ".card.json").write_text(json.dumps(card))


@pytest.fixture
def ich_weights_missing(db, tmp_path: Path) -> Path:
    path = tmp_path / "ich_site.pt"
    ModelConfig.objects.create(finding="ich", name="ich2d", version="1", weights_path=str(path), threshold=0.5)
    return path


def test_missing_weights_requeue_the_job_as_model_unavailable_until_an_admin_installs_them(
    orthanc,
    pacs_source,
    no_settle,
    ich_weights_missing,
    caplog,
):
    spec = upload_study(orthanc, StudySpec(accession="ACC77", patient_id="PID77"))
    job = study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")

    missing = run(job)
    missing_state, missing_message = snapshot(missing), missing.error_message
    delay = (missing.available_at - timezone.now()).total_seconds()
    untrained_weights_at(ich_weights_missing)
    make_due(job)
    installed = run(job)

    assert missing_state == (JobState.QUEUED, "model_unavailable", 12, 1)
    assert "The ich model cannot be loaded (weights_not_found)" in missing_message
    assert not any(secret in missing_message + caplog.text for secret in ("ACC77", "PID77", "Synthetic"))
    assert 25 <= delay <= 60
    assert (installed.state, installed.error_code) == (JobState.DONE, "")
    assert TriageResult.objects.get(study=job.study).model_version == "test"


def test_model_unavailable_fails_after_the_attempt_limit_and_the_worker_goes_on(
    orthanc,
    pacs_source,
    no_settle,
    ich_weights_missing,
    fake_models,
    monkeypatch,
    settings,
):
    from triage.ingest import runners

    settings.TRIAGE_JOB_MAX_ATTEMPTS = 2
    fake = runners.runner_load
    monkeypatch.setattr(runners, "runner_load", runner_load)  # the real loader, for the first study
    jobs = [
        study_request_triage(study_instance_uid=upload_study(orthanc, StudySpec()).study_uid, source_name="pacs")
        for _ in range(2)
    ]

    states = [run(jobs[0]).state]
    make_due(jobs[0])
    states.append(run(jobs[0]).state)
    monkeypatch.setattr(runners, "runner_load", fake)
    states.append(run(jobs[1]).state)

    assert states == [JobState.QUEUED, JobState.FAILED, JobState.DONE]
    assert jobs[0].error_code == "model_unavailable"


def test_a_missing_lvo_model_does_not_hold_back_the_bleed_result(
    orthanc,
    pacs_source,
    no_settle,
    fake_models,
    monkeypatch,
    tmp_path,
):
    from triage.ingest import runners

    fake = runners.runner_load
    monkeypatch.setattr(
        runners,
        "runner_load",
        lambda *, finding, **kw: (runner_load if finding == "lvo" else fake)(finding=finding, **kw),
    )
    ModelConfig.objects.create(
        finding="lvo", name="lvo3d", version="1", weights_path=str(tmp_path / "no.pt"), threshold=0.5
    )
    spec = upload_study(orthanc, StudySpec(series=[SeriesSpec(), CTA]))
    job = study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")

    job = run(job)

    assert (job.state, job.error_code) == (JobState.QUEUED, "model_unavailable")
    assert "The lvo model cannot be loaded" in job.error_message
    assert list(TriageResult.objects.filter(is_current=True).values_list("finding", flat=True)) == ["ich"]
    assert fake_models.calls == [("ich", (12, 32, 32))]

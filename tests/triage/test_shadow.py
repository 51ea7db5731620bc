"""Shadow runs in the pipeline: a candidate reads every routed series beside the live model, its result is stored
and goes nowhere else (worklist, WebSocket, FHIR outbox, PACS write-back), its failure leaves the live result
standing, and its cost is recorded and capped."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from django.utils import timezone

from tests.factories import JobFactory, SeriesFactory
from tests.triage.dicom_build import StudySpec
from tests.triage.ingest_helpers import FakeOutput, FakeRunner, upload_study
from tests.triage.writeback_helpers import deliver_due, grey_png
from triage.core.exceptions import ModelUnavailable
from triage.fhir.delivery import outbox_deliver_due
from triage.ingest import runners
from triage.ingest.pipeline import job_process
from triage.ingest.services import study_request_triage
from triage.ingest.shadow import shadow_cap_reached, shadow_run_series
from triage.models import (
    JobState,
    ModelConfig,
    ShadowModel,
    ShadowResult,
    ShadowRunStatus,
    TriageResult,
)
from worklist.models import WorklistItem

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_settle")]

SHADOW_VERSION = "7.7.7-shadow"
SHADOW_SCORE = 0.9731


class ShadowRunner:
    """The candidate: a distinctive score and version that must never surface outside its own table."""

    threshold = 0.4
    calls = 0
    fail_with: Exception | None = None

    def __init__(self, finding: str) -> None:
        self.finding = finding

    def run(self, volume_hu, spacing_mm) -> FakeOutput:
        ShadowRunner.calls += 1
        if ShadowRunner.fail_with is not None:
            raise ShadowRunner.fail_with
        return FakeOutput(self.finding, "candidate", SHADOW_VERSION, SHADOW_SCORE, 0.4, True)


@pytest.fixture
def models(monkeypatch):
    """Live weights load the deterministic FakeRunner (scores about 0.26 here: negative), the shadow's weights the
    ShadowRunner; ``unavailable`` makes the shadow's weights fail to load."""
    FakeRunner.calls, ShadowRunner.calls, ShadowRunner.fail_with = [], 0, None
    state = SimpleNamespace(unavailable=False)

    def load(*, finding, weights, **_):
        if weights and weights.endswith("candidate.pt"):
            if state.unavailable:
                raise ModelUnavailable(finding, "weights_hash_mismatch", "SHA-256 differs")
            return ShadowRunner(finding)
        return FakeRunner(finding)

    monkeypatch.setattr(runners, "runner_load", load)
    monkeypatch.setattr(runners, "key_image", lambda *, volume, output: b"\x89PNG shadow")
    monkeypatch.setattr("triage.ingest.pipeline.key_image", lambda *, volume, output: grey_png())
    return state


@pytest.fixture
def candidate(db, settings, tmp_path):
    settings.TRIAGE_MODEL_DIR = str(tmp_path)
    ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.5)
    return ShadowModel.objects.create(
        finding="ich", name="candidate", version=SHADOW_VERSION, weights_path="candidate.pt",
        weights_sha256="0" * 64, threshold=0.4,
    )  # fmt: skip


def run_study(orthanc, accession: str) -> str:
    spec = upload_study(orthanc, StudySpec(accession=accession, patient_id=f"P{accession}"))
    job = study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs")
    return job_process(job_id=job.pk, worker_id="test-worker")


class RecordingLayer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def group_send(self, group: str, message: dict) -> None:
        self.sent.append(message["text"])


def test_shadow_result_is_stored_and_reaches_no_worklist_socket_fhir_or_pacs(
    orthanc, pacs_source, endpoint, models, candidate, radiologist_client, monkeypatch,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    pacs_source.write_back = True
    pacs_source.save()
    layer = RecordingLayer()
    monkeypatch.setattr("worklist.events.get_channel_layer", lambda: layer)

    with django_capture_on_commit_callbacks(execute=True):
        state = run_study(orthanc, "SH1")
    deliver_due()
    sent_to_emr = outbox_deliver_due(limit=10).sent

    shadow = ShadowResult.objects.get()
    live = TriageResult.objects.get()
    item = WorklistItem.objects.get()
    api = radiologist_client.get("/api/v1/worklist/")
    detail = radiologist_client.get(f"/api/v1/studies/{live.study.study_instance_uid}/")
    report = endpoint_report(endpoint, live)
    stored_srs = orthanc_srs(orthanc)
    assert state == JobState.DONE
    assert (shadow.status, shadow.score, shadow.positive, shadow.model_version) == ("done", SHADOW_SCORE, True,
                                                                                    SHADOW_VERSION)  # fmt: skip
    assert (shadow.study_id, shadow.series_id) == (live.study_id, live.series_id)
    assert (live.model_version, live.positive) == ("1.0", False)
    assert (item.critical, item.ai_priority) == (False, 0.0)  # the shadow's positive call changes no priority
    assert (sent_to_emr, len(stored_srs)) == (1, 1)
    assert "fake" in report  # the live model is named in the EMR report
    seen = [report, *stored_srs, *layer.sent, api.content.decode(), detail.content.decode()]
    assert detail.status_code == 200
    assert layer.sent
    assert "SH1" in api.content.decode()  # the study is listed, with its live result
    assert not [text for text in seen if SHADOW_VERSION in text or "0.973" in text or "candidate" in text]


def endpoint_report(endpoint, live: TriageResult) -> str:
    """What the EMR holds for the finding: the DiagnosticReport as stored by the FHIR server."""
    from triage.fhir import resources as fhir

    report_id = fhir.report_id(study_instance_uid=live.study.study_instance_uid, finding=live.finding)
    response = requests.get(f"{endpoint.base_url}/DiagnosticReport/{report_id}", timeout=10)
    response.raise_for_status()
    return response.text


def orthanc_srs(orthanc) -> list[str]:
    """Every structured report the PACS now holds, as text (the bytes decoded leniently)."""
    texts = []
    for instance in requests.get(f"{orthanc.url}/instances", timeout=10).json():
        tags = requests.get(f"{orthanc.url}/instances/{instance}/simplified-tags", timeout=10).json()
        if tags.get("Modality") == "SR":
            raw = requests.get(f"{orthanc.url}/instances/{instance}/file", timeout=10).content
            texts.append(raw.decode("latin-1"))
    return texts


def test_a_shadow_model_that_cannot_load_is_recorded_and_the_live_result_stands(
    orthanc, pacs_source, models, candidate
):
    models.unavailable = True

    state = run_study(orthanc, "SH2")

    shadow = ShadowResult.objects.get()
    assert state == JobState.DONE
    assert TriageResult.objects.filter(is_current=True).count() == 1
    assert (shadow.status, shadow.error_code, shadow.score) == (ShadowRunStatus.FAILED, "model_unavailable", None)


def test_a_shadow_model_that_crashes_is_recorded_and_the_live_result_stands(orthanc, pacs_source, models, candidate):
    ShadowRunner.fail_with = RuntimeError("CUDA out of memory")

    state = run_study(orthanc, "SH3")

    shadow = ShadowResult.objects.get()
    assert state == JobState.DONE
    assert TriageResult.objects.filter(is_current=True).count() == 1
    assert (shadow.status, shadow.error_code) == (ShadowRunStatus.FAILED, "shadow_error")
    assert "CUDA" not in shadow.error_message  # only the exception type is kept


def test_without_a_shadow_model_nothing_extra_runs(orthanc, pacs_source, models, db):
    state = run_study(orthanc, "SH4")

    assert state == JobState.DONE
    assert (ShadowResult.objects.count(), ShadowRunner.calls) == (0, 0)


def test_a_withdrawn_candidate_no_longer_runs(orthanc, pacs_source, models, candidate):
    candidate.state = "withdrawn"
    candidate.save()

    run_study(orthanc, "SH5")

    assert (ShadowResult.objects.count(), ShadowRunner.calls) == (0, 0)


# --- cost and cap ------------------------------------------------------------------------------------------------

VOLUME = SimpleNamespace(hu=np.zeros((4, 8, 8), dtype=np.int16), spacing_mm=(5.0, 0.5, 0.5))


def past_run(candidate, *, seconds: float, minutes_ago: float, status: str = ShadowRunStatus.DONE) -> ShadowResult:
    series = SeriesFactory()
    return ShadowResult.objects.create(
        shadow_model=candidate, study=series.study, series=series, finding="ich", status=status,
        model_name="candidate", model_version=SHADOW_VERSION, score=0.5, threshold=0.4, positive=True,
        seconds=seconds, created_at=timezone.now() - timedelta(minutes=minutes_ago),
    )  # fmt: skip


def test_each_run_records_its_inference_seconds(models, candidate):
    series = SeriesFactory()

    result = shadow_run_series(job=JobFactory(study=series.study), series=series, volume=VOLUME)

    assert result.status == ShadowRunStatus.DONE
    assert result.seconds >= 0.0
    assert result.load_seconds >= 0.0
    assert result.key_image_png == b"\x89PNG shadow"


def test_runs_over_the_hourly_cap_are_skipped_without_running_the_model(models, candidate, settings):
    settings.TRIAGE_SHADOW_MAX_PER_HOUR = 2
    past_run(candidate, seconds=1.0, minutes_ago=10)
    past_run(candidate, seconds=1.0, minutes_ago=70)  # older than the hour: not counted
    series = SeriesFactory()
    job = JobFactory(study=series.study)

    first = shadow_run_series(job=job, series=series, volume=VOLUME)
    second = shadow_run_series(job=job, series=series, volume=VOLUME)

    assert first.status == ShadowRunStatus.DONE
    assert (second.status, second.error_code, second.score) == (ShadowRunStatus.SKIPPED, "shadow_cap", None)
    assert "TRIAGE_SHADOW_MAX_PER_HOUR=2" in second.error_message
    assert ShadowRunner.calls == 1


def test_the_seconds_budget_caps_shadow_runs(models, candidate, settings):
    settings.TRIAGE_SHADOW_MAX_SECONDS_PER_HOUR = 30.0
    past_run(candidate, seconds=20.0, minutes_ago=5)
    past_run(candidate, seconds=11.0, minutes_ago=50, status=ShadowRunStatus.FAILED)

    assert "TRIAGE_SHADOW_MAX_SECONDS_PER_HOUR=30" in shadow_cap_reached()


def test_skipped_runs_do_not_spend_the_budget(models, candidate, settings):
    settings.TRIAGE_SHADOW_MAX_PER_HOUR = 1
    past_run(candidate, seconds=50.0, minutes_ago=5, status=ShadowRunStatus.SKIPPED)

    assert shadow_cap_reached() is None


def test_no_cap_by_default(models, candidate, settings):
    for minutes in range(5):
        past_run(candidate, seconds=100.0, minutes_ago=minutes)

    assert (settings.TRIAGE_SHADOW_MAX_PER_HOUR, settings.TRIAGE_SHADOW_MAX_SECONDS_PER_HOUR) == (0, 0.0)
    assert shadow_cap_reached() is None


# --- real weights, real torch ------------------------------------------------------------------------------------


@pytest.fixture
def shipped_copy(settings, tmp_path):
    """The shipped ICH weights under TRIAGE_MODEL_DIR with a card of their own version, as a site would bring them."""
    import shutil

    from inference.loader import shipped_weights
    from inference.modelcard import card_paths

    settings.TRIAGE_MODEL_DIR, settings.TRIAGE_TORCH_THREADS = str(tmp_path), 1
    source = shipped_weights("ich")
    weights = tmp_path / "ich-candidate.pt"
    shutil.copyfile(source, weights)
    card = json.loads(card_paths(source)[0].read_text(encoding="utf-8"))
    card["version"] = "3.0.0-candidate"
    card_paths(weights)[0].write_text(json.dumps(card), encoding="utf-8")
    return weights


def head_volume() -> SimpleNamespace:
    z, y, x = np.ogrid[:20, :96, :96]
    inside = ((z - 9.5) / 8.4) ** 2 + ((y - 47.5) / 40.3) ** 2 + ((x - 47.5) / 40.3) ** 2 < 1
    hu = np.where(inside, 32.0, -1000.0).astype(np.float32)
    return SimpleNamespace(hu=hu, spacing_mm=(5.0, 2.0, 2.0))


def test_registered_weights_run_in_shadow_pinned_by_their_hash(db, shipped_copy, site_admin):
    from inference.modelcard import sha256_file
    from triage.governance.shadow_services import shadow_register

    shadow_register(finding="ich", weights="ich-candidate.pt", sha256=sha256_file(shipped_copy), actor=site_admin)
    series = SeriesFactory()

    result = shadow_run_series(job=JobFactory(study=series.study), series=series, volume=head_volume())

    assert result.status == ShadowRunStatus.DONE, result.error_message
    assert 0.0 <= result.score <= 1.0
    assert (result.model_version, result.advisory) == ("3.0.0-candidate", True)
    assert result.seconds > 0.0
    assert result.key_image_png.startswith(b"\x89PNG")


def test_weights_swapped_after_registration_fail_the_shadow_run_only(db, shipped_copy, site_admin):
    from inference.modelcard import sha256_file
    from triage.governance.shadow_services import shadow_register

    shadow_register(finding="ich", weights="ich-candidate.pt", sha256=sha256_file(shipped_copy), actor=site_admin)
    shipped_copy.write_bytes(shipped_copy.read_bytes() + b"\0")
    series = SeriesFactory()

    result = shadow_run_series(job=JobFactory(study=series.study), series=series, volume=head_volume())

    assert (result.status, result.error_code, result.score) == (ShadowRunStatus.FAILED, "model_unavailable", None)
    assert "weights_hash_mismatch" in result.error_message

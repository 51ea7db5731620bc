"""Shadow runs in a worker: a candidate model read on the volume the live model just read, after the live result is
committed, with its cost recorded and capped. Nothing here can fail or delay a live result (docs/shadow-mode.md)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Sum
from django.utils import timezone

from triage.core.exceptions import ModelUnavailable
from triage.ingest import runners
from triage.ingest.services import result_details
from triage.models import Series, ShadowModel, ShadowResult, ShadowRunStatus, ShadowState, TriageJob

if TYPE_CHECKING:
    from inference.dicom import Volume
    from inference.runner import TriageOutput

logger = logging.getLogger(__name__)

CAP_WINDOW = timedelta(hours=1)


def shadow_candidate(*, finding: str) -> ShadowModel | None:
    """The version registered as shadow for the finding, if any."""
    return ShadowModel.objects.filter(finding=finding, state=ShadowState.SHADOW).first()


def shadow_wanted(*, finding: str) -> bool:
    """Keep the volume for a shadow run? A database hiccup here answers no rather than touch the live job."""
    try:
        return ShadowModel.objects.filter(finding=finding, state=ShadowState.SHADOW).exists()
    except DatabaseError:
        return False


def shadow_cap_reached() -> str | None:
    """Why the next shadow run must be skipped (TRIAGE_SHADOW_MAX_PER_HOUR, _MAX_SECONDS_PER_HOUR), else None.

    Runs and seconds are counted over the last hour across all workers; each worker checks before it runs, so
    workers running at once can overshoot by one run each.
    """
    max_runs, max_seconds = settings.TRIAGE_SHADOW_MAX_PER_HOUR, settings.TRIAGE_SHADOW_MAX_SECONDS_PER_HOUR
    if not max_runs and not max_seconds:
        return None
    ran = ShadowResult.objects.filter(
        created_at__gte=timezone.now() - CAP_WINDOW, status__in=[ShadowRunStatus.DONE, ShadowRunStatus.FAILED]
    ).aggregate(runs=Count("id"), seconds=Sum("seconds"), load=Sum("load_seconds"))
    if max_runs and ran["runs"] >= max_runs:
        return f"{ran['runs']} shadow runs in the last hour reach TRIAGE_SHADOW_MAX_PER_HOUR={max_runs}."
    spent = (ran["seconds"] or 0.0) + (ran["load"] or 0.0)
    if max_seconds and spent >= max_seconds:
        return (
            f"{spent:.1f} s of shadow inference in the last hour reach "
            f"TRIAGE_SHADOW_MAX_SECONDS_PER_HOUR={max_seconds:g}."
        )
    return None


def shadow_run_pending(*, job: TriageJob, pending: list[tuple[Series, Volume]]) -> list[ShadowResult]:
    """Run the shadow candidates on volumes whose live results are already committed. Never raises."""
    recorded = []
    for series, volume in pending:
        result = shadow_run_series(job=job, series=series, volume=volume)
        if result is not None:
            recorded.append(result)
    return recorded


def shadow_run_series(*, job: TriageJob, series: Series, volume: Volume) -> ShadowResult | None:
    """One shadow run, recorded as done, failed or skipped; None when there is no candidate or nothing could be
    recorded. The broad catch is this boundary's: a candidate's failure is recorded, never passed on."""
    try:
        candidate = shadow_candidate(finding=series.routed_model)
        if candidate is None:
            return None
        skip = shadow_cap_reached()
        if skip is not None:
            return _record(candidate, job, series, status=ShadowRunStatus.SKIPPED, error_code="shadow_cap", error=skip)
        return _run(candidate, job, series, volume)
    except Exception as err:  # noqa: BLE001 - the shadow boundary: log the type only, never patient data
        logger.warning("job %s: shadow run not recorded (%s)", job.pk, type(err).__name__)
        return None


def _run(candidate: ShadowModel, job: TriageJob, series: Series, volume: Volume) -> ShadowResult:
    started = time.perf_counter()
    try:
        runner = runners.runner_load(
            finding=candidate.finding,
            weights=runners.weights_path(finding=candidate.finding, configured=candidate.weights_path),
            sha256=candidate.weights_sha256,
            device=settings.TRIAGE_DEVICE,
        )
        loaded = time.perf_counter()
        output = runner.run(volume.hu, volume.spacing_mm)
        ran = time.perf_counter()
    except ModelUnavailable as err:
        return _failed(candidate, job, series, started, "model_unavailable", err.message)
    except Exception as err:  # noqa: BLE001 - the shadow boundary: a candidate that crashes is a recorded failure
        logger.warning("job %s: shadow %s %s failed with %s", job.pk, candidate.finding, candidate.version,
                       type(err).__name__)  # fmt: skip
        return _failed(candidate, job, series, started, "shadow_error", f"Unexpected {type(err).__name__}.")
    return _record(
        candidate, job, series, status=ShadowRunStatus.DONE, output=output, png=_key_image(volume, output),
        seconds=ran - loaded, load_seconds=loaded - started,
    )  # fmt: skip


def _key_image(volume: Volume, output: TriageOutput) -> bytes | None:
    try:
        return runners.key_image(volume=volume, output=output)
    except Exception as err:  # noqa: BLE001 - a key image is a nicety; the shadow score is kept without it
        logger.info("shadow key image not rendered (%s)", type(err).__name__)
        return None


def _failed(
    candidate: ShadowModel, job: TriageJob, series: Series, started: float, code: str, message: str
) -> ShadowResult:
    return _record(
        candidate, job, series, status=ShadowRunStatus.FAILED, error_code=code, error=message,
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def _record(
    candidate: ShadowModel,
    job: TriageJob,
    series: Series,
    *,
    status: str,
    output: TriageOutput | None = None,
    png: bytes | None = None,
    seconds: float = 0.0,
    load_seconds: float = 0.0,
    error_code: str = "",
    error: str = "",
) -> ShadowResult:
    score = None if output is None else float(output.score)
    return ShadowResult.objects.create(
        shadow_model=candidate,
        study_id=series.study_id,
        series=series,
        job=job,
        finding=candidate.finding,
        status=status,
        model_name=candidate.name,
        model_version=candidate.version,
        score=score,
        threshold=candidate.threshold,
        positive=None if score is None else score >= candidate.threshold,
        seconds=round(seconds, 4),
        load_seconds=round(load_seconds, 4),
        error_code=error_code,
        error_message=error[:500],
        details={} if output is None else result_details(series=series, output=output),
        key_image_png=png,
    )

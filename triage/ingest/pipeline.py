"""The stages of one triage job: discover and route series, retrieve, assemble, infer, record.

Settling, outcomes and retries: docs/architecture.md (A job's stages).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from triage.core.audit import audit_record
from triage.core.exceptions import ModelUnavailable, PacsError, TriageError
from triage.core.workers import this_worker_id
from triage.ingest import jobs
from triage.ingest.dicomweb import (
    NUMBER_OF_SERIES_INSTANCES,
    Pacs,
    PacsNotFound,
    PacsRequestRejected,
    SeriesTooLarge,
    json_int,
    json_value,
)
from triage.ingest.routing import default_routing_rules, route_series, series_tags_from_dicom_json
from triage.ingest.runners import key_image, model_runner, runner_infer
from triage.ingest.services import results_record
from triage.ingest.shadow import shadow_run_pending, shadow_wanted
from triage.ingest.tags import series_defaults, study_tags_apply
from triage.models import JobState, RoutingRule, Series, Study, TriageJob

if TYPE_CHECKING:
    from inference.dicom import Volume
    from inference.runner import TriageOutput

logger = logging.getLogger(__name__)

STUDY_NOT_FOUND_RETRIES = 3


class StudyUnsettled(TriageError):
    """The study changed while the job was reading it: try again once it has settled."""

    code = "study_unsettled"


@dataclass(frozen=True)
class Arrival:
    """What the job saw of the study on the PACS: its instance count, since when, and how long is left to wait."""

    instance_count: int | None
    since: datetime
    wait_seconds: float


@dataclass
class Outcome:
    outputs: list[tuple[Series, TriageOutput, bytes | None]] = field(default_factory=list)
    rejections: list[tuple[Series, str, str]] = field(default_factory=list)
    unavailable: list[ModelUnavailable] = field(default_factory=list)
    routed: int = 0
    checked: int = 0
    notes: list[str] = field(default_factory=list)
    # Volumes kept for the shadow candidates, read only after the live results are committed.
    shadow: list[tuple[Series, Volume]] = field(default_factory=list)


@contextmanager
def stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 4)


def job_process(*, job_id: int, worker_id: str | None = None) -> str | None:
    """Claim the job and take it as far as it goes. Returns its final (or re-queued) state, None if not claimed."""
    worker_id = worker_id or this_worker_id("ingest")
    job = jobs.job_claim(job_id=job_id, worker_id=worker_id)
    if job is None:
        return None
    timings: dict[str, float] = dict(job.timings or {})
    try:
        return _job_run(job, worker_id, timings)
    except jobs.LeaseLost:
        logger.warning("job %s: lease lost to another worker; stopping", job_id)
        return None
    except PacsError as err:
        return jobs.job_retry_later(
            job=job, worker_id=worker_id, error_code=err.code, error_message=err.message, timings=timings
        )
    except StudyUnsettled as err:
        return _job_wait_after_change(job, worker_id, timings, err)
    except DatabaseError as err:
        # The database went away mid-job: not the study's fault. The lease expires and the sweeper queues it again.
        logger.warning(
            "job %s: stopped by a database error (%s); it is retried after its lease", job_id, type(err).__name__
        )
        return None
    except Exception as err:  # noqa: BLE001 - the worker's loop boundary: record, never crash, never log patient data
        logger.error("job %s failed with an unexpected %s", job_id, type(err).__name__)
        jobs.job_finish(
            job=job,
            worker_id=worker_id,
            state=JobState.FAILED,
            error_code="internal_error",
            error_message=f"Unexpected {type(err).__name__}; see the worker log for job {job_id}.",
            timings=timings,
        )
        return JobState.FAILED


def _job_run(job: TriageJob, worker_id: str, timings: dict[str, float]) -> str:
    study = job.study
    if study.source is None:
        return _job_end(job, worker_id, timings, JobState.FAILED, "no_source", "No DICOMweb source is configured.")
    pacs = Pacs.for_source(study.source)
    with stage(timings, "discover"):
        found = pacs.search_series(study.study_instance_uid)
        arrival = study_arrival(job=job, pacs=pacs, found=found) if _has_ct(found) else None
    if arrival is not None and arrival.wait_seconds > 0:
        return _job_wait_to_settle(job, worker_id, timings, arrival)
    if arrival is not None:
        jobs.job_settle_note(job=job, worker_id=worker_id, instance_count=arrival.instance_count, since=arrival.since)
    with stage(timings, "discover"):
        routed = study_discover(job=job, worker_id=worker_id, pacs=pacs, found=found)
    if routed is None:
        return _job_not_found(job, worker_id, timings)
    outcome = Outcome(routed=len(routed), checked=Series.objects.filter(study=study).count())
    for series in routed:
        series_triage(job=job, worker_id=worker_id, pacs=pacs, series=series, outcome=outcome, timings=timings)
    state = _job_conclude(job, worker_id, timings, outcome)
    shadow_run_pending(job=job, pending=outcome.shadow)
    return state


def study_arrival(*, job: TriageJob, pacs: Pacs, found: list[dict]) -> Arrival:
    """How long the study's instance count has held, and how long is left until it counts as settled.

    The study-level count is what the poller sees too (it re-queues a finished study that grows); the sum over the
    series query stands in for PACSes that do not report it.
    """
    count = pacs.study_instance_count(job.study.study_instance_uid)
    if count is None:
        counts = [json_int(item, NUMBER_OF_SERIES_INSTANCES) for item in found]
        known = [c for c in counts if c is not None]
        count = sum(known) if len(known) == len(counts) else None
    now = timezone.now()
    since = job.instance_count_since
    if since is None or count != job.instance_count:
        since = now
    settle = 0.0 if job.complete else settings.TRIAGE_STUDY_SETTLE_SECONDS
    wait = settle - (now - since).total_seconds()
    return Arrival(instance_count=count, since=since, wait_seconds=max(0.0, wait))


def _job_wait_to_settle(job: TriageJob, worker_id: str, timings: dict[str, float], arrival: Arrival) -> str:
    settle = settings.TRIAGE_STUDY_SETTLE_SECONDS
    message = (
        f"Waiting for the study to finish arriving: {arrival.instance_count} instance(s), "
        f"unchanged for {settle - arrival.wait_seconds:.0f} of {settle:.0f} s."
    )
    return jobs.job_wait_to_settle(
        job=job, worker_id=worker_id, instance_count=arrival.instance_count, since=arrival.since,
        available_at=timezone.now() + timedelta(seconds=arrival.wait_seconds), message=message, timings=timings,
    )  # fmt: skip


def _job_wait_after_change(job: TriageJob, worker_id: str, timings: dict[str, float], err: StudyUnsettled) -> str:
    """The count is unknown again, so the next claim starts the settle time afresh. The claim counts as an
    attempt: a PACS whose counts never match what it serves cannot hold a job in the queue for ever."""
    now = timezone.now()
    logger.info("job %s: the study changed while it was read; waiting for it to settle", job.pk)
    return jobs.job_wait_to_settle(
        job=job, worker_id=worker_id, instance_count=None, since=now,
        available_at=now + timedelta(seconds=settings.TRIAGE_STUDY_SETTLE_SECONDS),
        message=f"{err.message} Waiting for the study to settle.", timings=timings, refund=False,
    )  # fmt: skip


def _has_ct(found: list[dict]) -> bool:
    return any(_modality(item) == "CT" for item in found)


def study_discover(
    *, job: TriageJob, worker_id: str, pacs: Pacs, found: list[dict] | None = None
) -> list[Series] | None:
    """Read one instance's metadata of each CT series (from ``found``, the series query, else QIDO now), store tags
    and routing. None: the study is not on the PACS."""
    study = job.study
    if found is None:
        found = pacs.search_series(study.study_instance_uid)
    found = [s for s in found if _modality(s) == "CT"]
    rows: list[Series] = []
    first_instance: dict | None = None
    for item in found:
        jobs.job_lease_renew(job=job, worker_id=worker_id)
        series_uid = json_value(item, "0020000E")
        instance = pacs.first_instance_metadata(study.study_instance_uid, series_uid) if series_uid else None
        if instance is None:
            continue
        first_instance = first_instance or instance
        stored = _series_store(study=study, series_json=item, instance=instance)
        if stored is None:
            logger.warning("job %s: a series whose UID belongs to another study was skipped", job.pk)
            continue
        rows.append(stored)
    if first_instance is None:
        return None
    study_tags_apply(study=study, metadata=[first_instance])
    return route_study(study=study, series=rows)


def _modality(item: dict) -> str:
    return str(json_value(item, "00080060") or "").upper()


@transaction.atomic
def _series_store(*, study: Study, series_json: dict, instance: dict) -> Series | None:
    """Upsert the series with its tags and its routing decision (kept for every series, routed or not).

    None when the SeriesInstanceUID already belongs to another study: a series UID is unique across studies, so the
    PACS holds conflicting data; the series stays with the study that had it first and is not read for this one.
    """
    tags = series_tags_from_dicom_json({}, series_json, instance)
    if Series.objects.filter(series_instance_uid=tags.series_instance_uid).exclude(study=study).exists():
        return None
    decision = route_series(series=tags, rules=routing_rules())
    defaults = {
        **series_defaults([instance]),
        "study": study,
        "instance_count": tags.instance_count,
        "routed_model": decision.model,
        "routing_reason": decision.reason[:255],
    }
    series, _ = Series.objects.update_or_create(series_instance_uid=tags.series_instance_uid, defaults=defaults)
    series.discovered_instance = instance
    return series


def routing_rules() -> list:
    """The admins' rules; the shipped defaults only while the table is empty (disabled rules stay disabled)."""
    rules = list(RoutingRule.objects.all())
    return rules or default_routing_rules()


def route_study(*, study: Study, series: list[Series]) -> list[Series]:
    """One series per finding: for ICH the thickest routed series (standard 5 mm reads, least data), for LVO the
    thinnest (CTA needs thin slices); ties go to the lower series number."""
    chosen: dict[str, Series] = {}
    for row in sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0)):
        if not row.routed_model:
            continue
        best = chosen.get(row.routed_model)
        if best is None or _better(row, best):
            chosen[row.routed_model] = row
    return [chosen[finding] for finding in sorted(chosen)]


def _better(candidate: Series, best: Series) -> bool:
    mine, theirs = candidate.slice_thickness_mm, best.slice_thickness_mm
    if mine is None or theirs is None or mine == theirs:
        return False
    return mine > theirs if candidate.routed_model == "ich" else mine < theirs


def series_volume(*, pacs: Pacs, series: Series, instance: dict | None = None, last_try: bool = True) -> Volume:
    """Retrieve one series in its stored transfer syntax and assemble its HU volume, within the size limits.

    A series that holds another number of instances than it did when routed is still changing: StudyUnsettled,
    unless this is the job's ``last_try``, when what was retrieved is read as it is.
    """
    from inference.dicom import VolumeError, assemble_volume, check_series_size

    max_bytes, max_instances = settings.TRIAGE_MAX_SERIES_BYTES, settings.TRIAGE_MAX_SERIES_INSTANCES
    if instance is not None and series.instance_count:
        rows, columns = _int_tag(instance, "00280010"), _int_tag(instance, "00280011")
        if rows and columns:
            check_series_size(
                instances=series.instance_count,
                rows=rows,
                columns=columns,
                max_bytes=max_bytes,
                max_instances=max_instances,
            )
    try:
        datasets = pacs.retrieve_series(
            series.study.study_instance_uid, series.series_instance_uid, max_instances=max_instances
        )
    except SeriesTooLarge as err:  # or InstanceTooLarge: its own code
        raise VolumeError(err.code, err.message) from None
    if series.instance_count and len(datasets) != series.instance_count and not last_try:
        raise StudyUnsettled(
            f"A series held {series.instance_count} instances when routed and {len(datasets)} when retrieved."
        )
    return assemble_volume(
        datasets,
        max_bytes=max_bytes,
        max_instances=max_instances,
        max_instance_bytes=settings.TRIAGE_MAX_INSTANCE_BYTES,
    )


def _int_tag(item: dict, tag: str) -> int | None:
    values = item.get(tag, {}).get("Value") or [None]
    try:
        return int(values[0])
    except (TypeError, ValueError):
        return None


def series_triage(
    *, job: TriageJob, worker_id: str, pacs: Pacs, series: Series, outcome: Outcome, timings: dict[str, float]
) -> None:
    """Retrieve, assemble and run one routed series; a bad series is recorded as rejected and skipped.

    The model is loaded first, so a disabled or unavailable model costs no retrieval.
    """
    from inference.dicom import VolumeError

    jobs.job_lease_renew(job=job, worker_id=worker_id, state=JobState.FETCHING)
    try:
        with stage(timings, "model"), jobs.lease_kept(job=job, worker_id=worker_id):
            runner = model_runner(finding=series.routed_model)
    except ModelUnavailable as err:
        outcome.unavailable.append(err)
        return
    if runner is None:
        outcome.notes.append(f"The {series.routed_model} model is disabled.")
        return
    try:
        with stage(timings, "fetch"), jobs.lease_kept(job=job, worker_id=worker_id):
            volume = series_volume(
                pacs=pacs,
                series=series,
                instance=series.discovered_instance,
                last_try=job.attempts >= settings.TRIAGE_JOB_MAX_ATTEMPTS,
            )
    except VolumeError as err:
        outcome.rejections.append((series, err.code, err.message))
        return
    except (PacsNotFound, PacsRequestRejected) as err:
        outcome.rejections.append((series, err.code, err.message))
        return
    jobs.job_lease_renew(job=job, worker_id=worker_id, state=JobState.INFERRING)
    with stage(timings, "infer"), jobs.lease_kept(job=job, worker_id=worker_id):
        output = runner_infer(runner=runner, volume=volume, source=job.study.source)
    with stage(timings, "key_image"), jobs.lease_kept(job=job, worker_id=worker_id):
        png = key_image(volume=volume, output=output)
    outcome.outputs.append((series, output, png))
    if shadow_wanted(finding=series.routed_model):
        outcome.shadow.append((series, volume))


def _job_not_found(job: TriageJob, worker_id: str, timings: dict[str, float]) -> str:
    """The PACS has no CT series for the study: maybe not arrived yet, so retry a few times, then reject."""
    if job.pacs_failures + 1 < STUDY_NOT_FOUND_RETRIES:
        raise PacsError("The PACS has no CT series for this study (yet).", code="study_not_found")
    return _job_end(job, worker_id, timings, JobState.REJECTED, "study_not_found", "The PACS has no CT series for it.")


def _job_conclude(job: TriageJob, worker_id: str, timings: dict[str, float], outcome: Outcome) -> str:
    if outcome.routed == 0:
        message = f"No series matched a routing rule ({outcome.checked} CT series checked)."
        return _job_end(job, worker_id, timings, JobState.DONE, "no_routable_series", message, record=[])
    if outcome.unavailable:
        return _job_retry_models(job, worker_id, timings, outcome)
    if not outcome.outputs and outcome.rejections:
        _, code, message = outcome.rejections[0]
        return _job_end(job, worker_id, timings, JobState.REJECTED, code, message, record=[])
    notes = [f"{s.routed_model}: {code}: {message}" for s, code, message in outcome.rejections] + outcome.notes
    code = outcome.rejections[0][1] if outcome.rejections else ""
    return _job_end(job, worker_id, timings, JobState.DONE, code, " ".join(notes), record=outcome.outputs)


def _job_retry_models(job: TriageJob, worker_id: str, timings: dict[str, float], outcome: Outcome) -> str:
    """Some model could not be loaded. The findings that could be run are recorded now (a missing LVO model must
    not hold back a bleed), and the job is retried later for the rest; at the attempt limit it ends as it stands."""
    err = outcome.unavailable[0]
    message = " ".join(e.message for e in outcome.unavailable)
    logger.warning("job %s: %s", job.pk, message)
    if job.attempts >= settings.TRIAGE_JOB_MAX_ATTEMPTS:
        state = JobState.DONE if outcome.outputs else JobState.FAILED
        return _job_end(job, worker_id, timings, state, err.code, message, record=outcome.outputs)
    with transaction.atomic():
        jobs.job_lock_held(job=job, worker_id=worker_id)
        if outcome.outputs:
            with stage(timings, "record"):
                results_record(job=job, outputs=outcome.outputs)
        return jobs.job_retry_model(
            job=job, worker_id=worker_id, error_code=err.code, error_message=message, timings=timings
        )


def _job_end(
    job: TriageJob,
    worker_id: str,
    timings: dict[str, float],
    state: str,
    code: str,
    message: str,
    *,
    record: list | None = None,
) -> str:
    """Final state, and results when ``record`` is given, in one transaction that checks the lease is still ours."""
    with transaction.atomic():
        jobs.job_lock_held(job=job, worker_id=worker_id)
        if record is not None:
            with stage(timings, "record"):
                results_record(job=job, outputs=record)
        jobs.job_finish(
            job=job, worker_id=worker_id, state=state, error_code=code, error_message=message, timings=timings
        )  # fmt: skip
        audit_record(action=f"job.{state}", obj=job, data={"error_code": code, "attempts": job.attempts})
    logger.info("job %s %s%s", job.pk, state, f" ({code})" if code else "")
    return state

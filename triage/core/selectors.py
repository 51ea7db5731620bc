"""Reads for the pipeline, already scoped to what the caller may see."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Max, Min

from triage.models import DicomWebSource, ModelConfig, ThresholdOverride, WorkerHeartbeat


def worker_heartbeat_latest() -> datetime | None:
    return WorkerHeartbeat.objects.aggregate(latest=Max("last_seen"))["latest"]


def task_queue_oldest_ready_enqueued_at() -> datetime | None:
    """When the oldest task still waiting for a worker was enqueued: a stalled queue means no task worker runs."""
    from django_tasks_db.models import DBTaskResult, get_date_max

    # A task scheduled for later waits from its run_after, not from when it was first enqueued.
    ready = DBTaskResult.objects.ready()
    unscheduled = ready.filter(run_after=get_date_max()).aggregate(oldest=Min("enqueued_at"))["oldest"]
    scheduled = ready.exclude(run_after=get_date_max()).aggregate(oldest=Min("run_after"))["oldest"]
    return min((t for t in (unscheduled, scheduled) if t is not None), default=None)


def threshold_for(*, finding: str, source: DicomWebSource | None) -> float | None:
    """The operating point in force for a study from ``source``: the source's override, else the model's threshold.

    None when no ModelConfig exists for the finding (the model card's threshold then applies).
    """
    config = ModelConfig.objects.filter(finding=finding).first()
    if config is None:
        return None
    if source is not None:
        override = ThresholdOverride.objects.filter(model=config, source=source).values_list("threshold", flat=True)
        if override:
            return float(override[0])
    return float(config.threshold)


def model_config_for(*, finding: str) -> ModelConfig | None:
    return ModelConfig.objects.filter(finding=finding).first()

"""Routing rules, model configuration and thresholds, triage jobs and their results."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from triage.core.validators import validate_regex
from triage.models.core import DicomWebSource, Finding, Series, Study


class ContrastRequirement(models.TextChoices):
    ANY = "any", "Any"
    REQUIRED = "required", "Contrast agent present"
    ABSENT = "absent", "No contrast agent"


class RoutingRule(models.Model):
    """Sends a series to a model when every condition set on it matches. Lowest ``order`` is tried first."""

    name = models.CharField(max_length=64, unique=True)
    model = models.CharField(max_length=8, choices=Finding.choices)
    order = models.PositiveIntegerField(default=100)
    enabled = models.BooleanField(default=True)
    modality = models.CharField(max_length=16, default="CT")
    body_part_regex = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_regex],
        help_text="Anatomy, case-insensitive regex on Body Part Examined; without a body part, on the descriptions",
    )
    description_regex = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_regex],
        help_text="Case-insensitive regex that the study or the series description must match",
    )
    exclude_description_regex = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_regex],
        help_text="Case-insensitive regex that the series description must not match (localizers, MIPs, …)",
    )
    contrast = models.CharField(max_length=16, choices=ContrastRequirement.choices, default="any")
    min_slice_thickness_mm = models.FloatField(null=True, blank=True)
    max_slice_thickness_mm = models.FloatField(null=True, blank=True)
    min_instances = models.PositiveIntegerField(null=True, blank=True)
    require_image_type_original = models.BooleanField(default=True)

    class Meta:
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return f"{self.name} → {self.model}"


class ModelConfig(models.Model):
    """The model that runs for a finding, and its site-wide operating point."""

    finding = models.CharField(max_length=8, choices=Finding.choices, unique=True)
    enabled = models.BooleanField(default=True)
    name = models.CharField(max_length=64)
    version = models.CharField(max_length=32)
    weights_path = models.CharField(max_length=500, blank=True, help_text="Empty: the shipped weights")
    weights_sha256 = models.CharField(max_length=64, blank=True)
    threshold = models.FloatField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(threshold__gte=0) & Q(threshold__lte=1), name="modelconfig_threshold_0_1"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class ThresholdOverride(models.Model):
    """A per-source operating point that replaces the model's site-wide threshold."""

    model = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="overrides")
    source = models.ForeignKey(DicomWebSource, on_delete=models.CASCADE, related_name="threshold_overrides")
    threshold = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "source"], name="one_threshold_per_model_source"),
            models.CheckConstraint(condition=Q(threshold__gte=0) & Q(threshold__lte=1), name="override_threshold_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.model} @ {self.source}: {self.threshold}"


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    FETCHING = "fetching", "Fetching"
    INFERRING = "inferring", "Inferring"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected"


ACTIVE_JOB_STATES = (JobState.FETCHING, JobState.INFERRING)
FINAL_JOB_STATES = (JobState.DONE, JobState.FAILED, JobState.REJECTED)


class TriageJob(models.Model):
    """One study's trip through the pipeline. Claimed with a conditional update and held by a lease."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="job")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Claims not ended by a PACS error (crashes count)")
    pacs_failures = models.PositiveIntegerField(default=0, help_text="Consecutive retries because the PACS failed")
    task_id = models.CharField(max_length=64, blank=True, help_text="The last task enqueued for this job")
    available_at = models.DateTimeField(default=timezone.now, help_text="Not retried before this time")
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds per stage")
    instance_count = models.PositiveIntegerField(
        null=True, blank=True, help_text="Instances the PACS held for the study when the job last looked"
    )
    instance_count_since = models.DateTimeField(
        null=True, blank=True, help_text="When that count was first seen: the study is triaged once it is settled"
    )
    complete = models.BooleanField(
        default=False, help_text="The PACS vouched that the study is complete (no settle wait)"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "available_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} {self.state}"


class TriageResult(models.Model):
    """One model's advisory output for one series. ``is_current`` marks the result in force."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="results")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="results")
    job = models.ForeignKey(TriageJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="results")
    finding = models.CharField(max_length=8, choices=Finding.choices)
    model_name = models.CharField(max_length=64)
    model_version = models.CharField(max_length=32)
    score = models.FloatField()
    threshold = models.FloatField()
    positive = models.BooleanField()
    advisory = models.BooleanField(default=True, editable=False)
    details = models.JSONField(
        default=dict, blank=True, help_text="Localisation, key slice, subtype scores, side, timings"
    )
    key_image_png = models.BinaryField(null=True, blank=True)
    is_current = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(score__gte=0) & Q(score__lte=1), name="result_score_0_1"),
            models.CheckConstraint(condition=Q(advisory=True), name="result_always_advisory"),
            models.UniqueConstraint(
                fields=["study", "finding"], condition=Q(is_current=True), name="one_current_result_per_finding"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.finding} {self.score:.3f} ({self.model_name} {self.model_version})"

    @property
    def in_validated_range(self) -> bool:
        """False when the study lay outside the model card's validated ranges (then it raises no priority)."""
        check = (self.details or {}).get("input_check")
        return not isinstance(check, dict) or bool(check.get("in_range", True))

    @property
    def input_check_reasons(self) -> list[str]:
        check = (self.details or {}).get("input_check")
        return list(check.get("reasons") or []) if isinstance(check, dict) else []

    @property
    def reported_side(self) -> str | None:
        """The model's side (LVO) for a positive finding: a side of a finding, never of its absence."""
        side = (self.details or {}).get("side")
        return side if self.positive and isinstance(side, str) and side else None

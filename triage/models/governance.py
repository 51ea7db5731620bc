"""Ground truth, model alerts and de-identified validation exports."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from triage.models.core import Finding, Study, User


class GroundTruthSource(models.TextChoices):
    CSV = "csv", "CSV import"
    FEEDBACK = "feedback", "Radiologist feedback"
    REPORT = "report", "Final report"


class GroundTruth(models.Model):
    """Whether a finding is truly present in a study, for local validation. One row per study, finding and source."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="ground_truth")
    finding = models.CharField(max_length=8, choices=Finding.choices)
    label = models.BooleanField(help_text="True: the finding is present")
    source = models.CharField(max_length=16, choices=GroundTruthSource.choices)
    imported_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ground truth"
        constraints = [
            models.UniqueConstraint(fields=["study", "finding", "source"], name="one_ground_truth_per_source")
        ]

    def __str__(self) -> str:
        return f"{self.finding} {'present' if self.label else 'absent'} ({self.source})"


class AlertKind(models.TextChoices):
    FLAG_RATE_HIGH = "flag_rate_high", "Too many studies flagged"
    FLAG_RATE_LOW = "flag_rate_low", "Too few studies flagged"


class ModelAlert(models.Model):
    """A model behaving implausibly for its card: raised by governance, cleared when the rate is plausible again."""

    finding = models.CharField(max_length=8, choices=Finding.choices)
    model_version = models.CharField(max_length=32)
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    flagged = models.PositiveIntegerField(help_text="Flagged studies among the last ``window`` results")
    window = models.PositiveIntegerField()
    expected_low = models.FloatField(help_text="Lowest plausible flag rate (the model card at the site's prevalence)")
    expected_high = models.FloatField(help_text="Highest plausible flag rate")
    p_value = models.FloatField(help_text="One-sided binomial test against the nearer end of the band")
    raised_at = models.DateTimeField(default=timezone.now)
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["finding", "kind"], condition=Q(cleared_at__isnull=True), name="one_open_alert_per_finding_kind"
            )
        ]

    def __str__(self) -> str:
        return f"{self.finding} {self.kind} ({self.flagged}/{self.window})"

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.window if self.window else 0.0


class DateOption(models.TextChoices):
    """PS3.15 Annex E options for dates in a validation export; the admin picks one explicitly."""

    MODIFIED = "modified", "Retain Longitudinal Temporal Information with Modified Dates"
    FULL = "full", "Retain Longitudinal Temporal Information Full Dates"


class ExportState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ValidationExport(models.Model):
    """A de-identified (or, on purpose, identified) validation set: selected studies as a zip of DICOM and labels."""

    requested_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    filters = models.JSONField(default=dict, blank=True, help_text="The selection: dates, finding, label, AI result")
    date_option = models.CharField(max_length=16, choices=DateOption.choices)
    identified = models.BooleanField(default=False, help_text="Keeps patient names and IDs; needs a reason")
    reason = models.TextField(blank=True, help_text="Why identified data was exported")
    state = models.CharField(max_length=16, choices=ExportState.choices, default=ExportState.QUEUED)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    file_path = models.CharField(max_length=500, blank=True, help_text="Relative to TRIAGE_EXPORT_DIR")
    counts = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(identified=True, reason=""), name="identified_export_has_reason")
        ]

    def __str__(self) -> str:
        return f"export {self.pk} ({self.state})"

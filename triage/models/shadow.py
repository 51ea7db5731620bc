"""Shadow mode: candidate model versions that run beside the live one, and their results, which nobody but the
console ever reads (docs/shadow-mode.md)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from triage.models.core import Finding, Series, Study, User
from triage.models.pipeline import TriageJob


class ShadowState(models.TextChoices):
    SHADOW = "shadow", "Running in shadow"
    WITHDRAWN = "withdrawn", "Withdrawn"
    PROMOTED = "promoted", "Promoted to live"
    ROLLED_BACK = "rolled_back", "Promoted, then rolled back"


class ShadowModel(models.Model):
    """A candidate version for a finding: weights on disk pinned by SHA-256, its card, and its operating point.

    While ``state`` is shadow it runs on every routed series beside the live model (``ModelConfig``). Promotion
    copies it into the ModelConfig and keeps what it replaced in ``previous_live``, which a rollback restores.
    """

    finding = models.CharField(max_length=8, choices=Finding.choices)
    name = models.CharField(max_length=64)
    version = models.CharField(max_length=32)
    weights_path = models.CharField(max_length=500, help_text="Relative to TRIAGE_MODEL_DIR, or absolute")
    weights_sha256 = models.CharField(max_length=64)
    threshold = models.FloatField()
    card = models.JSONField(default=dict, blank=True, help_text="The model card beside the weights, as registered")
    state = models.CharField(max_length=16, choices=ShadowState.choices, default=ShadowState.SHADOW, db_index=True)
    previous_live = models.JSONField(
        default=dict, blank=True, help_text="The live ModelConfig this version replaced (restored by a rollback)"
    )
    registered_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    promoted_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Withdrawn or rolled back")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["finding"], condition=Q(state="shadow"), name="one_shadow_model_per_finding"
            ),
            models.CheckConstraint(condition=Q(threshold__gte=0) & Q(threshold__lte=1), name="shadow_threshold_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.finding} {self.name} {self.version} ({self.state})"


class ShadowRunStatus(models.TextChoices):
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped (over the cap)"


class ShadowResult(models.Model):
    """One shadow run on one routed series: the candidate's advisory output, or why there is none.

    Never read by the worklist, the FHIR outbox or the PACS write-back; only the console compares it with the live
    result of the same study.
    """

    shadow_model = models.ForeignKey(ShadowModel, on_delete=models.CASCADE, related_name="results")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="shadow_results")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="shadow_results")
    job = models.ForeignKey(TriageJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    finding = models.CharField(max_length=8, choices=Finding.choices)
    status = models.CharField(max_length=16, choices=ShadowRunStatus.choices)
    model_name = models.CharField(max_length=64)
    model_version = models.CharField(max_length=32)
    score = models.FloatField(null=True, blank=True)
    threshold = models.FloatField()
    positive = models.BooleanField(null=True, blank=True)
    advisory = models.BooleanField(default=True, editable=False)
    seconds = models.FloatField(default=0.0, help_text="Inference time of this run (loading excluded)")
    load_seconds = models.FloatField(default=0.0, help_text="Time to load the model, when this run loaded it")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True, help_text="No patient data")
    details = models.JSONField(default=dict, blank=True)
    key_image_png = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["shadow_model", "study"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(score__isnull=True) | (Q(score__gte=0) & Q(score__lte=1)), name="shadow_score_0_1"
            ),
            models.CheckConstraint(condition=Q(advisory=True), name="shadow_result_always_advisory"),
            models.CheckConstraint(
                condition=~Q(status="done") | Q(score__isnull=False, positive__isnull=False),
                name="shadow_done_has_score",
            ),
        ]

    def __str__(self) -> str:
        score = "-" if self.score is None else f"{self.score:.3f}"
        return f"shadow {self.finding} {score} ({self.model_name} {self.model_version}, {self.status})"

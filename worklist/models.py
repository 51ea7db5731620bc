"""What radiologists see and do: worklist items, claims, acknowledgements and feedback."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from triage.models import Verdict


class ItemStatus(models.TextChoices):
    WAITING = "waiting", "Waiting"
    IN_PROGRESS = "in_progress", "In progress"
    REPORTED = "reported", "Reported"


class WorklistItem(models.Model):
    rank: int | None  # not stored: the reading position, set by selectors

    study = models.OneToOneField("triage.Study", on_delete=models.CASCADE, related_name="worklist_item")
    status = models.CharField(max_length=16, choices=ItemStatus.choices, default=ItemStatus.WAITING)
    ai_priority = models.FloatField(default=0.0, help_text="From the current AI findings")
    urgency = models.PositiveSmallIntegerField(default=0, help_text="Clinical urgency: 0 routine … 3 STAT")
    pinned_priority = models.IntegerField(null=True, blank=True, help_text="Set by hand; the AI never overrides it")
    pinned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sort_key = models.BigIntegerField(default=0, help_text="Reading order within a tier (worklist.priority)")
    critical = models.BooleanField(default=False, help_text="A current AI finding is positive")
    critical_at = models.DateTimeField(null=True, blank=True, help_text="When the item last became critical")
    critical_findings = models.JSONField(
        default=list, blank=True, help_text="Finding codes positive at the last sync: a code not here is a new alert"
    )
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="claims"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    # The escalation webhook (worklist.notify): notified only on a 2xx answer; retried with backoff until then.
    escalation_notified_at = models.DateTimeField(null=True, blank=True, help_text="When the webhook answered 2xx")
    escalation_attempts = models.PositiveSmallIntegerField(default=0, help_text="Webhook posts tried")
    escalation_next_at = models.DateTimeField(
        null=True, blank=True, help_text="When the webhook is tried next; null: nothing to send, or given up"
    )
    escalation_error = models.CharField(max_length=200, blank=True, help_text="Why the last webhook post failed")
    reported_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "received_at"]),
            # Serves the reading order (worklist.selectors) over the open items.
            models.Index(
                F("sort_key").desc(),
                F("received_at").asc(),
                F("id").asc(),
                name="worklist_open_reading_order",
                condition=Q(status__in=[ItemStatus.WAITING, ItemStatus.IN_PROGRESS]),
            ),
            models.Index(
                fields=["critical_at"],
                name="worklist_unacknowledged",
                condition=Q(critical=True, acknowledged_at__isnull=True, escalated_at__isnull=True),
            ),
            models.Index(
                fields=["escalation_next_at"],
                name="worklist_escalation_due",
                condition=Q(escalation_next_at__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status=ItemStatus.IN_PROGRESS) | Q(claimed_by__isnull=False),
                name="in_progress_item_has_claimer",
            ),
            models.CheckConstraint(
                condition=Q(pinned_priority__isnull=True) | Q(pinned_priority__gte=0, pinned_priority__lte=4),
                name="pinned_priority_0_4",
            ),
        ]

    def __str__(self) -> str:
        return f"item {self.pk} {self.status}"

    @property
    def escalation_unnotified(self) -> bool:
        """Escalated, but the webhook never answered 2xx and is no longer retried: someone must be told otherwise."""
        return (
            self.escalated_at is not None
            and self.escalation_notified_at is None
            and self.escalation_next_at is None
            and self.escalation_attempts > 0
        )


class Feedback(models.Model):
    """A radiologist's one-click verdict on one AI finding, tied to the model version that made it."""

    result = models.ForeignKey("triage.TriageResult", on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    comment = models.TextField(blank=True, max_length=2000)
    model_name = models.CharField(max_length=64, blank=True)
    model_version = models.CharField(max_length=32)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["result", "user"], name="one_feedback_per_user_result")]

    def __str__(self) -> str:
        return f"{self.verdict} on result {self.result_id}"


class WorklistEventCounter(models.Model):
    """The WebSocket sequence number, incremented in the same transaction as each change."""

    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return str(self.value)

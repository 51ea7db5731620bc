"""Where results go: FHIR endpoints and their outbox, the PACS write-back outbox, worker heartbeats."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from triage.core.validators import validate_endpoint_url, validate_secret_env
from triage.models.core import DicomWebSource, Finding, ReportStatus, Study


class FhirAuth(models.TextChoices):
    NONE = "none", "None"
    BEARER = "bearer", "Bearer token"
    BASIC = "basic", "Basic auth"
    SMART = "smart", "SMART Backend Services"


class FhirEndpoint(models.Model):
    """An EMR that receives advisory DiagnosticReports. Secrets are named environment variables."""

    name = models.CharField(max_length=64, unique=True)
    base_url = models.URLField(max_length=500, validators=[validate_endpoint_url])
    fhir_version = models.CharField(max_length=2, choices=[("R4", "R4"), ("R5", "R5")], default="R4")
    enabled = models.BooleanField(default=True)
    auth = models.CharField(max_length=8, choices=FhirAuth.choices, default=FhirAuth.NONE)
    username = models.CharField(max_length=128, blank=True)
    secret_env = models.CharField(
        max_length=128,
        blank=True,
        validators=[validate_secret_env],
        help_text="Environment variable with the token, password or private key (TRIAGE_…_TOKEN, _PASSWORD, "
        "_SECRET or _KEY)",
    )
    client_id = models.CharField(max_length=128, blank=True)
    token_url = models.URLField(max_length=500, blank=True, validators=[validate_endpoint_url])
    scope = models.CharField(max_length=255, blank=True, default="system/DiagnosticReport.write")
    verify_tls = models.BooleanField(default=True)
    timeout_seconds = models.FloatField(default=15.0)
    jwt_key_id = models.CharField(
        max_length=128, blank=True, help_text="SMART Backend Services: the kid of the signing key in the JWKS"
    )
    patient_id_system = models.CharField(
        max_length=255,
        default="urn:ct-triage:dicom-patient-id",
        help_text="Identifier system of the DICOM PatientID at this EMR (its MRN system URI)",
    )
    resolve_patient = models.BooleanField(
        default=True,
        help_text="Look the patient up by identifier before sending and add a literal reference when one matches",
    )

    def __str__(self) -> str:
        return self.name


class OutboxState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DEAD = "dead", "Dead letter"
    SUPERSEDED = "superseded", "Superseded by a newer version"


class OutboxMessage(models.Model):
    """A report to deliver to one endpoint, written in the same transaction as the result it describes."""

    endpoint = models.ForeignKey(FhirEndpoint, on_delete=models.CASCADE, related_name="messages")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="outbox_messages")
    finding = models.CharField(max_length=8, choices=Finding.choices)
    report_status = models.CharField(max_length=24, choices=ReportStatus.choices, default=ReportStatus.PRELIMINARY)
    resource_id = models.CharField(max_length=64, help_text="Deterministic FHIR id of the DiagnosticReport")
    report_version = models.PositiveIntegerField(default=1, help_text="Counts up per endpoint and report")
    reason = models.CharField(max_length=32, default="result")
    content_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the clinical content")
    result_ids = models.JSONField(default=list, blank=True, help_text="The TriageResult rows the report describes")
    payload = models.JSONField(help_text="The transaction Bundle to send")
    state = models.CharField(max_length=16, choices=OutboxState.choices, default=OutboxState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    operation_outcome = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"])]
        # Also the index the outbox uses to find a report's other versions.
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "resource_id", "report_version"], name="one_outbox_message_per_report_version"
            )
        ]

    def __str__(self) -> str:
        return f"outbox {self.pk} {self.state}"


class WritebackState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DEAD = "dead", "Dead letter"
    SUPERSEDED = "superseded", "Superseded by a newer version"


class WritebackMessage(models.Model):
    """One version of a finding's AI result to store in the study's PACS (DICOM SR + key image, STOW-RS).

    Written in the same transaction as the result; the UIDs are fixed here, so every attempt sends the same objects.
    """

    source = models.ForeignKey(DicomWebSource, on_delete=models.CASCADE, related_name="writeback_messages")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="writeback_messages")
    finding = models.CharField(max_length=8, choices=Finding.choices)
    version = models.PositiveIntegerField(default=1, help_text="Counts up per study and finding")
    reason = models.CharField(max_length=32, default="result")
    retract = models.BooleanField(default=False, help_text="Withdraws the earlier versions (entered in error)")
    result_ids = models.JSONField(default=list, blank=True, help_text="The TriageResult rows this version describes")
    content_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of what the SR says")
    sr_series_uid = models.CharField(max_length=64)
    sr_instance_uid = models.CharField(max_length=64, unique=True)
    sc_series_uid = models.CharField(max_length=64)
    sc_instance_uid = models.CharField(max_length=64)
    predecessor = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version the PACS may hold that this SR amends (Predecessor Documents Sequence)",
    )
    key_image_sent = models.BooleanField(default=False)
    state = models.CharField(max_length=16, choices=WritebackState.choices, default=WritebackState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"])]
        constraints = [
            models.UniqueConstraint(fields=["study", "finding", "version"], name="one_writeback_per_result_version")
        ]

    def __str__(self) -> str:
        return f"write-back {self.pk} {self.state}"


class WorkerHeartbeat(models.Model):
    """Each worker process (poller, task worker, outbox sender) updates its row while it runs."""

    worker_id = models.CharField(max_length=128, unique=True)
    kind = models.CharField(max_length=32)
    last_seen = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.kind} {self.worker_id}"

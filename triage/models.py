"""The pipeline's data: users, PACS sources, studies and series, routing, jobs, results and the FHIR outbox."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q
from django.utils import timezone

from triage.core.validators import validate_endpoint_url, validate_regex, validate_secret_env


class Role(models.TextChoices):
    RADIOLOGIST = "radiologist", "Radiologist"
    ADMIN = "admin", "Admin"


class Finding(models.TextChoices):
    ICH = "ich", "Intracranial hemorrhage"
    LVO = "lvo", "Large-vessel occlusion"


class Verdict(models.TextChoices):
    """A radiologist's one-click verdict on an AI finding (the worklist records it; reports and monitoring read it)."""

    AGREE = "agree", "Agree"
    DISAGREE = "disagree", "Disagree"
    UNSURE = "unsure", "Unsure"


class ReportStatus(models.TextChoices):
    """FHIR DiagnosticReport.status of a report version."""

    PRELIMINARY = "preliminary", "Preliminary"
    AMENDED = "amended", "Amended"
    CORRECTED = "corrected", "Corrected"
    ENTERED_IN_ERROR = "entered-in-error", "Entered in error"


class User(AbstractUser):
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.RADIOLOGIST)

    @property
    def is_triage_admin(self) -> bool:
        return self.is_superuser or self.role == Role.ADMIN


class AuditEvent(models.Model):
    """Who did what, when. ``data`` holds identifiers and values, never patient data."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=128, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.object_type}:{self.object_id}"


class DicomWebSource(models.Model):
    """A PACS reached over DICOMweb. Secrets are named environment variables, never stored here."""

    name = models.CharField(max_length=64, unique=True)
    url = models.URLField(
        max_length=500,
        validators=[validate_endpoint_url],
        help_text="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web",
    )
    username = models.CharField(max_length=128, blank=True)
    password_env = models.CharField(
        max_length=128,
        blank=True,
        validators=[validate_secret_env],
        help_text="Name of the environment variable that holds the password (TRIAGE_…_PASSWORD)",
    )
    token_env = models.CharField(
        max_length=128,
        blank=True,
        validators=[validate_secret_env],
        help_text="Name of the environment variable that holds a bearer token (TRIAGE_…_TOKEN)",
    )
    enabled = models.BooleanField(default=True)
    write_back = models.BooleanField(
        default=False,
        help_text="Store AI results back in this PACS (DICOM SR + key image by STOW-RS); TRIAGE_PACS_WRITE_BACK for "
        "the default source",
    )
    poll_cursor = models.JSONField(default=dict, blank=True, help_text="Where incremental polling resumes")
    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class Study(models.Model):
    current_results: list[TriageResult]  # not stored: prefetched by the worklist's selectors (``to_attr``)

    study_instance_uid = models.CharField(max_length=64, unique=True)
    source = models.ForeignKey(DicomWebSource, null=True, blank=True, on_delete=models.SET_NULL)
    accession_number = models.CharField(max_length=64, blank=True, db_index=True)
    patient_id = models.CharField(max_length=64, blank=True)
    patient_name = models.CharField(max_length=200, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_age_years = models.PositiveSmallIntegerField(null=True, blank=True)
    patient_sex = models.CharField(max_length=1, blank=True)
    modalities = models.CharField(max_length=64, blank=True)
    study_description = models.CharField(max_length=200, blank=True)
    study_datetime = models.DateTimeField(null=True, blank=True)
    requested_priority = models.CharField(
        max_length=16, blank=True, help_text="Clinical urgency from the order or DICOM (STAT, HIGH, ROUTINE…)"
    )
    institution = models.CharField(max_length=128, blank=True)
    department = models.CharField(max_length=128, blank=True, help_text="Institutional Department Name (0008,1040)")
    referring_physician = models.CharField(max_length=200, blank=True, help_text="Referring Physician's Name")
    manufacturer = models.CharField(max_length=64, blank=True)
    manufacturer_model = models.CharField(max_length=64, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.study_instance_uid


class Series(models.Model):
    # Not stored: set by ingest on a series it has just discovered. The first instance's DICOM JSON, whose Rows and
    # Columns give the size check before retrieval.
    discovered_instance: dict | None = None

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    series_number = models.IntegerField(null=True, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=200, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    slice_thickness_mm = models.FloatField(null=True, blank=True)
    instance_count = models.PositiveIntegerField(null=True, blank=True)
    contrast_agent = models.CharField(max_length=128, blank=True)
    image_type = models.CharField(max_length=128, blank=True)
    routed_model = models.CharField(max_length=8, choices=Finding.choices, blank=True)
    routing_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return self.series_instance_uid


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

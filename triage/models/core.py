"""Users, the audit log, PACS sources, studies and series: the rows every layer reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

from triage.core.validators import validate_endpoint_url, validate_secret_env

if TYPE_CHECKING:
    from triage.models.pipeline import TriageResult


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

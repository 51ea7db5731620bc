"""Output shapes shared by the REST API and the WebSocket events (one source of truth for the payloads)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from triage.models import TriageResult
from worklist import priority
from worklist.models import ItemStatus, WorklistItem
from worklist.selectors import max_wait


def key_image_url(result: TriageResult) -> str | None:
    if not getattr(result, "has_key_image", False):
        return None
    return reverse("api-result-key-image", kwargs={"result_id": result.pk})


def viewer_url(*, study_instance_uid: str, accession_number: str) -> str | None:
    """The site's viewer link, from a template such as ``http://ohif/viewer?StudyInstanceUIDs={study_instance_uid}``."""
    template = settings.TRIAGE_VIEWER_URL
    if not template:
        return None
    # Each value is encoded whole ("/", "&", "#" included), so a header value cannot add a path or a parameter.
    return template.replace("{study_instance_uid}", quote(study_instance_uid, safe="")).replace(
        "{accession_number}", quote(accession_number, safe="")
    )


class FindingSerializer(serializers.Serializer):
    """One model's current, advisory output for a study."""

    id = serializers.IntegerField(help_text="Result id, for feedback and the key image")
    model = serializers.CharField(source="model_name")
    model_version = serializers.CharField()
    finding = serializers.CharField()
    finding_label = serializers.CharField(source="get_finding_display")
    score = serializers.FloatField(help_text="0..1")
    threshold = serializers.FloatField(help_text="The operating point in force when the result was stored")
    positive = serializers.BooleanField(help_text="score ≥ threshold")
    in_validated_range = serializers.BooleanField(
        help_text="False: the study lay outside the model card's validated ranges; the finding raises no priority"
    )
    input_check_reasons = serializers.ListField(child=serializers.CharField(), help_text="Why it was outside")
    advisory = serializers.BooleanField(help_text="Always true: the AI output is advisory, not a diagnosis")
    key_image_url = serializers.SerializerMethodField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_key_image_url(self, result: TriageResult) -> str | None:
        return key_image_url(result)

    def to_representation(self, result: TriageResult) -> dict:
        return finding_payload(result)


def finding_payload(result: TriageResult) -> dict:
    """Hand-built for speed (a worklist page holds many); FindingSerializer's fields document the shape."""
    return {
        "id": result.pk,
        "model": result.model_name,
        "model_version": result.model_version,
        "finding": result.finding,
        "finding_label": result.get_finding_display(),
        "score": result.score,
        "threshold": result.threshold,
        "positive": result.positive,
        "in_validated_range": result.in_validated_range,
        "input_check_reasons": result.input_check_reasons,
        "advisory": result.advisory,
        "key_image_url": key_image_url(result),
    }


def person_name_display(dicom_name: str, *, initials: bool = False) -> str:
    """A DICOM person name (``Family^Given^Middle^Prefix^Suffix``) for people: "Family, Given Middle", or with
    ``initials`` only the initials of the same parts: "F. G. M."."""
    parts = [p.strip() for p in dicom_name.split("=")[0].split("^")[:3]]
    if initials:
        return " ".join(f"{word[0].upper()}." for part in parts for word in part.replace("-", " ").split())
    given = " ".join(p for p in parts[1:] if p)
    return ", ".join(p for p in (parts[0], given) if p)


def patient_name_display(dicom_name: str) -> str:
    """Initials only on teaching screens (TRIAGE_HIDE_PATIENT_NAMES)."""
    return person_name_display(dicom_name, initials=settings.TRIAGE_HIDE_PATIENT_NAMES)


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as DRF writes it, without DRF's per-call field machinery."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _user_name(user) -> str | None:  # noqa: ANN001 - a User or None
    return user.username if user is not None else None


class WorklistItemSerializer(serializers.Serializer):
    """A worklist row. ``starving``, ``sort_key``, ``received_at`` and ``id`` reproduce the reading order."""

    id = serializers.IntegerField()
    study_instance_uid = serializers.CharField(source="study.study_instance_uid")
    accession_number = serializers.CharField(source="study.accession_number")
    study_description = serializers.CharField(source="study.study_description")
    modality = serializers.CharField(source="study.modalities")
    requested_priority = serializers.CharField(source="study.requested_priority")
    patient_name = serializers.SerializerMethodField(
        help_text='From the DICOM headers, as "Family, Given"; initials only when TRIAGE_HIDE_PATIENT_NAMES is set'
    )
    patient_id = serializers.CharField(source="study.patient_id", help_text="The DICOM PatientID (the MRN)")
    patient_age = serializers.IntegerField(
        source="study.patient_age_years", allow_null=True, help_text="Years, from PatientAge (0010,1010)"
    )
    patient_sex = serializers.CharField(source="study.patient_sex", help_text="M, F, O or empty")
    study_datetime = serializers.DateTimeField(source="study.study_datetime", allow_null=True)
    institution = serializers.CharField(source="study.institution")
    department = serializers.CharField(source="study.department", help_text="Institutional Department Name")
    referring_physician = serializers.SerializerMethodField()
    rank = serializers.SerializerMethodField(help_text="1 is read first; null once reported")
    priority = serializers.SerializerMethodField(help_text="routine, high, asap, stat or critical")
    priority_level = serializers.SerializerMethodField()
    pinned = serializers.SerializerMethodField()
    sort_key = serializers.IntegerField()
    starving = serializers.SerializerMethodField(help_text="Waited past the cap: read before flagged studies")
    status = serializers.ChoiceField(choices=ItemStatus.choices)
    claimed_by = serializers.SerializerMethodField()
    claimed_at = serializers.DateTimeField(allow_null=True)
    received_at = serializers.DateTimeField()
    waiting_seconds = serializers.SerializerMethodField()
    starving_at = serializers.SerializerMethodField()
    critical = serializers.BooleanField(help_text="A current AI finding is positive (advisory)")
    critical_at = serializers.DateTimeField(allow_null=True)
    acknowledged = serializers.SerializerMethodField()
    acknowledged_by = serializers.SerializerMethodField()
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    escalated = serializers.SerializerMethodField()
    escalated_at = serializers.DateTimeField(allow_null=True)
    reported_at = serializers.DateTimeField(allow_null=True)
    findings = FindingSerializer(many=True, source="study.current_results")
    key_image_url = serializers.SerializerMethodField()
    viewer_url = serializers.SerializerMethodField()

    def _now(self) -> datetime:
        return self.context.get("now") or timezone.now()

    def to_representation(self, item: WorklistItem) -> dict:
        """Hand-built for speed: the first page of a 100,000-item worklist must answer in tens of milliseconds.
        The declared fields document the same shape for the OpenAPI schema; tests compare the two."""
        study, results = item.study, item.study.current_results
        level = self._level(item)
        return {
            "id": item.pk,
            "study_instance_uid": study.study_instance_uid,
            "accession_number": study.accession_number,
            "study_description": study.study_description,
            "modality": study.modalities,
            "requested_priority": study.requested_priority,
            "patient_name": self.get_patient_name(item),
            "patient_id": study.patient_id,
            "patient_age": study.patient_age_years,
            "patient_sex": study.patient_sex,
            "study_datetime": _iso(study.study_datetime),
            "institution": study.institution,
            "department": study.department,
            "referring_physician": self.get_referring_physician(item),
            "rank": self.get_rank(item),
            "priority": priority.LEVEL_LABELS[level],
            "priority_level": level,
            "pinned": item.pinned_priority is not None,
            "sort_key": item.sort_key,
            "starving": self.get_starving(item),
            "status": item.status,
            "claimed_by": _user_name(item.claimed_by),
            "claimed_at": _iso(item.claimed_at),
            "received_at": _iso(item.received_at),
            "waiting_seconds": self.get_waiting_seconds(item),
            "starving_at": self.get_starving_at(item),
            "critical": item.critical,
            "critical_at": _iso(item.critical_at),
            "acknowledged": item.acknowledged_at is not None,
            "acknowledged_by": _user_name(item.acknowledged_by),
            "acknowledged_at": _iso(item.acknowledged_at),
            "escalated": item.escalated_at is not None,
            "escalated_at": _iso(item.escalated_at),
            "reported_at": _iso(item.reported_at),
            "findings": [finding_payload(r) for r in results],
            "key_image_url": self.get_key_image_url(item),
            "viewer_url": self.get_viewer_url(item),
        }

    @extend_schema_field(serializers.CharField())
    def get_patient_name(self, item: WorklistItem) -> str:
        return patient_name_display(item.study.patient_name)

    @extend_schema_field(serializers.CharField())
    def get_referring_physician(self, item: WorklistItem) -> str:
        return person_name_display(item.study.referring_physician)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_rank(self, item: WorklistItem) -> int | None:
        return getattr(item, "rank", None)

    def _level(self, item: WorklistItem) -> int:
        findings = [priority.finding_score(r) for r in item.study.current_results]
        return priority.level_for(urgency=item.urgency, findings=findings, pinned_level=item.pinned_priority)

    @extend_schema_field(serializers.CharField())
    def get_priority(self, item: WorklistItem) -> str:
        return priority.LEVEL_LABELS[self._level(item)]

    @extend_schema_field(serializers.IntegerField())
    def get_priority_level(self, item: WorklistItem) -> int:
        return self._level(item)

    @extend_schema_field(serializers.BooleanField())
    def get_pinned(self, item: WorklistItem) -> bool:
        return item.pinned_priority is not None

    @extend_schema_field(serializers.BooleanField())
    def get_starving(self, item: WorklistItem) -> bool:
        if hasattr(item, "starving"):
            return bool(item.starving)
        return priority.is_starving(
            received_at=item.received_at,
            now=self._now(),
            max_wait=max_wait(),
            waiting=item.status == ItemStatus.WAITING,
        )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_claimed_by(self, item: WorklistItem) -> str | None:
        return _user_name(item.claimed_by)

    @extend_schema_field(serializers.IntegerField())
    def get_waiting_seconds(self, item: WorklistItem) -> int:
        end = item.reported_at or self._now()
        return max(0, int((end - item.received_at).total_seconds()))

    @extend_schema_field(serializers.DateTimeField())
    def get_starving_at(self, item: WorklistItem) -> str:
        return (item.received_at + max_wait()).isoformat()

    @extend_schema_field(serializers.BooleanField())
    def get_acknowledged(self, item: WorklistItem) -> bool:
        return item.acknowledged_at is not None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_acknowledged_by(self, item: WorklistItem) -> str | None:
        return _user_name(item.acknowledged_by)

    @extend_schema_field(serializers.BooleanField())
    def get_escalated(self, item: WorklistItem) -> bool:
        return item.escalated_at is not None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_key_image_url(self, item: WorklistItem) -> str | None:
        """The key image of the most suspicious finding that has one."""
        with_image = [r for r in item.study.current_results if getattr(r, "has_key_image", False)]
        if not with_image:
            return None
        best = max(with_image, key=lambda r: (r.positive, r.score))
        return key_image_url(best)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_viewer_url(self, item: WorklistItem) -> str | None:
        return viewer_url(
            study_instance_uid=item.study.study_instance_uid, accession_number=item.study.accession_number
        )


class SeriesSerializer(serializers.Serializer):
    series_instance_uid = serializers.CharField()
    series_number = serializers.IntegerField(allow_null=True)
    modality = serializers.CharField()
    description = serializers.CharField()
    body_part = serializers.CharField()
    slice_thickness_mm = serializers.FloatField(allow_null=True)
    instance_count = serializers.IntegerField(allow_null=True)
    routed_model = serializers.CharField()
    routing_reason = serializers.CharField()


class StudyFindingSerializer(FindingSerializer):
    def to_representation(self, result: TriageResult) -> dict:
        return serializers.Serializer.to_representation(self, result)  # the detail is one study: the generic path

    series_instance_uid = serializers.CharField(source="series.series_instance_uid")
    created_at = serializers.DateTimeField()
    key_slice = serializers.SerializerMethodField()
    side = serializers.SerializerMethodField()
    my_verdict = serializers.SerializerMethodField(help_text="Your feedback on this result, if any")

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_key_slice(self, result: TriageResult) -> int | None:
        return (result.details or {}).get("key_slice")

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_side(self, result: TriageResult) -> str | None:
        return result.reported_side

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_my_verdict(self, result: TriageResult) -> str | None:
        return self.context.get("verdicts", {}).get(result.pk)


class StudyDetailSerializer(serializers.Serializer):
    study_instance_uid = serializers.CharField()
    accession_number = serializers.CharField()
    study_description = serializers.CharField()
    modalities = serializers.CharField()
    study_datetime = serializers.DateTimeField(allow_null=True)
    requested_priority = serializers.CharField()
    received_at = serializers.DateTimeField()
    series = SeriesSerializer(many=True, source="series.all")
    findings = StudyFindingSerializer(many=True, source="current_results")
    item = serializers.SerializerMethodField()

    @extend_schema_field(WorklistItemSerializer(allow_null=True))
    def get_item(self, study) -> dict | None:  # noqa: ANN001 - a Study
        item = getattr(study, "worklist_item", None)
        if item is None:
            return None
        item.study = study
        return WorklistItemSerializer(item, context=self.context).data

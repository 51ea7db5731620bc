"""DICOM JSON metadata (QIDO-RS / WADO-RS metadata) to Study and Series fields."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from django.utils import timezone

from triage.ingest.dicomweb import json_value, json_values
from triage.models import Study

# Requested Procedure Priority values (PS3.3 C.4.11): STAT, HIGH, ROUTINE, MEDIUM, LOW.
PRIORITY_TAG = "00401003"
REQUEST_ATTRIBUTES_SEQUENCE = "00400275"


def _text(item: dict, tag: str, limit: int) -> str:
    value = json_value(item, tag)
    return str(value).strip()[:limit] if value is not None else ""


def _float(item: dict, tag: str) -> float | None:
    value = json_value(item, tag)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _int(item: dict, tag: str) -> int | None:
    value = json_value(item, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def series_defaults(metadata: list[dict]) -> dict[str, Any]:
    """Series columns from the metadata of its instances (the first one's tags, the count of all)."""
    first = metadata[0]
    return {
        "series_number": _int(first, "00200011"),
        "modality": _text(first, "00080060", 16),
        "description": _text(first, "0008103E", 200),
        "body_part": _text(first, "00180015", 64),
        "slice_thickness_mm": _float(first, "00180050"),
        "instance_count": len(metadata),
        "contrast_agent": _text(first, "00180010", 128),
        "image_type": "\\".join(str(v) for v in json_values(first, "00080008"))[:128],
    }


def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _study_datetime(item: dict) -> dt.datetime | None:
    day = _date(_text(item, "00080020", 8))
    if day is None:
        return None
    digits = re.sub(r"[^0-9]", "", _text(item, "00080030", 16).split(".")[0]).ljust(6, "0")[:6]
    try:
        moment = dt.time(int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        moment = dt.time(0, 0)
    return timezone.make_aware(dt.datetime.combine(day, moment))


def _age_years(text: str) -> int | None:
    match = re.fullmatch(r"(\d{3})([DWMY])", text)
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return {"D": number // 365, "W": number // 52, "M": number // 12, "Y": number}[unit]


def _requested_priority(item: dict) -> str:
    direct = _text(item, PRIORITY_TAG, 16)
    if direct:
        return direct.upper()
    for request in json_values(item, REQUEST_ATTRIBUTES_SEQUENCE):
        if isinstance(request, dict) and _text(request, PRIORITY_TAG, 16):
            return _text(request, PRIORITY_TAG, 16).upper()
    return ""


def study_tags(item: dict) -> dict[str, Any]:
    return {
        "accession_number": _text(item, "00080050", 64),
        "patient_id": _text(item, "00100020", 64),
        "patient_name": _text(item, "00100010", 200),
        "patient_birth_date": _date(_text(item, "00100030", 8)),
        "patient_age_years": _age_years(_text(item, "00101010", 4)),
        "patient_sex": _text(item, "00100040", 1),
        "study_description": _text(item, "00081030", 200),
        "study_datetime": _study_datetime(item),
        "requested_priority": _requested_priority(item),
        "institution": _text(item, "00080080", 128),
        "department": _text(item, "00081040", 128),
        "referring_physician": _text(item, "00080090", 200),
        "manufacturer": _text(item, "00080070", 64),
        "manufacturer_model": _text(item, "00081090", 64),
    }


def study_tags_apply(*, study: Study, metadata: list[dict], modalities: str = "CT") -> None:
    """Fill the study's columns from one instance's metadata; a tag the PACS leaves empty keeps the stored value."""
    tags = {k: v for k, v in study_tags(metadata[0]).items() if v not in ("", None)}
    tags["modalities"] = modalities
    for name, value in tags.items():
        setattr(study, name, value)
    study.save(update_fields=[*tags, "updated_at"])

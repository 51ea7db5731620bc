"""Validation exports: selected studies, de-identified (triage.governance.deid), zipped with their labels.

An admin requests an export (``export_request``); a task on the ``exports`` queue builds it (``export_run``),
reporting progress on the row. docs/validation-export.md describes the selection, the profile and the zip.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_tasks import task

from triage.core.audit import audit_record
from triage.core.exceptions import InvalidInput, TriageError
from triage.governance.deid import Deidentifier, burned_in_annotation
from triage.ingest.dicomweb import (
    InstanceTooLarge,
    Pacs,
    PacsBadResponse,
    PacsNotFound,
    SeriesTooLarge,
    json_value,
)
from triage.models import (
    DateOption,
    ExportState,
    GroundTruth,
    GroundTruthSource,
    Study,
    TriageResult,
    User,
    ValidationExport,
)

logger = logging.getLogger(__name__)

PROFILE = "DICOM PS3.15 Annex E, Basic Application Confidentiality Profile"
SERIES_UID_TAG = "0020000E"
MIN_REASON_LENGTH = 10
# When sources disagree, the final report outranks an imported CSV, which outranks radiologist feedback.
LABEL_PRECEDENCE = [GroundTruthSource.REPORT, GroundTruthSource.CSV, GroundTruthSource.FEEDBACK]
CSV_COLUMNS = [
    "study_uid",
    "series_uid",
    "finding",
    "model",
    "version",
    "score",
    "threshold",
    "positive",
    "label",
    "label_source",
]
IDENTIFIED_COLUMNS = ["patient_id", "accession_number"]


class ExclusionReason:
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    NOT_IN_PACS = "not_in_pacs"
    NO_SOURCE = "no_source"
    SERIES_TOO_LARGE = "series_too_large"
    INSTANCE_TOO_LARGE = "instance_too_large"
    BAD_RESPONSE = "pacs_bad_response"


# --- selection ---------------------------------------------------------------------------------------------------


def export_studies_select(*, filters: dict[str, Any]) -> QuerySet[Study]:
    """The studies a selection names: study date range, finding, ground-truth label and current AI result."""
    studies = Study.objects.all()
    if filters.get("date_from"):
        studies = studies.filter(study_datetime__date__gte=filters["date_from"])
    if filters.get("date_to"):
        studies = studies.filter(study_datetime__date__lte=filters["date_to"])
    finding = filters.get("finding") or ""
    by_finding = Q(finding=finding) if finding else Q()
    if finding:
        studies = studies.filter(Q(results__finding=finding) | Q(ground_truth__finding=finding))
    label = filters.get("label") or "any"
    if label != "any":
        truths = GroundTruth.objects.filter(by_finding, label=(label == "present"))
        studies = studies.filter(pk__in=truths.values("study_id"))
    result = filters.get("result") or "any"
    if result != "any":
        current = TriageResult.objects.filter(by_finding, is_current=True, positive=(result == "positive"))
        studies = studies.filter(pk__in=current.values("study_id"))
    return studies.distinct().order_by("pk")


# --- request -----------------------------------------------------------------------------------------------------


@transaction.atomic(durable=True)
def export_request(
    *, actor: User, filters: dict[str, Any], date_option: str, identified: bool = False, reason: str = ""
) -> ValidationExport:
    """Queue an export. Identified data (patient names and IDs kept) needs a typed reason, audited with it."""
    if date_option not in DateOption.values:
        raise InvalidInput(f'Date option "{date_option}" is not one of {", ".join(DateOption.values)}.')
    reason = reason.strip()
    if identified and len(reason) < MIN_REASON_LENGTH:
        raise InvalidInput(
            f"An identified export needs a reason of at least {MIN_REASON_LENGTH} characters.", code="reason_required"
        )
    export = ValidationExport.objects.create(
        requested_by=actor,
        filters=filters,
        date_option=date_option,
        identified=identified,
        reason=reason if identified else "",
    )
    data: dict[str, Any] = {"filters": filters, "date_option": date_option, "identified": identified}
    if identified:
        data["reason"] = reason
    audit_record(action="export.requested", actor=actor, obj=export, data=data)
    transaction.on_commit(lambda: validation_export_process.enqueue(export.pk), robust=True)
    return export


@task(queue_name="exports")
def validation_export_process(export_id: int) -> str | None:
    """Build one export. A duplicate or late task finds nothing to claim."""
    return export_run(export_id=export_id)


# --- the job -----------------------------------------------------------------------------------------------------


@dataclass
class ExportTally:
    studies: int = 0
    series: int = 0
    instances: int = 0
    excluded: dict[str, list[str]] = field(default_factory=dict)

    def exclude(self, reason: str, new_study_uid: str) -> None:
        self.excluded.setdefault(reason, []).append(new_study_uid)

    def as_counts(self, selected: int) -> dict[str, Any]:
        return {
            "studies_selected": selected,
            "studies_exported": self.studies,
            "series": self.series,
            "instances": self.instances,
            "studies_excluded": sum(len(v) for v in self.excluded.values()),
            "excluded_by_reason": {reason: len(uids) for reason, uids in self.excluded.items()},
        }


def export_claim(*, export_id: int) -> bool:
    claimed = ValidationExport.objects.filter(pk=export_id, state=ExportState.QUEUED).update(state=ExportState.RUNNING)
    return claimed == 1


def export_run(*, export_id: int) -> str | None:
    """Claim the export, build its zip, and settle it as done or failed. Returns the zip's name when done."""
    if not export_claim(export_id=export_id):
        return None
    export = ValidationExport.objects.get(pk=export_id)
    try:
        name = _build(export)
    except Exception as err:  # noqa: BLE001 - the job's boundary: record the failure, keep the worker going
        logger.warning("validation export %s failed: %s", export_id, type(err).__name__)
        _settle_failed(export, err)
        return None
    return name


def _build(export: ValidationExport) -> str:
    studies = list(export_studies_select(filters=export.filters).select_related("source"))
    ValidationExport.objects.filter(pk=export.pk).update(progress_total=len(studies), progress_done=0)
    deid = Deidentifier(date_option=export.date_option, identified=export.identified)
    folder = Path(settings.TRIAGE_EXPORT_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"validation-export-{export.pk}-{timezone.now():%Y%m%d%H%M%S}.zip"
    partial = folder / f"{name}.part"
    tally = ExportTally()
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        exported: list[Study] = []
        for done, study in enumerate(studies, start=1):
            if _study_write(archive, study, deid, tally, folder):
                exported.append(study)
            ValidationExport.objects.filter(pk=export.pk).update(progress_done=done)
        archive.writestr("labels.csv", labels_csv(exported, deid, identified=export.identified))
        archive.writestr("manifest.json", json.dumps(_manifest(export, tally, len(studies)), indent=2))
    partial.rename(folder / name)
    _settle_done(export, name, tally.as_counts(len(studies)))
    return name


@transaction.atomic
def _settle_done(export: ValidationExport, name: str, counts: dict[str, Any]) -> None:
    ValidationExport.objects.filter(pk=export.pk).update(
        state=ExportState.DONE, file_path=name, counts=counts, finished_at=timezone.now()
    )
    audit_record(action="export.completed", actor=None, obj=export, data={"counts": counts})


@transaction.atomic
def _settle_failed(export: ValidationExport, err: BaseException) -> None:
    # The message may quote a PACS answer; the code and type are enough to act on and hold no patient data.
    error = getattr(err, "code", "") or type(err).__name__
    ValidationExport.objects.filter(pk=export.pk).update(
        state=ExportState.FAILED, error=error, finished_at=timezone.now()
    )
    audit_record(action="export.failed", actor=None, obj=export, data={"error": error})


# --- one study ---------------------------------------------------------------------------------------------------


def _study_write(archive: zipfile.ZipFile, study: Study, deid: Deidentifier, tally: ExportTally, folder: Path) -> bool:
    """De-identify one study into the zip, or exclude it (with its reason, under its new UID) and return False."""
    new_uid = deid.new_uid(study.study_instance_uid)
    reason = _exclusion(study)
    if reason:
        tally.exclude(reason, new_uid)
        return False
    pacs = Pacs.for_source(study.source)  # type: ignore[arg-type]
    try:
        series_uids = [json_value(s, SERIES_UID_TAG) for s in pacs.search_series(study.study_instance_uid)]
        if _burned_in(pacs, study.study_instance_uid, series_uids):
            tally.exclude(ExclusionReason.BURNED_IN_ANNOTATION, new_uid)
            return False
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            written = _series_write_all(pacs, study.study_instance_uid, series_uids, deid, Path(scratch))
            if written is None:
                tally.exclude(ExclusionReason.BURNED_IN_ANNOTATION, new_uid)
                return False
            for path in sorted(Path(scratch).rglob("*.dcm")):
                archive.write(path, path.relative_to(scratch).as_posix())
    except PacsNotFound:
        tally.exclude(ExclusionReason.NOT_IN_PACS, new_uid)
        return False
    except (SeriesTooLarge, PacsBadResponse) as err:  # this study's answer, not the PACS as a whole: go on
        tally.exclude(_retrieval_reason(err), new_uid)
        return False
    tally.studies += 1
    tally.series += len(series_uids)
    tally.instances += written
    return True


def _retrieval_reason(err: SeriesTooLarge | PacsBadResponse) -> str:
    if isinstance(err, InstanceTooLarge):
        return ExclusionReason.INSTANCE_TOO_LARGE
    if isinstance(err, SeriesTooLarge):
        return ExclusionReason.SERIES_TOO_LARGE
    return ExclusionReason.BAD_RESPONSE


def _exclusion(study: Study) -> str | None:
    return ExclusionReason.NO_SOURCE if study.source is None else None


def _burned_in(pacs: Pacs, study_uid: str, series_uids: list[str]) -> bool:
    """Whether any instance of any series says BurnedInAnnotation YES (read from metadata, before any pixel)."""
    return any(
        burned_in_annotation(item) for series_uid in series_uids for item in pacs.series_metadata(study_uid, series_uid)
    )


def _series_write_all(
    pacs: Pacs, study_uid: str, series_uids: list[str], deid: Deidentifier, scratch: Path
) -> int | None:
    """Write every instance de-identified under ``scratch``; None when an instance itself says burned-in."""
    count = 0
    for series_uid in series_uids:
        datasets = pacs.retrieve_series(study_uid, series_uid, max_instances=settings.TRIAGE_MAX_SERIES_INSTANCES)
        for ds in datasets:
            if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
                return None
            out = deid.apply(ds)
            path = scratch / out.StudyInstanceUID / out.SeriesInstanceUID / f"{out.SOPInstanceUID}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            out.save_as(path, enforce_file_format=True)
            count += 1
        del datasets
    return count


# --- labels and manifest -----------------------------------------------------------------------------------------


def _label_for(truths: list[GroundTruth], finding: str) -> GroundTruth | None:
    matching = [t for t in truths if t.finding == finding]
    matching.sort(key=lambda t: LABEL_PRECEDENCE.index(GroundTruthSource(t.source)))
    return matching[0] if matching else None


def labels_csv(studies: list[Study], deid: Deidentifier, *, identified: bool) -> str:
    """One row per exported study and finding: the current AI result and the label, keyed by the new UIDs."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS + (IDENTIFIED_COLUMNS if identified else []))
    for study in studies:
        results = list(TriageResult.objects.filter(study=study, is_current=True).select_related("series"))
        truths = list(GroundTruth.objects.filter(study=study))
        findings = sorted({r.finding for r in results} | {t.finding for t in truths})
        for finding in findings:
            result = next((r for r in results if r.finding == finding), None)
            row = _label_row(study, finding, result, _label_for(truths, finding), deid)
            writer.writerow(row + ([study.patient_id, study.accession_number] if identified else []))
    return buffer.getvalue()


def _label_row(
    study: Study, finding: str, result: TriageResult | None, truth: GroundTruth | None, deid: Deidentifier
) -> list[Any]:
    label = "" if truth is None else ("present" if truth.label else "absent")
    source = "" if truth is None else truth.source
    if result is None:
        return [deid.new_uid(study.study_instance_uid), "", finding, "", "", "", "", "", label, source]
    return [
        deid.new_uid(study.study_instance_uid),
        deid.new_uid(result.series.series_instance_uid),
        finding,
        result.model_name,
        result.model_version,
        result.score,
        result.threshold,
        "yes" if result.positive else "no",
        label,
        source,
    ]


def _manifest(export: ValidationExport, tally: ExportTally, selected: int) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "profile": PROFILE,
        "options": [DateOption(export.date_option).label],
        "date_option": export.date_option,
        "private_attributes": "removed (no safe-private rule applied)",
        "uids": "remapped consistently within this export; the mapping is not exported",
        "library": {"name": "deid", "version": version("deid"), "pydicom": version("pydicom")},
        "identified": export.identified,
        "counts": tally.as_counts(selected),
        "excluded": [
            {"reason": reason, "count": len(uids), "studies": uids} for reason, uids in sorted(tally.excluded.items())
        ],
        "exported_on": date.today().isoformat(),
        "export_id": export.pk,
    }
    if export.date_option == DateOption.MODIFIED:
        manifest["dates"] = "shifted by one random offset for this export; the offset is not exported"
    if export.identified:
        manifest["WARNING"] = "IDENTIFIED DATA: patient names, patient IDs and accession numbers are kept"
        manifest["identified_reason"] = export.reason
    return manifest


# --- download ----------------------------------------------------------------------------------------------------


class ExportNotReady(TriageError):
    code = "export_not_ready"
    status = 404


def export_file_path(export: ValidationExport) -> Path:
    """The zip of a finished export, inside TRIAGE_EXPORT_DIR (a stored name that leaves it is refused)."""
    folder = Path(settings.TRIAGE_EXPORT_DIR).resolve()
    if export.state != ExportState.DONE or not export.file_path:
        raise ExportNotReady("The export has no file yet.")
    path = (folder / export.file_path).resolve()
    if folder not in path.parents or not path.is_file():
        raise ExportNotReady("The export's file is missing.")
    return path


def export_download_record(*, actor: User, export: ValidationExport) -> None:
    audit_record(action="export.downloaded", actor=actor, obj=export, data={"identified": export.identified})

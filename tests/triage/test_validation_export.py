"""Validation exports: de-identified per PS3.15 Annex E against a real Orthanc, zipped with labels, admins only."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from django.urls import reverse
from django.utils import timezone
from pydicom import Dataset
from pydicom.sequence import Sequence

from tests.factories import ResultFactory, SeriesFactory, StudyFactory
from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from triage.core.exceptions import InvalidInput
from triage.governance import export
from triage.models import AuditEvent, DateOption, DicomWebSource, ExportState, GroundTruth, ValidationExport

pytestmark = pytest.mark.django_db

NAME = "Doe^Jane^Distinctive"
PATIENT_ID = "PID-SECRET-77"
ACCESSION = "ACC-SECRET-55"
STUDY_DATE, ACQ_DATE, BIRTH_DATE = "20190314", "20190315", "19470623"
NESTED_UID = "1.2.826.0.1.3680043.10.2.999.424242"


def _identify(index: int, ds: Dataset) -> Dataset:
    """Identifiers in every place an anonymizer can miss: private tags, nested sequences, names, dates."""
    ds.PatientName = NAME
    ds.PatientBirthDate = BIRTH_DATE
    ds.OtherPatientIDs = PATIENT_ID
    ds.InstitutionName = "St Distinctive Hospital"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.AcquisitionDate = ACQ_DATE
    ds.ContentDate = STUDY_DATE
    ds.StudyDate = STUDY_DATE
    ds.private_block(0x0009, "SECRET CREATOR", create=True).add_new(0x10, "LO", PATIENT_ID)
    request = Dataset()
    request.AccessionNumber = ACCESSION
    request.RequestedProcedureID = PATIENT_ID
    request.ScheduledProcedureStepStartDate = ACQ_DATE
    reference = Dataset()
    reference.ReferencedSOPClassUID = ds.SOPClassUID
    reference.ReferencedSOPInstanceUID = NESTED_UID
    reference.RequestAttributesSequence = Sequence([request])
    reference.PatientID = PATIENT_ID
    ds.ReferencedImageSequence = Sequence([reference])
    return ds


def _burned_in(index: int, ds: Dataset) -> Dataset:
    if index == 0:
        ds.BurnedInAnnotation = "YES"
    return ds


@pytest.fixture
def studies(orthanc, pacs_source):
    """One identifiable study with an ICH result and a label, one study with burned-in annotation."""
    spec = StudySpec(
        patient_id=PATIENT_ID,
        accession=ACCESSION,
        study_date=STUDY_DATE,
        series=[SeriesSpec(slices=3), SeriesSpec(slices=2, description="AXIAL HEAD 2")],
    )
    upload_study(orthanc, spec, mutate=_identify)
    burned = upload_study(orthanc, StudySpec(series=[SeriesSpec(slices=2)]), mutate=_burned_in)
    rows = []
    for s in (spec, burned):
        study = StudyFactory(
            study_instance_uid=s.study_uid,
            source=pacs_source,
            patient_id=s.patient_id,
            accession_number=s.accession,
            study_datetime=timezone.make_aware(dt.datetime(2019, 3, 14, 10, 15)),
        )
        series = SeriesFactory(study=study, series_instance_uid=s.series[0].series_uid)
        ResultFactory(series=series, finding="ich", score=0.83, threshold=0.5, model_version="1.2")
        GroundTruth.objects.create(study=study, finding="ich", label=True, source="csv")
        rows.append(study)
    return spec, rows


@pytest.fixture
def export_dir(settings, tmp_path) -> Path:
    settings.TRIAGE_EXPORT_DIR = tmp_path / "exports"
    return settings.TRIAGE_EXPORT_DIR


def _run(admin, *, date_option=DateOption.MODIFIED, filters=None, **kwargs) -> ValidationExport:
    row = export.export_request(actor=admin, filters=filters or {}, date_option=date_option, **kwargs)
    export.export_run(export_id=row.pk)
    row.refresh_from_db()
    assert row.state == ExportState.DONE, row.error
    return row


def _archive(export_dir: Path, row: ValidationExport) -> zipfile.ZipFile:
    return zipfile.ZipFile(export_dir / row.file_path)


def _datasets(archive: zipfile.ZipFile) -> list[Dataset]:
    return [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist() if n.endswith(".dcm")]


def _all_values(ds: Dataset) -> list[tuple[str, str]]:
    """Every element of the file, file meta and nested items included, as (tag, text)."""
    found: list[tuple[str, str]] = []

    def visit(_: Dataset, element) -> None:
        if element.VR != "SQ" and element.tag != 0x7FE00010:
            found.append((str(element.tag), str(element.value)))
        if element.tag.is_private:
            found.append((str(element.tag), "PRIVATE"))

    ds.file_meta.walk(visit)
    ds.walk(visit)
    return found


def _original_uids(spec: StudySpec, orthanc) -> set[str]:
    import requests

    uids = {spec.study_uid, NESTED_UID, *(s.series_uid for s in spec.series)}
    for series in spec.series:
        metadata = requests.get(
            f"{orthanc.dicomweb_url}/studies/{spec.study_uid}/series/{series.series_uid}/metadata", timeout=10
        ).json()
        uids |= {item["00080018"]["Value"][0] for item in metadata}
    return uids


def test_modified_dates_export_leaves_no_original_identifier_uid_or_date(studies, site_admin, export_dir, orthanc):
    spec, _ = studies
    row = _run(site_admin, date_option=DateOption.MODIFIED)
    forbidden = {NAME, "Doe", "Distinctive", PATIENT_ID, ACCESSION, STUDY_DATE, ACQ_DATE, BIRTH_DATE}
    forbidden |= _original_uids(spec, orthanc)
    leaks = [
        (tag, value)
        for ds in _datasets(_archive(export_dir, row))
        for tag, value in _all_values(ds)
        if value == "PRIVATE" or any(secret in value for secret in forbidden)
    ]
    assert leaks == []


def test_full_dates_export_keeps_study_dates_but_not_the_birth_date(studies, site_admin, export_dir):
    row = _run(site_admin, date_option=DateOption.FULL)
    datasets = _datasets(_archive(export_dir, row))
    values = [value for ds in datasets for _, value in _all_values(ds)]
    assert {ds.StudyDate for ds in datasets} == {STUDY_DATE}
    assert not any(BIRTH_DATE in v or PATIENT_ID in v or NAME in v for v in values)


def test_uids_are_remapped_consistently_across_files(studies, site_admin, export_dir):
    datasets = _datasets(_archive(export_dir, _run(site_admin)))
    files_per_series = Counter(ds.SeriesInstanceUID for ds in datasets)
    references = {ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID for ds in datasets}
    assert sorted(files_per_series.values()) == [2, 3]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len(references) == 1
    assert references != {NESTED_UID}
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)


def test_a_burned_in_annotation_study_is_excluded_and_counted(studies, site_admin, export_dir):
    spec, _ = studies
    row = _run(site_admin)
    archive = _archive(export_dir, row)
    manifest = json.loads(archive.read("manifest.json"))
    study_uids = {ds.StudyInstanceUID for ds in _datasets(archive)}
    assert row.counts["excluded_by_reason"] == {"burned_in_annotation": 1}
    assert manifest["counts"]["studies_excluded"] == 1
    assert manifest["excluded"][0]["reason"] == "burned_in_annotation"
    assert len(study_uids) == 1
    assert manifest["excluded"][0]["studies"][0] not in study_uids


def test_a_study_the_pacs_answers_with_a_malformed_retrieval_is_excluded_and_the_export_goes_on(
    studies, site_admin, export_dir, orthanc, proxy
):
    broken = upload_study(orthanc, StudySpec(series=[SeriesSpec(slices=2)]))
    behind_proxy = DicomWebSource.objects.create(name="pacs-behind-proxy", url=proxy.dicomweb_url)
    StudyFactory(study_instance_uid=broken.study_uid, source=behind_proxy)
    proxy.script.crafted_retrieval = lambda: ({"Content-Type": "text/html"}, [b"<html>login</html>"])

    row = _run(site_admin)

    manifest = json.loads(_archive(export_dir, row).read("manifest.json"))
    assert row.counts["excluded_by_reason"] == {"burned_in_annotation": 1, "pacs_bad_response": 1}
    assert row.counts["studies_exported"] == 1
    assert {item["reason"] for item in manifest["excluded"]} == {"burned_in_annotation", "pacs_bad_response"}


def test_the_csv_is_keyed_by_new_uids_and_matches_results_and_labels(studies, site_admin, export_dir):
    spec, _ = studies
    archive = _archive(export_dir, _run(site_admin))
    datasets = _datasets(archive)
    rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
    # The result's series is the first one: the only series with three instances.
    first_series = {ds.SeriesInstanceUID for ds in datasets if ds.InstanceNumber == 3}
    assert len(rows) == 1
    row = rows[0]
    assert row["study_uid"] == datasets[0].StudyInstanceUID
    assert row["study_uid"] != spec.study_uid
    assert row["series_uid"] in first_series
    assert (row["finding"], row["model"], row["version"], row["score"], row["threshold"]) == (
        "ich",
        "ich2d",
        "1.2",
        "0.83",
        "0.5",
    )
    assert (row["positive"], row["label"], row["label_source"]) == ("yes", "present", "csv")
    assert "patient_id" not in row


def test_the_manifest_names_profile_option_library_and_counts(studies, site_admin, export_dir):
    manifest = json.loads(_archive(export_dir, _run(site_admin)).read("manifest.json"))
    assert manifest["profile"] == export.PROFILE
    assert manifest["options"] == [DateOption.MODIFIED.label]
    assert manifest["library"]["name"] == "deid"
    assert manifest["library"]["version"] == "0.4.13"
    assert manifest["identified"] is False
    assert manifest["counts"]["studies_exported"] == 1
    assert manifest["counts"]["instances"] == 5
    assert "shift" not in json.dumps(manifest["counts"])


def test_the_job_reports_progress_and_is_audited(studies, site_admin, export_dir):
    row = _run(site_admin)
    actions = list(
        AuditEvent.objects.filter(object_type="ValidationExport", object_id=str(row.pk)).values_list(
            "action", flat=True
        )
    )
    data = json.dumps(list(AuditEvent.objects.values_list("data", flat=True)))
    assert (row.progress_done, row.progress_total) == (2, 2)
    assert sorted(actions) == ["export.completed", "export.requested"]
    assert PATIENT_ID not in data
    assert ACCESSION not in data
    assert NAME not in data


def test_the_selection_filters_by_result_and_label(studies, site_admin):
    assert export.export_studies_select(filters={"finding": "ich", "result": "negative"}).count() == 0
    assert export.export_studies_select(filters={"finding": "ich", "label": "present"}).count() == 2
    assert export.export_studies_select(filters={"date_from": "2020-01-01"}).count() == 0


def test_an_identified_export_requires_a_reason(site_admin):
    with pytest.raises(InvalidInput) as raised:
        export.export_request(actor=site_admin, filters={}, date_option=DateOption.MODIFIED, identified=True)
    assert raised.value.code == "reason_required"


def test_an_identified_export_keeps_identifiers_and_says_so(studies, site_admin, export_dir):
    reason = "Re-identification for the tumour board audit"
    row = _run(site_admin, identified=True, reason=reason)
    archive = _archive(export_dir, row)
    manifest = json.loads(archive.read("manifest.json"))
    audit = AuditEvent.objects.get(action="export.requested", object_id=str(row.pk))
    assert {ds.PatientID for ds in _datasets(archive)} == {PATIENT_ID}
    assert manifest["identified"] is True
    assert "IDENTIFIED" in manifest["WARNING"]
    assert audit.data["reason"] == reason
    assert audit.data["identified"] is True


def test_a_radiologist_cannot_reach_the_page_or_download(studies, site_admin, export_dir, rad_web):
    row = _run(site_admin)
    page = rad_web.get(reverse("console-exports"))
    download = rad_web.get(reverse("console-export-download", args=[row.pk]))
    assert (page.status_code, download.status_code) == (403, 403)


def test_an_admin_requests_an_export_and_downloads_it(
    studies, admin_web, site_admin, export_dir, django_capture_on_commit_callbacks
):
    form = {"date_option": "full", "label": "any", "result": "any", "finding": "ich"}
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_web.post(reverse("console-exports"), form)
    row = ValidationExport.objects.get()
    export.export_run(export_id=row.pk)
    download = admin_web.get(reverse("console-export-download", args=[row.pk]))
    page = admin_web.get(reverse("console-exports"))
    assert response.status_code == 302
    assert download.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))).testzip() is None
    assert b"Download" in page.content
    assert AuditEvent.objects.filter(action="export.downloaded", object_id=str(row.pk)).exists()


def test_the_form_refuses_an_identified_export_without_a_reason(admin_web):
    form = {"date_option": "modified", "label": "any", "result": "any", "identified": "on", "reason": ""}
    response = admin_web.post(reverse("console-exports"), form)
    assert response.status_code == 400
    assert not ValidationExport.objects.exists()


def test_the_form_needs_an_explicit_date_option(admin_web):
    response = admin_web.post(reverse("console-exports"), {"label": "any", "result": "any"})
    assert response.status_code == 400
    assert not ValidationExport.objects.exists()

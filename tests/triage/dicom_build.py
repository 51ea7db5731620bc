"""Small synthetic CT studies for ingest tests: real DICOM files that a real Orthanc stores and serves."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

UID_ROOT = "1.2.826.0.1.3680043.10.2."


@dataclass
class SeriesSpec:
    description: str = "AXIAL HEAD 5MM"
    body_part: str = "HEAD"
    contrast: str = ""
    slices: int = 12
    size: int = 32
    thickness: float = 5.0
    series_uid: str = field(default_factory=lambda: generate_uid(prefix=UID_ROOT))


@dataclass
class StudySpec:
    description: str = "CT HEAD WO CONTRAST"
    study_date: str = field(default_factory=lambda: dt.date.today().strftime("%Y%m%d"))
    accession: str = "ACC1"
    patient_id: str = "PID1"
    series: list[SeriesSpec] = field(default_factory=lambda: [SeriesSpec()])
    study_uid: str = field(default_factory=lambda: generate_uid(prefix=UID_ROOT))


def hu_volume(spec: SeriesSpec) -> np.ndarray:
    """A deterministic HU phantom: water head with a bright blob, air outside."""
    z, y, x = np.mgrid[0 : spec.slices, 0 : spec.size, 0 : spec.size]
    centre = (spec.size - 1) / 2
    inside = (y - centre) ** 2 + (x - centre) ** 2 < (spec.size * 0.4) ** 2
    hu = np.where(inside, 30 + (z % 5), -1000).astype(np.int16)
    hu[:, 4:8, 4:8] = 70
    return hu


def slice_dataset(study: StudySpec, series: SeriesSpec, index: int, pixels: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=UID_ROOT)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.Modality = "CT"
    ds.PatientID = study.patient_id
    ds.PatientName = "Synthetic^Test"
    ds.PatientSex = "O"
    ds.PatientAge = "061Y"
    ds.AccessionNumber = study.accession
    ds.StudyDate = study.study_date
    ds.StudyTime = "101500"
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = series.body_part
    ds.Manufacturer = "SYNTHETIC"
    if series.contrast:
        ds.ContrastBolusAgent = series.contrast
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.SliceThickness = series.thickness
    ds.ImagePositionPatient = [-64.0, -64.0, index * series.thickness]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = (pixels.astype(np.int32) + 1024).astype(np.uint16).tobytes()
    return ds


def study_datasets(study: StudySpec) -> list[Dataset]:
    datasets = []
    for series in study.series:
        for index, pixels in enumerate(hu_volume(series)):
            datasets.append(slice_dataset(study, series, index, pixels))
    return datasets


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

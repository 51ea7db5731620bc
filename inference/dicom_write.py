"""Writes phantoms as CT Image Storage DICOM series with plausible, entirely synthetic patient and study tags.

UIDs, names, dates and accession numbers come from the seed, so the same seed writes the same files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from inference.phantoms.types import Phantom

SUPPORTED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless)
_GIVEN = ("ALEX", "SAM", "JORDAN", "TAYLOR", "MORGAN", "CASEY", "ROBIN", "JAMIE", "KIM", "LEE", "NOOR", "RENE")
_FAMILY = ("PHANTOM", "SYNTHETIC", "TESTCASE", "DEMO")
_STUDY = {"ich": "CT HEAD WO CONTRAST", "lvo": "CTA HEAD NECK"}
_AGENTS = ("Iohexol 350 mgI/mL", "Iopamidol 370 mgI/mL", "Iodixanol 320 mgI/mL")
_WINDOWS = {"ich": ([40, 80], [80, 200]), "lvo": ([200, 150], [700, 700])}


@dataclass(frozen=True)
class StudyInfo:
    study_uid: str
    accession_number: str
    patient_id: str
    series: list[list[Path]]


def deterministic_uid(*parts: str) -> str:
    """A ``2.25`` UID from a hash of ``parts`` (``generate_uid(prefix=None)`` ignores its entropy sources)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def synthetic_patient(seed: int) -> dict[str, str]:
    """A made-up patient: name, ID, sex and birth date (the study date is drawn from the same seed)."""
    rng = np.random.default_rng([seed, 0xD1C0])
    age = int(rng.integers(18, 96))
    study_date = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    birth = study_date - dt.timedelta(days=365 * age + int(rng.integers(0, 365)))
    return {
        "PatientName": f"{_FAMILY[rng.integers(len(_FAMILY))]}^{_GIVEN[rng.integers(len(_GIVEN))]}",
        "PatientID": f"SYN{rng.integers(10**7):07d}",
        "PatientSex": str(rng.choice(["F", "M"])),
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientAge": f"{age:03d}Y",
        "StudyDate": study_date.strftime("%Y%m%d"),
        "StudyTime": f"{rng.integers(24):02d}{rng.integers(60):02d}{rng.integers(60):02d}",
        "AccessionNumber": f"ACC{rng.integers(10**8):08d}",
    }


def write_series(
    phantom: Phantom,
    out_dir: Path,
    *,
    seed: int,
    patient: dict[str, str] | None = None,
    study_uid: str | None = None,
    series_description: str | None = None,
    series_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    volume_hu: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> list[Path]:
    """One file per slice under ``out_dir``; ``volume_hu``/``spacing_mm`` override the phantom's (for reformats)."""
    syntax = _check_syntax(transfer_syntax)
    volume = phantom.volume_hu if volume_hu is None else volume_hu
    spacing = phantom.spacing_mm if spacing_mm is None else spacing_mm
    tags = {**synthetic_patient(seed), **(patient or {})}
    study_uid = study_uid or deterministic_uid(str(seed), "study")
    series_uid = deterministic_uid(study_uid, str(series_number), "series")
    base = _series_dataset(phantom, tags, study_uid, series_uid, series_number, series_description, spacing)
    intercept = float(phantom.meta.get("scanner", {}).get("rescale_intercept", -1024.0))
    stored = _stored_pixels(volume, intercept)
    out_dir.mkdir(parents=True, exist_ok=True)
    origin = _origin(volume.shape, spacing)
    paths = []
    for k in range(volume.shape[0]):
        ds = _slice_dataset(base, stored, k, origin, spacing, intercept, series_uid)
        if syntax != ExplicitVRLittleEndian and syntax != ImplicitVRLittleEndian:
            ds.compress(syntax, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        path = out_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(
    phantom: Phantom,
    out_dir: Path,
    *,
    seed: int,
    patient: dict[str, str] | None = None,
    thick_reformat: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> StudyInfo:
    """A study of one series (the phantom as acquired) and, for thin slices, optionally a 5 mm averaged reformat."""
    tags = {**synthetic_patient(seed), **(patient or {})}
    study_uid = deterministic_uid(str(seed), "study")
    series = [
        write_series(
            phantom, out_dir / "series1", seed=seed, patient=tags, study_uid=study_uid, transfer_syntax=transfer_syntax
        )
    ]
    factor = int(round(5.0 / phantom.spacing_mm[0]))
    if thick_reformat and factor >= 2:
        n = phantom.volume_hu.shape[0] // factor
        thick = phantom.volume_hu[: n * factor].reshape(n, factor, *phantom.volume_hu.shape[1:]).mean(axis=1)
        spacing = (phantom.spacing_mm[0] * factor, *phantom.spacing_mm[1:])
        description = f"{_default_description(phantom, spacing[0])} MPR"
        series.append(
            write_series(
                phantom,
                out_dir / "series2",
                seed=seed,
                patient=tags,
                study_uid=study_uid,
                series_description=description,
                series_number=2,
                volume_hu=thick,
                spacing_mm=spacing,
                transfer_syntax=transfer_syntax,
            )
        )
    return StudyInfo(study_uid, tags["AccessionNumber"], tags["PatientID"], series)


def _check_syntax(syntax: str) -> UID:
    uid = UID(syntax)
    if uid not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(f'"{s.name}"' for s in SUPPORTED_TRANSFER_SYNTAXES)
        raise ValueError(f'Transfer syntax "{syntax}" is not supported for writing; use one of {names}')
    return uid


def _default_description(phantom: Phantom, thickness: float) -> str:
    kernel = phantom.meta.get("scanner", {}).get("kernel", "")
    prefix = "HEAD AXIAL" if phantom.finding == "ich" else "CTA HEAD"
    return f"{prefix} {thickness:g}mm {kernel}".strip()


def _series_dataset(
    phantom: Phantom,
    tags: dict[str, str],
    study_uid: str,
    series_uid: str,
    series_number: int,
    description: str | None,
    spacing: tuple[float, float, float],
) -> Dataset:
    scan = phantom.meta.get("scanner", {})
    ds = Dataset()
    for key in ("PatientName", "PatientID", "PatientSex", "PatientBirthDate", "PatientAge"):
        setattr(ds, key, tags[key])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = tags["StudyDate"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = tags["StudyTime"]
    ds.AccessionNumber = tags["AccessionNumber"]
    ds.StudyID = tags["AccessionNumber"][-6:]
    ds.StudyDescription = _STUDY[phantom.finding]
    ds.ReferringPhysicianName = "REFERRER^EMERGENCY"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.RequestedProcedurePriority = "STAT"
    ds.Modality, ds.BodyPartExamined = "CT", "HEAD"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description or _default_description(phantom, spacing[0])
    ds.ProtocolName = ds.StudyDescription
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if series_number == 1 else ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Manufacturer = scan.get("manufacturer", "SYNTHETIC")
    ds.ManufacturerModelName = scan.get("model", "PHANTOM")
    ds.ConvolutionKernel = scan.get("kernel", "STANDARD")
    ds.KVP = scan.get("kvp", 120.0)
    ds.XRayTubeCurrent = int(scan.get("tube_ma", 250))
    ds.SliceThickness = _ds(spacing[0] if series_number > 1 else scan.get("slice_thickness_mm", spacing[0]))
    ds.SpacingBetweenSlices = _ds(spacing[0])
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = deterministic_uid(study_uid, "frame")
    ds.PositionReferenceIndicator = ""
    if phantom.finding == "lvo":
        rng = np.random.default_rng([int(phantom.meta.get("seed", 0)), 0xC0])
        ds.ContrastBolusAgent = _AGENTS[rng.integers(len(_AGENTS))]
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = float(rng.choice([50.0, 60.0, 70.0, 80.0]))
    centers, widths = _WINDOWS[phantom.finding]
    ds.WindowCenter, ds.WindowWidth = centers, widths
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = phantom.volume_hu.shape[1], phantom.volume_hu.shape[2]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[2])]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SOPClassUID = CTImageStorage
    return ds


def _stored_pixels(volume: np.ndarray, intercept: float) -> np.ndarray:
    """HU to stored values: unsigned 12-bit with intercept -1024, signed 16-bit otherwise."""
    stored = np.rint(np.clip(volume, -1024.0, 3071.0) - intercept)
    return stored.astype(np.uint16 if intercept == -1024.0 else np.int16)


def _origin(shape: tuple[int, ...], spacing: tuple[float, float, float]) -> np.ndarray:
    """Patient position of voxel (0, 0, 0): the matrix centred on the isocentre, the head above the table."""
    return np.array([-120.0, -(shape[1] - 1) / 2.0 * spacing[1], -(shape[2] - 1) / 2.0 * spacing[2]])


def _slice_dataset(
    base: Dataset,
    stored: np.ndarray,
    k: int,
    origin: np.ndarray,
    spacing: tuple[float, float, float],
    intercept: float,
    series_uid: str,
) -> Dataset:
    ds = Dataset()
    ds.update(base)
    ds.SOPInstanceUID = deterministic_uid(series_uid, str(k))
    ds.InstanceNumber = k + 1
    z = float(origin[0] + k * spacing[0])
    ds.ImagePositionPatient = [_ds(origin[2]), _ds(origin[1]), _ds(z)]
    ds.SliceLocation = _ds(z)
    unsigned = stored.dtype == np.uint16
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if unsigned else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0 if unsigned else 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1.0, "HU"
    ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _ds(value: float) -> float:
    """Rounds to what a decimal string (16 characters at most) can hold."""
    return round(float(value), 5)

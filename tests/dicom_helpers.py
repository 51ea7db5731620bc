"""Small synthetic CT series written with pydicom, and a lossless JPEG encoder for tests of JPEG Lossless decoding.

pydicom can encode RLE and JPEG 2000 but not JPEG Lossless (Process 14), and no file of that syntax with an
uncompressed original ships with it; :func:`jpeg_lossless_encode` writes a baseline-conformant SV1 stream instead.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_slice(
    raw: np.ndarray,
    *,
    position: Sequence[float],
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.5, 0.5),
    slope: float = 1.0,
    intercept: float = -1024.0,
    instance_number: int = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    modality: str = "CT",
    slice_thickness: float = 1.0,
) -> Dataset:
    """One CT Image Storage instance holding ``raw`` stored values (int16 signed or uint16 unsigned)."""
    raw = np.ascontiguousarray(raw)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "Synthetic^Phantom"
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8g}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6g}" for v in pixel_spacing]
    ds.SliceThickness = f"{slice_thickness:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = raw.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if raw.dtype == np.int16 else 0
    ds.PixelData = raw.astype("<i2" if raw.dtype == np.int16 else "<u2").tobytes()
    return ds


def ct_series(
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.0, 0.5, 0.5),
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-4.0, -4.0, 10.0),
    slopes: Sequence[float] | None = None,
    intercepts: Sequence[float] | None = None,
    series_uid: str | None = None,
) -> list[Dataset]:
    """A series whose volume is ``hu`` (z, y, x), slices stacked along the normal of ``orientation``.

    HU values must be representable as ``raw * slope + intercept`` with int16 ``raw``.
    """
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    uid = series_uid or generate_uid()
    slices = []
    for k, plane in enumerate(hu):
        slope = slopes[k] if slopes is not None else 1.0
        intercept = intercepts[k] if intercepts is not None else -1024.0
        raw = np.rint((plane - intercept) / slope).astype(np.int16)
        position = np.asarray(origin, float) + k * spacing[0] * normal
        slices.append(
            ct_slice(
                raw,
                position=position,
                orientation=orientation,
                pixel_spacing=(spacing[1], spacing[2]),
                slope=slope,
                intercept=intercept,
                instance_number=k + 1,
                series_uid=uid,
                slice_thickness=spacing[0],
            )
        )
    return slices


def phantom_hu(shape: tuple[int, int, int] = (6, 12, 10), seed: int = 0) -> np.ndarray:
    """Integer HU values from air to bone, different on every slice so that sorting errors show."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1900, size=shape).astype(np.float32)
    hu[:, 0, 0] = np.arange(shape[0]) * 10  # a per-slice signature
    return hu


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def reread(ds: Dataset) -> Dataset:
    """Write and read back, as a file from the PACS would arrive."""
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


# ---------------------------------------------------------------------------------------------------------------
# JPEG Lossless (ITU-T T.81 Annex H, Huffman, one component, predictor 1)
# ---------------------------------------------------------------------------------------------------------------


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.nbits = 0

    def write(self, value: int, nbits: int) -> None:
        self.acc = (self.acc << nbits) | (value & ((1 << nbits) - 1))
        self.nbits += nbits
        while self.nbits >= 8:
            self.nbits -= 8
            byte = (self.acc >> self.nbits) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # byte stuffing
        self.acc &= (1 << self.nbits) - 1

    def flush(self) -> bytes:
        if self.nbits:
            self.write((1 << (8 - self.nbits)) - 1, 8 - self.nbits)  # pad with 1-bits
        return bytes(self.out)


def jpeg_lossless_encode(image: np.ndarray, precision: int = 16) -> bytes:
    """Encode a 2-D array of stored values (bit patterns up to ``precision`` bits) as a lossless JPEG stream."""
    rows, cols = image.shape
    modulus = 1 << 16
    samples = image.astype(np.int64) & ((1 << precision) - 1)
    prediction = np.empty_like(samples)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = samples[0, :-1]
    prediction[1:, 0] = samples[:-1, 0]
    prediction[1:, 1:] = samples[1:, :-1]
    diffs = (samples - prediction) % modulus
    diffs = np.where(diffs > 32768, diffs - modulus, diffs)
    # A table of 17 five-bit codes: category c has code c.
    writer = _BitWriter()
    for diff in diffs.ravel().tolist():
        category = 16 if diff == 32768 else abs(diff).bit_length()
        writer.write(category, 5)
        if 0 < category < 16:
            writer.write(diff if diff > 0 else diff - 1, category)
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + b"\x00" + counts + bytes(range(17))
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision]) + rows.to_bytes(2, "big")
    sof += cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + writer.flush() + b"\xff\xd9"


def compress_jpeg_lossless(ds: Dataset, syntax: str = "1.2.840.10008.1.2.4.70") -> Dataset:
    """Replace native pixel data with encapsulated JPEG Lossless (SV1, valid for .57 and .70)."""
    stored = ds.pixel_array
    ds.PixelData = encapsulate([jpeg_lossless_encode(stored, precision=int(ds.BitsStored))])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def enhanced_ct(
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.0, 0.5, 0.5),
    frame_order: Sequence[int] | None = None,
    slopes: Sequence[float] | None = None,
    intercepts: Sequence[float] | None = None,
) -> Dataset:
    """One Enhanced CT instance whose frames hold the slices of ``hu`` in ``frame_order``, geometry per frame."""
    order = list(frame_order) if frame_order is not None else list(range(len(hu)))
    slopes = slopes or [1.0] * len(hu)
    intercepts = intercepts or [-1024.0] * len(hu)
    template = ct_slice(np.zeros(hu.shape[1:], np.int16), position=(0, 0, 0))
    ds = template
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope"):
        del ds[keyword]
    del ds.RescaleIntercept
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    measures, plane = Dataset(), Dataset()
    measures.PixelSpacing = [spacing[1], spacing[2]]
    measures.SliceThickness = spacing[0]
    plane.ImageOrientationPatient = list(AXIAL)
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, groups = [], []
    for k in order:
        raw = np.rint((hu[k] - intercepts[k]) / slopes[k]).astype("<i2")
        frames.append(raw.tobytes())
        position, transform, item = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, k * spacing[0]]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slopes[k], intercepts[k], "HU"
        item.PlanePositionSequence = [position]
        item.PixelValueTransformationSequence = [transform]
        groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.PixelData = b"".join(frames)
    return ds

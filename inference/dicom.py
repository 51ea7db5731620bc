"""The DICOM instances of one CT series to a float32 Hounsfield-unit volume with its geometry.

Headers are checked before any pixel is decoded, so a series that is too large, incomplete or inconsistent is
rejected cheaply. Every rejection is a :class:`VolumeError` with a stable ``code`` and a message an admin can act on;
messages name instances by their place in the input and their Instance Number, never by patient data or UIDs.

Codes:

- ``corrupt_file``: unreadable or truncated file, or pixel data that fails to decode.
- ``missing_pixel_data``: an instance without Pixel Data.
- ``unsupported_transfer_syntax``: a transfer syntax outside ``inference.dicom_header.SUPPORTED_TRANSFER_SYNTAXES``.
- ``unsupported_image``: colour, floating-point or multi-frame images without per-frame geometry.
- ``invalid_header``: a required attribute (rows, position, orientation, pixel spacing, rescale) missing or malformed,
  or native pixel data longer than Rows × Columns × Number of Frames × Bits Allocated declare.
- ``not_ct``: a modality outside the ones asked for.
- ``mixed_orientation``: slices with different orientations.
- ``inconsistent_geometry``: rows, columns or pixel spacing differ, or the slice spacing is irregular.
- ``duplicate_slices``: two different images at the same position. Exact copies (the same SOP Instance UID, or
  identical pixel data and rescale) are dropped instead, because a PACS that sends an instance twice has not
  changed the series.
- ``missing_slices``: a step between neighbouring slices over ``gap_tolerance`` times the median step.
- ``too_few_slices``: fewer slices than ``min_slices`` after duplicates are dropped.
- ``series_too_large``: more instances than ``max_instances``, or a volume over ``max_bytes``.
- ``instance_too_large``: one instance whose file, inflated data set (Deflated Explicit VR Little Endian) or declared
  pixel data is over ``max_instance_bytes``; refused before anything of that size is allocated.

Slices are sorted along the slice normal (row cosines × column cosines), so ``hu[0]`` is the slice with the lowest
position along the normal; for axial images with the usual orientation that is the most inferior slice.
Gantry tilt is accepted and reported in ``meta["gantry_tilt_deg"]``; the volume is then stacked along the normal
without shearing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from scipy import ndimage as ndi

from inference.dicom_header import (
    _READ_ERRORS,
    VolumeError,
    _attr_name,
    _cap,
    _floats,
    _fmt,
    _frames,
    _int_attr,
    _mib,
    _optional_float,
    _rescale,
    read_dataset,
    validate_instance,
)

__all__ = ["Volume", "VolumeError", "assemble_volume", "check_series_size", "read_dataset", "validate_instance"]

logger = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-3  # per direction cosine
PIXEL_SPACING_TOLERANCE = 1e-3  # relative
SAME_POSITION_MM = 1e-2
AIR_HU = -1024.0  # what padding becomes, and what fills the edge of a slice shifted back from a gantry tilt


@dataclass(frozen=True)
class Volume:
    """HU voxels indexed (z, y, x) with the geometry that maps them to patient coordinates (LPS, mm).

    Voxel (k, j, i) lies at ``origin + k·spacing_z·normal + j·spacing_y·column + i·spacing_x·row``.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    slice_positions: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return cast(tuple[int, int, int], self.hu.shape)

    @property
    def normal(self) -> np.ndarray:
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        return np.cross(row, col)

    def patient_position(self, z: float, y: float, x: float) -> np.ndarray:
        """Patient coordinates (mm) of a voxel index, for key-image and localisation output."""
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        dz, dy, dx = self.spacing_mm
        return np.asarray(self.origin) + z * dz * self.normal + y * dy * col + x * dx * row


@dataclass
class _Frame:
    """One 2-D image of the series: a single-frame instance or one frame of an enhanced multi-frame instance."""

    ds: Dataset
    frame: int | None
    label: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    orientation: np.ndarray
    ipp: np.ndarray
    slope: float
    intercept: float
    position: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# Reading and per-instance checks
# ---------------------------------------------------------------------------------------------------------------


def check_series_size(
    *, instances: int, rows: int, columns: int, max_bytes: int | None = None, max_instances: int | None = None
) -> None:
    """Reject a series from its counts alone, e.g. from QIDO-RS attributes before anything is downloaded."""
    _check_instance_count(instances, max_instances)
    nbytes = instances * rows * columns * 4
    if max_bytes is not None and nbytes > max_bytes:
        raise VolumeError(
            "series_too_large",
            f"The volume would take {_mib(nbytes)} ({instances} × {rows} × {columns} float32); "
            f"the limit is {_mib(max_bytes)}.",
        )


def assemble_volume(
    datasets: Sequence[Dataset],
    *,
    max_bytes: int | None = None,
    max_instances: int | None = None,
    max_instance_bytes: int | None = None,
    min_slices: int = 3,
    modalities: Sequence[str] | None = ("CT",),
    gap_tolerance: float = 1.5,
) -> Volume:
    """Sort, check and decode one series into a float32 HU volume (z, y, x).

    ``max_bytes`` bounds the float32 volume, ``max_instance_bytes`` each instance's stored pixel data as its header
    declares it (checked against the real length); ``modalities=None`` accepts any modality (tests use MR files).
    """
    _check_instance_count(len(datasets), max_instances)
    _check_size_from_headers(datasets, max_bytes)
    frames: list[_Frame] = []
    syntaxes: set[str] = set()
    for index, ds in enumerate(datasets):
        label = _instance_label(ds, index)
        validate_instance(ds, label=label, max_bytes=max_instance_bytes)
        _check_modality(ds, modalities, label)
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        frames.extend(_frames_of(ds, label))
    if not frames:
        raise VolumeError("too_few_slices", "The series has no images.")
    row, col, normal = _common_orientation(frames)
    _check_common_grid(frames)
    for frame in frames:
        frame.position = float(np.dot(frame.ipp, normal))
    frames.sort(key=lambda f: f.position)
    frames, dropped = _drop_exact_duplicates(frames)
    if len(frames) < min_slices:
        raise VolumeError(
            "too_few_slices", f"The series has {len(frames)} distinct slice(s); at least {min_slices} are needed."
        )
    spacing_z = _slice_spacing(frames, gap_tolerance)
    hu = _decode_all(frames)
    deskewed = _deskew(hu, frames, row, col)
    first = frames[0]
    return Volume(
        hu=hu,
        spacing_mm=(spacing_z, first.pixel_spacing[0], first.pixel_spacing[1]),
        origin=tuple(float(v) for v in first.ipp),  # type: ignore[arg-type]
        orientation=tuple(float(v) for v in (*row, *col)),  # type: ignore[arg-type]
        slice_positions=tuple(f.position for f in frames),
        meta={**_meta(datasets, frames, syntaxes, dropped, normal), "deskewed": deskewed},
    )


def _check_size_from_headers(datasets: Sequence[Dataset], max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    total = 0
    for ds in datasets:
        try:
            total += int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * _frames(ds) * 4
        except (TypeError, ValueError):
            continue  # validate_instance names the broken attribute
    if total > max_bytes:
        raise VolumeError(
            "series_too_large",
            f"The volume would take {_mib(total)} as float32 ({len(datasets)} instances); "
            f"the limit is {_mib(max_bytes)}.",
        )


def _check_instance_count(instances: int, max_instances: int | None) -> None:
    if max_instances is not None and instances > max_instances:
        raise VolumeError("series_too_large", f"The series has {instances} images; the limit is {max_instances}.")


def _check_modality(ds: Dataset, modalities: Sequence[str] | None, label: str) -> None:
    if modalities is None:
        return
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality not in {m.upper() for m in modalities}:
        raise VolumeError(
            "not_ct", f"{_cap(label)} has modality {modality or '(none)'}; expected {', '.join(modalities)}."
        )


def _frames_of(ds: Dataset, label: str) -> list[_Frame]:
    count = _frames(ds)
    if count == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        return [_single_frame(ds, label)]
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise VolumeError(
            "unsupported_image", f"{_cap(label)} has {count} frames without per-frame positions (not enhanced CT)."
        )
    return _enhanced_frames(ds, label, count)


def _single_frame(ds: Dataset, label: str) -> _Frame:
    slope, intercept = _rescale(ds, label)
    return _Frame(
        ds=ds,
        frame=None,
        label=label,
        rows=_int_attr(ds, "Rows", label),
        columns=_int_attr(ds, "Columns", label),
        pixel_spacing=_floats(ds, "PixelSpacing", 2, label),  # type: ignore[arg-type]
        orientation=np.asarray(_floats(ds, "ImageOrientationPatient", 6, label)),
        ipp=np.asarray(_floats(ds, "ImagePositionPatient", 3, label)),
        slope=slope,
        intercept=intercept,
    )


def _enhanced_frames(ds: Dataset, label: str, count: int) -> list[_Frame]:
    """Enhanced CT keeps geometry and rescale in functional groups, per frame or shared by all frames."""
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != count:
        raise VolumeError(
            "invalid_header", f"{_cap(label)} has {count} frames but {len(per_frame)} per-frame functional groups."
        )
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    frames = []
    for index, item in enumerate(per_frame):
        frame_label = f"frame {index + 1} of {label}"
        spacing = _group_attr(item, shared_item, "PixelMeasuresSequence", "PixelSpacing", 2, frame_label)
        orientation = _group_attr(
            item, shared_item, "PlaneOrientationSequence", "ImageOrientationPatient", 6, frame_label
        )
        ipp = _group_attr(item, shared_item, "PlanePositionSequence", "ImagePositionPatient", 3, frame_label)
        slope, intercept = _group_rescale(item, shared_item, ds, frame_label)
        frames.append(
            _Frame(
                ds=ds,
                frame=index,
                label=frame_label,
                rows=_int_attr(ds, "Rows", label),
                columns=_int_attr(ds, "Columns", label),
                pixel_spacing=spacing,
                orientation=np.asarray(orientation),
                ipp=np.asarray(ipp),
                slope=slope,
                intercept=intercept,
            )
        )
    return frames


def _group_attr(item: Dataset, shared: Dataset, sequence: str, keyword: str, count: int, label: str) -> tuple:
    for group in (item, shared):
        seq = group.get(sequence)
        if seq and keyword in seq[0]:
            return _floats(seq[0], keyword, count, label)
    raise VolumeError("invalid_header", f"{_cap(label)} has no {_attr_name(keyword)}.")


def _group_rescale(item: Dataset, shared: Dataset, ds: Dataset, label: str) -> tuple[float, float]:
    for group in (item, shared):
        seq = group.get("PixelValueTransformationSequence")
        if seq:
            return _rescale(seq[0], label)
    return _rescale(ds, label)


def _common_orientation(frames: list[_Frame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reference = frames[0].orientation
    for frame in frames[1:]:
        if np.max(np.abs(frame.orientation - reference)) > ORIENTATION_TOLERANCE:
            raise VolumeError(
                "mixed_orientation",
                f"{_cap(frame.label)} has orientation {_fmt(frame.orientation)}, "
                f"unlike {frames[0].label} ({_fmt(reference)}).",
            )
    row, col = reference[:3], reference[3:]
    row_norm, col_norm = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if abs(row_norm - 1) > 1e-2 or abs(col_norm - 1) > 1e-2 or abs(float(np.dot(row, col))) > 1e-2:
        raise VolumeError(
            "invalid_header", f"Image Orientation (Patient) {_fmt(reference)} is not two orthogonal unit vectors."
        )
    row, col = row / row_norm, col / col_norm
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _check_common_grid(frames: list[_Frame]) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise VolumeError(
                "inconsistent_geometry",
                f"{_cap(frame.label)} is {frame.rows}×{frame.columns} pixels; "
                f"{first.label} is {first.rows}×{first.columns}.",
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=PIXEL_SPACING_TOLERANCE, atol=0):
            raise VolumeError(
                "inconsistent_geometry",
                f"{_cap(frame.label)} has pixel spacing {_fmt(frame.pixel_spacing)} mm; "
                f"{first.label} has {_fmt(first.pixel_spacing)} mm.",
            )


def _drop_exact_duplicates(frames: list[_Frame]) -> tuple[list[_Frame], int]:
    """Keep one of each exact copy; two different images at one position cannot be stacked."""
    kept = [frames[0]]
    for frame in frames[1:]:
        previous = kept[-1]
        if frame.position - previous.position > SAME_POSITION_MM:
            kept.append(frame)
            continue
        if not _same_image(frame, previous):
            raise VolumeError(
                "duplicate_slices",
                f"{_cap(previous.label)} and {frame.label} are different images at the same position "
                f"({frame.position:.2f} mm along the slice normal).",
            )
    return kept, len(frames) - len(kept)


def _same_image(a: _Frame, b: _Frame) -> bool:
    uid_a, uid_b = a.ds.get("SOPInstanceUID"), b.ds.get("SOPInstanceUID")
    if a.frame is None and b.frame is None and uid_a and uid_a == uid_b:
        return True
    if a.frame is not None or b.frame is not None:
        return False  # frames of enhanced instances share one Pixel Data element; compare them decoded
    same_rescale = (a.slope, a.intercept) == (b.slope, b.intercept)
    return same_rescale and a.ds.PixelData == b.ds.PixelData


def _slice_spacing(frames: list[_Frame], gap_tolerance: float) -> float:
    if len(frames) == 1:
        thickness = frames[0].ds.get("SpacingBetweenSlices") or frames[0].ds.get("SliceThickness")
        return float(thickness) if thickness else 1.0
    positions = np.fromiter((f.position for f in frames), dtype=np.float64, count=len(frames))
    steps = np.diff(positions)
    median = float(np.median(steps))
    narrowest = int(np.argmin(steps))
    if steps[narrowest] * gap_tolerance < median:
        raise VolumeError(
            "inconsistent_geometry",
            f"The slice spacing is irregular: {steps[narrowest]:.2f} mm between {frames[narrowest].label} and "
            f"{frames[narrowest + 1].label}, {median:.2f} mm elsewhere.",
        )
    widest = int(np.argmax(steps))
    if steps[widest] > gap_tolerance * median:
        missing = round(steps[widest] / median) - 1
        raise VolumeError(
            "missing_slices",
            f"Slices are missing between {frames[widest].label} and {frames[widest + 1].label}: a gap of "
            f"{steps[widest]:.2f} mm where the slices are {median:.2f} mm apart (about {max(missing, 1)} missing).",
        )
    return median


def _decode_all(frames: list[_Frame]) -> np.ndarray:
    """Decode into one preallocated float32 array, rescaling each slice in place (no float64 copy). Pixels marked
    as padding (Pixel Padding Value, up to Pixel Padding Range Limit) become air whatever their stored value, so a
    padding of 65535 or -2000 never reads as bone or as something below air."""
    first = frames[0]
    hu = np.empty((len(frames), first.rows, first.columns), dtype=np.float32)
    for index, frame in enumerate(frames):
        pixels = _decode_frame(frame)
        target = hu[index]
        if frame.slope == 1.0:
            target[...] = pixels
        else:
            np.multiply(pixels, np.float32(frame.slope), out=target, casting="unsafe")
        if frame.intercept != 0.0:
            target += np.float32(frame.intercept)
        padding = _padding_range(frame.ds)
        if padding is not None:
            target[(pixels >= padding[0]) & (pixels <= padding[1])] = AIR_HU
    return hu


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    try:
        value = ds.get("PixelPaddingValue")
        if value is None:
            return None
        limit = ds.get("PixelPaddingRangeLimit", value)
        low, high = sorted((int(value), int(limit)))
    except (TypeError, ValueError):
        return None  # an unreadable padding value only loses the clean-up, never the study
    return low, high


def _deskew(hu: np.ndarray, frames: list[_Frame], row: np.ndarray, col: np.ndarray) -> bool:
    """Gantry tilt: each slice's origin moves in plane along the stack. Shifting every slice back (linear
    interpolation, air outside) puts the voxels on the orthogonal grid that ``Volume`` describes. In place."""
    base = frames[0].ipp
    shifts = [
        (float(np.dot(f.ipp - base, col)) / f.pixel_spacing[0], float(np.dot(f.ipp - base, row)) / f.pixel_spacing[1])
        for f in frames
    ]
    if max(abs(v) for shift in shifts for v in shift) < 0.05:
        return False
    for k, shift in enumerate(shifts):
        if max(abs(v) for v in shift) >= 1e-3:
            hu[k] = ndi.shift(hu[k], shift, order=1, mode="constant", cval=AIR_HU)
    return True


def _decode_frame(frame: _Frame) -> np.ndarray:
    syntax = frame.ds.file_meta.TransferSyntaxUID
    try:
        pixels, _ = get_decoder(syntax).as_array(frame.ds, index=frame.frame)
    except (RuntimeError, IndexError, *_READ_ERRORS) as err:  # the decoder refuses a header it cannot follow
        raise VolumeError(
            "corrupt_file", f"The pixel data of {frame.label} could not be decoded ({type(err).__name__})."
        ) from err
    if pixels.shape != (frame.rows, frame.columns):
        raise VolumeError(
            "corrupt_file",
            f"The pixel data of {frame.label} decoded to {pixels.shape}, not {frame.rows}×{frame.columns}.",
        )
    return pixels


def _meta(
    datasets: Sequence[Dataset], frames: list[_Frame], syntaxes: set[str], dropped: int, normal: np.ndarray
) -> dict[str, Any]:
    first = datasets[0]
    return {
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
        "modality": str(first.get("Modality", "")),
        "instance_count": len(datasets),
        "slice_count": len(frames),
        "rows": frames[0].rows,
        "columns": frames[0].columns,
        "transfer_syntaxes": sorted(syntaxes),
        "duplicates_dropped": dropped,
        "gantry_tilt_deg": _tilt_degrees(frames, normal),
        "slice_thickness_mm": _optional_float(first.get("SliceThickness")),
        "rescale_varies": len({(f.slope, f.intercept) for f in frames}) > 1,
    }


def _tilt_degrees(frames: list[_Frame], normal: np.ndarray) -> float:
    """Angle between the stacking direction of the positions and the slice normal (0 without gantry tilt)."""
    if len(frames) < 2:
        return 0.0
    direction = frames[-1].ipp - frames[0].ipp
    length = float(np.linalg.norm(direction))
    if length == 0:
        return 0.0
    cosine = min(1.0, abs(float(np.dot(direction, normal))) / length)
    return round(math.degrees(math.acos(cosine)), 3)


# ---------------------------------------------------------------------------------------------------------------
# Small attribute helpers
# ---------------------------------------------------------------------------------------------------------------


def _instance_label(ds: Dataset, index: int) -> str:
    number = ds.get("InstanceNumber")
    return f"instance #{index + 1}" + (f" (Instance Number {number})" if number not in (None, "") else "")

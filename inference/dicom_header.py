"""Reading one DICOM instance and checking its header before any pixel is decoded.

Every refusal is a :class:`VolumeError` with a stable ``code`` (listed in ``inference.dicom``) and a message that
names the instance by its place in the input, never by patient data or UIDs.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble

SUPPORTED_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, First-Order Prediction",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", DEFLATED, "1.2.840.10008.1.2.2"})

# One instance's bytes, inflated or decoded, when the caller names no limit: bounded is the only way to read.
DEFAULT_MAX_INSTANCE_BYTES = 1 << 30


_UNDEFINED_LENGTH = 0xFFFFFFFF


_READ_ERRORS = (
    EOFError,
    OSError,
    ValueError,
    KeyError,
    OverflowError,
    TypeError,
    AttributeError,
    NotImplementedError,  # pydicom: an unknown VR in a raw element
    struct.error,
    BytesLengthException,
)


_ITEM_TAG_LE = b"\xfe\xff\x00\xe0"


class VolumeError(Exception):
    """A series that cannot become a volume. ``code`` is stable; ``message`` holds no patient data."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def read_dataset(
    data: bytes | bytearray | memoryview | str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
) -> Dataset:
    """Parse one DICOM Part 10 file (bytes or a path) and check it can give pixels, without decoding them.

    ``max_bytes`` bounds the file, its inflated data set (deflated transfer syntax) and its decoded pixel data.
    """
    raw = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else Path(data).read_bytes()
    ds = parse_part10(raw, max_bytes=max_bytes)
    if len(ds) == 0:
        raise VolumeError("corrupt_file", "The file holds no data set after its file meta information.")
    try:
        _check_ends_on_an_element(ds, len(raw))
        for _ in ds.iterall():  # converts every raw element now, so a malformed one is refused here with a code
            pass
    except _READ_ERRORS as err:
        raise VolumeError("corrupt_file", f"The file has a malformed element ({type(err).__name__}).") from err
    validate_instance(ds, label="the file", max_bytes=max_bytes)
    return ds


def parse_part10(
    raw: bytes | bytearray, *, max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES, label: str = "the file"
) -> Dataset:
    """Parse a Part 10 file without any check beyond its size; a deflated data set is inflated within ``max_bytes``.

    pydicom inflates a deflated data set with one unbounded ``zlib.decompress``: a few kilobytes of zeros would
    become gigabytes. Such files are read here instead, through a decompressor that stops at the limit.
    """
    if len(raw) > max_bytes:
        raise VolumeError("instance_too_large", f"{_cap(label)} has {_mib(len(raw))}; the limit is {_mib(max_bytes)}.")
    try:
        fp = io.BytesIO(raw)
        preamble = read_preamble(fp, True)  # force: no preamble rewinds, and the checks below decide
        meta = _read_file_meta_info(fp)
        if str(meta.get("TransferSyntaxUID", "")).strip() == DEFLATED:
            return _read_deflated(fp, preamble, meta, max_bytes=max_bytes, label=label)
        ds: Dataset = pydicom.dcmread(io.BytesIO(raw))
    except InvalidDicomError:
        ds = _read_without_preamble(raw)
    except _READ_ERRORS as err:
        raise VolumeError("corrupt_file", f"The file could not be read as DICOM ({type(err).__name__}).") from err
    return ds


def _read_deflated(
    fp: io.BytesIO, preamble: bytes | None, meta: FileMetaDataset, *, max_bytes: int, label: str
) -> Dataset:
    """What pydicom's reader does for Deflated Explicit VR Little Endian, with a bounded inflation."""
    inflated = io.BytesIO(inflate_bounded(fp.read(), max_bytes=max_bytes, label=label))
    dataset = pydicom.filereader.read_dataset(inflated, is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(inflated, dataset, preamble=preamble, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds


def inflate_bounded(zipped: bytes, *, max_bytes: int, label: str = "the file") -> bytes:
    """Inflate raw deflate data (PS3.5 A.5) to at most ``max_bytes``; a larger result is refused, not built."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(zipped, max_bytes + 1)
    except zlib.error as err:
        raise VolumeError("corrupt_file", f"The deflated data set of {label} cannot be inflated.") from err
    if len(inflated) > max_bytes or inflater.unconsumed_tail:
        raise VolumeError(
            "instance_too_large",
            f"The deflated data set of {label} inflates to more than {_mib(max_bytes)}, the limit.",
        )
    if not inflater.eof:
        raise VolumeError("corrupt_file", f"The deflated data set of {label} is truncated.")
    return inflated


def _read_without_preamble(raw: bytes | bytearray) -> Dataset:
    """Some senders omit the 128-byte preamble; accept them only when file meta information follows."""
    if not raw.startswith(b"\x02\x00"):
        raise VolumeError("corrupt_file", "The file is not DICOM: it has no DICOM preamble or file meta information.")
    try:
        return pydicom.dcmread(io.BytesIO(raw), force=True)
    except (InvalidDicomError, *_READ_ERRORS) as err:
        raise VolumeError("corrupt_file", f"The file could not be read as DICOM ({type(err).__name__}).") from err


def _check_ends_on_an_element(ds: Dataset, size: int) -> None:
    """A file cut inside an element header leaves a few bytes pydicom skips silently after the last element."""
    ends: list[int] = []
    for tag in ds.keys():  # noqa: SIM118 - keys() and get_item() keep the elements raw
        elem: Any = ds.get_item(tag)
        if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED_LENGTH and elem.value_tell is not None:
            ends.append(elem.value_tell + elem.length)
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    if not ends or syntax == DEFLATED:  # deflated: positions refer to the inflated stream
        return
    if 0 < size - max(ends) < 8:
        raise VolumeError("corrupt_file", "The file is truncated.")


def validate_instance(ds: Dataset, *, label: str = "the instance", max_bytes: int | None = None) -> None:
    """Header checks that need no decoding: transfer syntax, pixel data present, complete and grayscale.

    The pixel data must be exactly what Rows × Columns × Number of Frames × Bits Allocated declare (native syntaxes),
    and that size must fit ``max_bytes``, so nothing sized from the header can be allocated beyond the limit.
    """
    _check_not_truncated(ds, label)
    if getattr(ds, "file_meta", None) is not None:
        _check_not_truncated(ds.file_meta, label)
    syntax = _transfer_syntax(ds, label)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise VolumeError("unsupported_image", f"{_cap(label)} has floating-point pixel data, not CT values.")
        raise VolumeError("missing_pixel_data", f"{_cap(label)} has no pixel data.")
    samples = _int_attr(ds, "SamplesPerPixel", label, default=1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples != 1 or photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise VolumeError(
            "unsupported_image",
            f"{_cap(label)} is a colour image (Photometric Interpretation {photometric or 'missing'}); "
            "CT slices must be MONOCHROME1 or MONOCHROME2.",
        )
    bits = _int_attr(ds, "BitsAllocated", label)
    if bits not in (8, 16, 32):
        raise VolumeError("unsupported_image", f"{_cap(label)} has {bits} bits allocated; 8, 16 or 32 are supported.")
    rows, columns = _int_attr(ds, "Rows", label), _int_attr(ds, "Columns", label)
    if rows <= 0 or columns <= 0:
        raise VolumeError("invalid_header", f"{_cap(label)} has an empty image ({rows}×{columns}).")
    declared = rows * columns * _frames(ds) * bits // 8
    _check_pixel_data_length(ds, syntax, declared, label)
    if max_bytes is not None and declared > max_bytes:
        raise VolumeError(
            "instance_too_large",
            f"{_cap(label)} declares {_mib(declared)} of pixels ({rows}×{columns}, {_frames(ds)} frame(s), "
            f"{bits} bits); the limit is {_mib(max_bytes)}.",
        )


def _check_not_truncated(ds: Dataset, label: str) -> None:
    """pydicom stops quietly at the end of a short file; an element shorter than its declared length is the sign."""
    # Iterating the Dataset itself would convert every element; keys() and get_item() keep them raw.
    for tag in ds.keys():  # noqa: SIM118
        elem = ds.get_item(tag)
        if _is_short(elem):
            raise VolumeError("corrupt_file", f"{_cap(label)} is truncated.")


def _is_short(elem: Any) -> bool:
    if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED_LENGTH or elem.value is None:
        return False
    return len(elem.value) < elem.length


def _transfer_syntax(ds: Dataset, label: str) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")).strip() if meta is not None else ""
    if not syntax:
        raise VolumeError("corrupt_file", f"{_cap(label)} has no transfer syntax in its file meta information.")
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        name = pydicom.uid.UID(syntax).name
        raise VolumeError("unsupported_transfer_syntax", f'Transfer syntax "{name}" is not supported.')
    return syntax


def _check_pixel_data_length(ds: Dataset, syntax: str, expected: int, label: str) -> None:
    value = ds.get_item("PixelData")
    length = len(value.value) if value is not None and value.value is not None else 0
    if syntax in NATIVE_TRANSFER_SYNTAXES:
        if length < expected:
            raise VolumeError("corrupt_file", f"{_cap(label)} has truncated pixel data ({length} of {expected} bytes).")
        if length > expected + expected % 2:  # native pixel data is padded to an even length, never more
            raise VolumeError(
                "invalid_header",
                f"{_cap(label)} holds {length} bytes of pixel data, but its Rows, Columns, Number of Frames and "
                f"Bits Allocated declare {expected}.",
            )
        return
    data = bytes(value.value) if value is not None else b""
    if not _items_fill(data):
        raise VolumeError("corrupt_file", f"{_cap(label)} has truncated or malformed compressed pixel data.")


def _items_fill(data: bytes) -> bool:
    """Encapsulated pixel data is a basic offset table and fragments, each an item whose length fits exactly."""
    offset, items = 0, 0
    while offset + 8 <= len(data) and data[offset : offset + 4] == _ITEM_TAG_LE:
        offset += 8 + int.from_bytes(data[offset + 4 : offset + 8], "little")
        items += 1
    return items >= 2 and offset == len(data)


# ---------------------------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------------------------


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _int_attr(ds: Dataset, keyword: str, label: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value in (None, ""):
        if default is not None:
            return default
        raise VolumeError("invalid_header", f"{_cap(label)} has no {_attr_name(keyword)}.")
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise VolumeError("invalid_header", f"{_cap(label)} has an invalid {_attr_name(keyword)}.") from err


def _floats(ds: Dataset, keyword: str, count: int, label: str) -> tuple[float, ...]:
    value = ds.get(keyword)
    if value in (None, ""):
        raise VolumeError("invalid_header", f"{_cap(label)} has no {_attr_name(keyword)}.")
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError) as err:
        raise VolumeError("invalid_header", f"{_cap(label)} has a non-numeric {_attr_name(keyword)}.") from err
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise VolumeError(
            "invalid_header", f"{_cap(label)} has {_attr_name(keyword)} with {len(numbers)} values, not {count}."
        )
    return numbers


def _rescale(ds: Dataset, label: str) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as err:
        raise VolumeError("invalid_header", f"{_cap(label)} has a non-numeric rescale slope or intercept.") from err
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope <= 0:
        raise VolumeError("invalid_header", f"{_cap(label)} has an invalid rescale slope ({slope:g}).")
    return slope, intercept


def _optional_float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _attr_name(keyword: str) -> str:
    return pydicom.datadict.dictionary_description(keyword) if pydicom.datadict.tag_for_keyword(keyword) else keyword


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"

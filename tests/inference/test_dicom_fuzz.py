"""Hostile DICOM through volume assembly: every input becomes a volume or a VolumeError with a code, never a crash.

A seeded mutator over real CT headers (tests.dicom_helpers) makes 10,000 inputs: truncations, flipped and inserted
bytes, wrong VRs, huge or zero dimensions, bad transfer syntaxes, compressed and deflated bombs, undefined lengths,
mixed series. The seed is fixed, so a failure names a reproducible case.
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from inference.dicom import VolumeError, assemble_volume, read_dataset
from tests.dicom_helpers import ct_series, phantom_hu, to_bytes

CASES = 10_000
POOL = 600  # hostile files, combined into CASES series
MAX_BYTES = 64 * 1024 * 1024  # the limit the pipeline passes: a bomb must be refused, not inflated
DEFLATED = "1.2.840.10008.1.2.1.99"


def _series() -> list[bytes]:
    return [to_bytes(ds) for ds in ct_series(phantom_hu((4, 16, 16)))]


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def _insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


def _element_length(rng: random.Random, data: bytes) -> bytes:
    """Overwrite a 16- or 32-bit length after a plausible VR with a huge or odd value."""
    out = bytearray(data)
    positions = [i for i in range(132, len(out) - 8) if out[i : i + 2] in (b"US", b"UL", b"DS", b"OW", b"OB", b"SQ")]
    if not positions:
        return data
    at = rng.choice(positions)
    value = rng.choice([0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 1, 3, len(out) * 4])
    if out[at : at + 2] in (b"OW", b"OB", b"SQ"):
        out[at + 4 : at + 8] = struct.pack("<I", value & 0xFFFFFFFF)
    else:
        out[at + 2 : at + 4] = struct.pack("<H", value & 0xFFFF)
    return bytes(out)


def _dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))


def _header_edit(edit: Callable[[Dataset, random.Random], None]) -> Callable[[random.Random, bytes], bytes]:
    """Edit the parsed header and write it back; pydicom refuses to write some edits, and then the raw bytes are
    edited instead (the transfer syntax UID in the file meta), so every case is still a hostile file."""

    def mutate(rng: random.Random, data: bytes) -> bytes:
        ds = _dataset(data)
        edit(ds, rng)
        try:
            return to_bytes(ds)
        except (ValueError, TypeError, OverflowError, struct.error):
            syntax = str(ds.file_meta.TransferSyntaxUID).encode()
            return data.replace(b"1.2.840.10008.1.2.1\x00", syntax.ljust(20, b"\x00")[:20], 1)

    return mutate


def _huge_dimensions(ds: Dataset, rng: random.Random) -> None:
    ds.Rows, ds.Columns = rng.choice([(65535, 65535), (0, 16), (16, 0), (1, 1), (40000, 3)])
    if rng.random() < 0.5:
        ds.NumberOfFrames = rng.choice([0, 1, 100000, -1])


def _bad_transfer_syntax(ds: Dataset, rng: random.Random) -> None:
    ds.file_meta.TransferSyntaxUID = rng.choice(
        ["1.2.3.4", "", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2"]
    )


def _wrong_values(ds: Dataset, rng: random.Random) -> None:
    name = rng.choice(["BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel", "HighBit"])
    setattr(ds, name, rng.choice([0, 1, 3, 7, 12, 33, 64, 65535]))
    if rng.random() < 0.5:
        ds.RescaleSlope = rng.choice(["nan", "inf", "-1e308", "0", "abc"])
    if rng.random() < 0.3:
        ds.PixelSpacing = rng.choice([[0, 0], [-1, 1], ["nan", 1], [1e9, 1e9]])
    if rng.random() < 0.3:
        ds.ImageOrientationPatient = rng.choice([[0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], ["nan"] * 6])


def _pixel_bomb(ds: Dataset, rng: random.Random) -> None:
    """Encapsulated pixel data that claims a huge frame, or an empty one."""
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.5"  # RLE
    ds.Rows, ds.Columns = 8192, 8192
    ds.PixelData = pydicom.encaps.encapsulate([rng.randbytes(rng.randint(0, 64))])
    ds["PixelData"].VR = "OB"


@functools.cache
def _zeros_deflated(megabytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\x00" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(megabytes)) + compressor.flush()


def _deflate_bomb(rng: random.Random, data: bytes) -> bytes:
    """A Deflated Explicit VR Little Endian file whose data set inflates to 64 MB or a gigabyte of zeros."""
    meta = data[: 132 + _meta_length(data)]
    meta = meta.replace(b"1.2.840.10008.1.2.1\x00", DEFLATED.encode() + b"\x00", 1)
    return meta + _zeros_deflated(rng.choice([64, 1024]))


def _meta_length(data: bytes) -> int:
    # (0002,0000) UL group length is the first element after the preamble and magic.
    return 12 + struct.unpack("<I", data[140:144])[0]


def _undefined_lengths(rng: random.Random, data: bytes) -> bytes:
    return data + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" * rng.randint(1, 4)


FILE_MUTATIONS = [
    _flip,
    _truncate,
    _insert,
    _element_length,
    _header_edit(_huge_dimensions),
    _header_edit(_bad_transfer_syntax),
    _header_edit(_wrong_values),
    _header_edit(_pixel_bomb),
    _deflate_bomb,
    _undefined_lengths,
]


def _mixed_series(rng: random.Random, series: list[bytes]) -> list[bytes]:
    """Slices from another series: another size, orientation or study."""
    other = [to_bytes(ds) for ds in ct_series(phantom_hu((3, rng.choice([8, 16, 20]), 16), seed=rng.randrange(99)))]
    return [*series[: rng.randint(1, len(series))], *other[: rng.randint(1, len(other))]]


def _pool(rng: random.Random, series: list[bytes], size: int) -> list[list[bytes]]:
    """Hostile files per slice position, built once: a case swaps one or two slices of the series for them."""
    pool: list[list[bytes]] = [[] for _ in series]
    for _ in range(size):
        index = rng.randrange(len(series))
        pool[index].append(_mutated(rng, series[index]))
    return pool


def _case(rng: random.Random, series: list[bytes], pool: list[list[bytes]], mixed: list[list[bytes]]) -> list[bytes]:
    if rng.random() < 0.1:
        return rng.choice(mixed)
    files = list(series)
    for _ in range(rng.randint(1, 2)):
        index = rng.randrange(len(files))
        if pool[index]:
            files[index] = rng.choice(pool[index])
    return files


def _mutated(rng: random.Random, data: bytes) -> bytes:
    """One mutation; when the mutator itself cannot build its file (pydicom refuses to write it), a byte flip."""
    try:
        return rng.choice(FILE_MUTATIONS)(rng, data)
    except Exception:  # noqa: BLE001 - a failure to build the input, not of the code under test
        return _flip(rng, data)


def _assemble(files: list[bytes]) -> str:
    """'ok' or the VolumeError code; anything else propagates and fails the test."""
    try:
        volume = assemble_volume([read_dataset(f) for f in files], max_bytes=MAX_BYTES, max_instances=2000)
    except VolumeError as err:
        return err.code if err.message else f"{err.code} without a message"
    assert np.isfinite(volume.hu).all()
    return "ok"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about a minute of CPU; more on a machine that is busy with other work
def test_ten_thousand_hostile_series_are_each_assembled_or_refused_with_a_code():
    rng = random.Random(20261202)
    series = _series()
    pool = _pool(rng, series, POOL)
    mixed = [_mixed_series(rng, series) for _ in range(50)]
    outcomes: Counter[str] = Counter()
    for case in range(CASES):
        files = _case(rng, series, pool, mixed)
        try:
            outcomes[_assemble(files)] += 1
        except Exception as err:  # noqa: BLE001 - the test's point: name the case that crashed
            pytest.fail(f"case {case}: {type(err).__name__}: {err}"[:500])

    assert sum(outcomes.values()) == CASES
    assert not [code for code in outcomes if code.endswith("without a message")], outcomes
    assert outcomes["ok"] < CASES  # the mutations do reach the checks
    assert len(outcomes) > 5, outcomes

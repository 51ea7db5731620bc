"""Memory limits of reading and assembling: a deflated data set is inflated only up to the limit, and a header's
size claims are checked against the real pixel data and the limit before any array is allocated."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from inference.dicom import VolumeError, assemble_volume, read_dataset, validate_instance
from tests.dicom_helpers import ct_series, phantom_hu, reread, to_bytes

MIB = 1 << 20


def _deflated(ds: Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def _deflate_bomb(megabytes: int) -> bytes:
    """A real deflated CT slice whose Pixel Data is ``megabytes`` of zeros: a few kilobytes on the wire."""
    ds = ct_series(phantom_hu((1, 8, 8)))[0]
    ds.Rows, ds.Columns = megabytes * 128, 4096  # 16-bit pixels
    ds.PixelData = bytes(megabytes * MIB)
    return _deflated(ds)


def test_a_deflate_bomb_is_refused_before_it_is_inflated():
    bomb = _deflate_bomb(64)
    tracemalloc.start()

    with pytest.raises(VolumeError) as raised:
        read_dataset(bomb, max_bytes=MIB)

    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(bomb) < 256 * 1024
    assert raised.value.code == "instance_too_large"
    assert peak < 8 * MIB


def test_a_deflated_series_within_the_limit_gives_the_same_volume():
    hu = phantom_hu((4, 16, 16))
    plain = assemble_volume([reread(ds) for ds in ct_series(hu)])

    deflated = assemble_volume([read_dataset(_deflated(ds), max_bytes=MIB) for ds in ct_series(hu)])

    np.testing.assert_array_equal(deflated.hu, plain.hu)
    assert deflated.meta["transfer_syntaxes"] == [DeflatedExplicitVRLittleEndian]


def test_a_truncated_deflated_data_set_is_corrupt():
    data = _deflated(ct_series(phantom_hu((1, 16, 16)))[0])

    with pytest.raises(VolumeError) as raised:
        read_dataset(data[: len(data) - 40])

    assert raised.value.code == "corrupt_file"


def test_native_pixel_data_longer_than_the_header_declares_is_refused():
    ds = reread(ct_series(phantom_hu((1, 16, 16)))[0])
    ds.Rows = 8  # the header now claims half the pixels it holds

    with pytest.raises(VolumeError) as raised:
        validate_instance(ds)

    assert raised.value.code == "invalid_header"
    assert "declare 256" in raised.value.message


def test_odd_native_pixel_data_may_carry_its_padding_byte():
    ds = reread(ct_series(phantom_hu((1, 3, 3)))[0])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(9)) + b"\0"

    validate_instance(ds)


def test_compressed_pixels_that_declare_more_than_the_limit_are_refused_before_decoding(monkeypatch):
    series = [reread(ds) for ds in ct_series(phantom_hu((3, 8, 8)))]
    for ds in series:
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.Rows, ds.Columns = 8192, 8192  # 128 MiB of 16-bit pixels claimed by a few bytes
        ds.PixelData = encapsulate([b"\0" * 64])
        ds["PixelData"].VR = "OB"
    monkeypatch.setattr("inference.dicom.get_decoder", lambda syntax: pytest.fail("decoded"))

    with pytest.raises(VolumeError) as raised:
        assemble_volume(series, max_instance_bytes=64 * MIB)

    assert raised.value.code == "instance_too_large"
    assert "8192×8192" in raised.value.message


def test_a_file_over_the_limit_is_refused_unparsed():
    data = to_bytes(ct_series(phantom_hu((1, 64, 64)))[0])

    with pytest.raises(VolumeError) as raised:
        read_dataset(data, max_bytes=4096)

    assert raised.value.code == "instance_too_large"

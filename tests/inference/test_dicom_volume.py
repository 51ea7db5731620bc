"""DICOM series to HU volumes: real files shipped with pydicom, synthetic CT series, and every rejection code."""

from __future__ import annotations

import copy
import io
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid

from inference.dicom import Volume, VolumeError, assemble_volume, check_series_size, read_dataset
from tests.dicom_helpers import (
    AXIAL,
    compress_jpeg_lossless,
    ct_series,
    ct_slice,
    enhanced_ct,
    phantom_hu,
    reread,
    to_bytes,
)


def _testdata(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"{name} does not ship with this pydicom")
    return Path(path)


def _stack_copies(path: Path, count: int = 3, step: float = 4.0) -> list[Dataset]:
    """Copies of one real file moved along its slice normal; the stored (possibly compressed) bytes are unchanged."""
    template = pydicom.dcmread(path)
    iop = np.asarray(template.ImageOrientationPatient, dtype=float)
    start = np.asarray(template.ImagePositionPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    series = []
    for k in range(count):
        ds = copy.deepcopy(template)
        ds.ImagePositionPatient = [float(v) for v in start + k * step * normal]
        ds.SOPInstanceUID = generate_uid()
        series.append(ds)
    return series


def _compressed(series: list[Dataset], syntax: str) -> list[Dataset]:
    out = []
    for ds in series:
        copy_ = reread(ds)
        if syntax in {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}:
            compress_jpeg_lossless(copy_, syntax)
        else:
            copy_.compress(syntax)
        out.append(reread(copy_))
    return out


# --- compressed transfer syntaxes decode to the values of their uncompressed originals -------------------------


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_pydicom_encoded_variants_give_the_same_volume_as_the_original(name: str) -> None:
    original = assemble_volume(_stack_copies(_testdata("MR_small.dcm")), modalities=None)

    variant = assemble_volume(_stack_copies(_testdata(name)), modalities=None)

    np.testing.assert_array_equal(variant.hu, original.hu)
    assert variant.meta["transfer_syntaxes"] == [str(pydicom.dcmread(_testdata(name)).file_meta.TransferSyntaxUID)]


@pytest.mark.parametrize(
    "syntax",
    [RLELossless, JPEG2000Lossless, "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"],
    ids=["rle", "jpeg2000-lossless", "jpeg-lossless", "jpeg-lossless-sv1"],
)
def test_ct_small_compressed_decodes_to_identical_hu(syntax: str) -> None:
    series = _stack_copies(_testdata("CT_small.dcm"))
    expected = assemble_volume(series)

    volume = assemble_volume(_compressed(series, syntax))

    np.testing.assert_array_equal(volume.hu, expected.hu)
    assert volume.meta["transfer_syntaxes"] == [str(syntax)]


@pytest.mark.parametrize(
    "syntax",
    [RLELossless, JPEG2000Lossless, "1.2.840.10008.1.2.4.70"],
    ids=["rle", "jpeg2000-lossless", "jpeg-lossless-sv1"],
)
def test_synthetic_series_with_per_slice_rescale_survives_compression(syntax: str) -> None:
    hu = phantom_hu((4, 32, 40))
    series = ct_series(hu, slopes=[1.0, 0.5, 0.25, 1.0], intercepts=[-1024.0, -1000.0, -2048.0, 0.0])

    volume = assemble_volume(_compressed(series, syntax))

    np.testing.assert_array_equal(volume.hu, hu)


def test_real_head_ct_slice_in_lossy_jpeg2000_decodes_with_its_rescale_and_padding_as_air() -> None:
    ds = pydicom.dcmread(_testdata("693_J2KI.dcm"))

    volume = assemble_volume([ds], min_slices=1)

    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected[ds.pixel_array == int(ds.PixelPaddingValue)] = -1024.0
    np.testing.assert_array_equal(volume.hu[0], expected)
    assert volume.hu.dtype == np.float32
    assert volume.shape == (1, 512, 512)


# --- sorting, rescale and geometry ---------------------------------------------------------------------------------


def test_shuffled_slices_are_sorted_along_the_normal() -> None:
    hu = phantom_hu()
    series = ct_series(hu, spacing=(2.5, 0.7, 0.6), origin=(-10.0, -20.0, 30.0))
    random.Random(3).shuffle(series)

    volume = assemble_volume(series)

    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.6))
    assert volume.origin == pytest.approx((-10.0, -20.0, 30.0))
    assert volume.slice_positions == pytest.approx([30.0 + 2.5 * k for k in range(len(hu))])


def test_reversed_normal_sorts_by_position_along_that_normal() -> None:
    flipped = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # normal points to -z: slices run from head to feet
    hu = phantom_hu()
    series = ct_series(hu, orientation=flipped, origin=(0.0, 0.0, 100.0))

    volume = assemble_volume(list(reversed(series)))

    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.normal == pytest.approx((0.0, 0.0, -1.0))
    assert volume.patient_position(len(hu) - 1, 0, 0) == pytest.approx((0.0, 0.0, 100.0 - 2.0 * (len(hu) - 1)))


def test_oblique_series_stacks_along_its_own_normal() -> None:
    angle = np.radians(20)
    oblique = (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)))
    hu = phantom_hu()
    series = ct_series(hu, orientation=oblique, spacing=(1.25, 0.5, 0.5))
    random.Random(1).shuffle(series)

    volume = assemble_volume(series)

    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm[0] == pytest.approx(1.25, rel=1e-4)  # IOP and IPP are decimal strings
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(0.0, abs=1e-3)


def test_gantry_tilt_is_reported_and_the_slices_shifted_back_onto_an_orthogonal_grid() -> None:
    hu = phantom_hu()
    series = ct_series(hu, spacing=(2.0, 0.5, 0.5))
    for k, ds in enumerate(series):  # each slice shifted 0.5 mm in y per 2 mm step: about 14 degrees of tilt
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]
    expected = np.full_like(hu, -1024.0)
    for k in range(hu.shape[0]):  # slice k starts k rows further down: its rows move k rows down the grid
        expected[k, k:] = hu[k, : hu.shape[1] - k]

    volume = assemble_volume(series)

    np.testing.assert_allclose(volume.hu, expected, atol=1e-3)
    assert volume.spacing_mm[0] == pytest.approx(2.0)
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(14.036, abs=0.01)
    assert volume.meta["deskewed"] is True


def test_untilted_series_is_not_resampled() -> None:
    hu = phantom_hu()

    volume = assemble_volume(ct_series(hu))

    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.meta["deskewed"] is False


@pytest.mark.parametrize(("padding", "intercept"), [(-2000, 0.0), (-32768, -1024.0), (30000, -1024.0)])
def test_pixel_padding_reads_as_air_whatever_its_stored_value(padding: int, intercept: float) -> None:
    hu = phantom_hu((3, 8, 8))
    series = ct_series(hu, intercepts=[intercept] * 3)
    for ds in series:
        raw = ds.pixel_array.copy()
        raw[:2] = padding  # the two top rows lie outside the reconstruction circle
        ds.PixelData = raw.astype(np.int16).tobytes()
        ds.PixelPaddingValue = padding
    expected = hu.copy()
    expected[:, :2] = -1024.0

    volume = assemble_volume([reread(ds) for ds in series])

    np.testing.assert_array_equal(volume.hu, expected)


def test_rescale_slope_and_intercept_apply_per_slice() -> None:
    hu = phantom_hu((3, 8, 8))
    hu[2] = np.round(hu[2] / 4) * 4  # representable with slope 4
    series = ct_series(hu, slopes=[1.0, 0.5, 4.0], intercepts=[-1024.0, -1000.5, -8192.0])

    volume = assemble_volume(series)

    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.meta["rescale_varies"] is True


def test_unsigned_pixels_with_negative_intercept() -> None:
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # up to 63000: beyond the int16 range
    series = [ct_slice(raw + k, position=(0, 0, 2.0 * k), intercept=-1024.0, instance_number=k) for k in range(3)]

    volume = assemble_volume([reread(ds) for ds in series])

    assert volume.hu[2, 7, 7] == pytest.approx(63000 + 2 - 1024)
    assert volume.hu[0, 0, 0] == pytest.approx(-1024.0)


def test_twelve_bit_signed_pixels_are_sign_extended() -> None:
    raw = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    series = []
    for k in range(3):
        ds = ct_slice(raw, position=(0, 0, k), intercept=0.0)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = (raw.astype(np.uint16) & 0x0FFF).astype("<u2").tobytes()  # upper four bits left clear
        series.append(ds)

    volume = assemble_volume(series)

    np.testing.assert_array_equal(volume.hu[1], raw.astype(np.float32))


def test_exact_copies_are_dropped() -> None:
    hu = phantom_hu()
    series = ct_series(hu)
    resent = copy.deepcopy(series[2])  # the same instance twice
    recopied = copy.deepcopy(series[3])  # a copy under a new SOP Instance UID, same pixels
    recopied.SOPInstanceUID = generate_uid()

    volume = assemble_volume([*series, resent, recopied])

    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.meta["duplicates_dropped"] == 2
    assert volume.meta["instance_count"] == len(hu) + 2


def test_enhanced_ct_frames_are_sorted_and_rescaled_per_frame() -> None:
    hu = phantom_hu((4, 8, 6))
    ds = enhanced_ct(hu, frame_order=[2, 0, 3, 1], slopes=[1.0, 0.5, 1.0, 0.25], intercepts=[-1024.0, 0, -1024, -10])

    volume = assemble_volume([reread(ds)])

    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm == pytest.approx((2.0, 0.5, 0.5))
    assert volume.meta["slice_count"] == 4


def test_read_dataset_accepts_bytes_paths_and_files_without_preamble(tmp_path: Path) -> None:
    data = _testdata("CT_small.dcm").read_bytes()
    (tmp_path / "a.dcm").write_bytes(data)

    from_bytes, from_path, bare = read_dataset(data), read_dataset(tmp_path / "a.dcm"), read_dataset(data[132:])

    assert from_bytes.Rows == from_path.Rows == bare.Rows == 128


def test_volume_of_250_slices_of_512_squared_assembles_exactly() -> None:
    # Its speed is measured in bench/bench_ingest.py, not asserted here.
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(250, 512, 512)).astype(np.float32)
    series = ct_series(hu, spacing=(0.625, 0.45, 0.45))
    random.Random(0).shuffle(series)

    volume = assemble_volume(series)

    assert volume.hu.dtype == np.float32
    assert np.array_equal(volume.hu, hu)


# --- rejections ------------------------------------------------------------------------------------------------------


def _series(n: int = 6) -> list[Dataset]:
    return ct_series(phantom_hu((n, 8, 8)))


def _with(series: list[Dataset], index: int, **attrs: object) -> list[Dataset]:
    for keyword, value in attrs.items():
        setattr(series[index], keyword, value)
    return series


def _without_pixels() -> list[Dataset]:
    series = _series()
    del series[3].PixelData
    return series


def _mixed_orientation() -> list[Dataset]:
    return _with(_series(), 2, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])


def _other_matrix() -> list[Dataset]:
    series = _series()
    series[4] = ct_slice(np.zeros((8, 10), np.int16), position=series[4].ImagePositionPatient, instance_number=5)
    return series


def _other_pixel_spacing() -> list[Dataset]:
    return _with(_series(), 1, PixelSpacing=[0.7, 0.7])


def _irregular_spacing() -> list[Dataset]:
    series = _series()
    x, y, z = (float(v) for v in series[3].ImagePositionPatient)
    return _with(series, 3, ImagePositionPatient=[x, y, z - 1.5])


def _different_images_at_one_position() -> list[Dataset]:
    series = _series()
    series[3].ImagePositionPatient = series[2].ImagePositionPatient
    return series


def _gap() -> list[Dataset]:
    series = _series(8)
    del series[4:6]
    return series


def _corrupt_rle() -> list[Dataset]:
    series = _compressed(_series(3), RLELossless)
    series[1].PixelData = encapsulate([b"\x05" + b"\x00" * 60])  # an RLE header that promises five segments
    return series


def _jpeg_baseline() -> list[Dataset]:
    series = _series(3)
    for ds in series:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    return series


def _not_ct() -> list[Dataset]:
    series = _series()
    for ds in series:
        ds.Modality = "MR"
    return series


def _colour() -> list[Dataset]:
    return [pydicom.dcmread(_testdata("SC_rgb_rle.dcm"))]


def _no_position() -> list[Dataset]:
    series = _series()
    del series[2].ImagePositionPatient
    return series


def _legacy_multiframe() -> list[Dataset]:
    series = _series(1)
    series[0].NumberOfFrames = 2
    series[0].PixelData = series[0].PixelData * 2
    return series


REJECTIONS: list[tuple[str, Callable[[], list[Dataset]], str, dict]] = [
    ("missing pixel data", _without_pixels, "missing_pixel_data", {}),
    ("mixed orientation", _mixed_orientation, "mixed_orientation", {}),
    ("other matrix", _other_matrix, "inconsistent_geometry", {}),
    ("other pixel spacing", _other_pixel_spacing, "inconsistent_geometry", {}),
    ("irregular spacing", _irregular_spacing, "inconsistent_geometry", {}),
    ("duplicate position", _different_images_at_one_position, "duplicate_slices", {}),
    ("gap", _gap, "missing_slices", {}),
    ("too few", lambda: _series(2), "too_few_slices", {}),
    ("too many instances", _series, "series_too_large", {"max_instances": 5}),
    ("too many bytes", _series, "series_too_large", {"max_bytes": 6 * 8 * 8 * 4 - 1}),
    ("corrupt compressed pixels", _corrupt_rle, "corrupt_file", {}),
    ("jpeg baseline", _jpeg_baseline, "unsupported_transfer_syntax", {}),
    ("not ct", _not_ct, "not_ct", {}),
    ("colour", _colour, "unsupported_image", {"modalities": None, "min_slices": 1}),
    ("no position", _no_position, "invalid_header", {}),
    ("legacy multi-frame", _legacy_multiframe, "unsupported_image", {"min_slices": 1}),
]


@pytest.mark.parametrize(("build", "code", "options"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_bad_series_is_rejected_with_its_code_and_no_patient_data(build: Callable, code: str, options: dict) -> None:
    series = build()

    with pytest.raises(VolumeError) as caught:
        assemble_volume(series, **options)

    assert caught.value.code == code
    assert "Phantom" not in caught.value.message
    assert all(str(ds.get("SOPInstanceUID", "-")) not in caught.value.message for ds in series)


def test_unsupported_transfer_syntax_message_names_it() -> None:
    with pytest.raises(VolumeError, match=r'Transfer syntax "JPEG Baseline \(Process 1\)" is not supported'):
        assemble_volume(_jpeg_baseline())


def test_too_large_series_is_rejected_before_any_pixel_is_decoded() -> None:
    series = _corrupt_rle()  # decoding would fail with corrupt_file

    with pytest.raises(VolumeError) as caught:
        assemble_volume(series, max_bytes=512)

    assert caught.value.code == "series_too_large"


def test_missing_slices_are_found_before_any_pixel_is_decoded() -> None:
    series = _compressed(_series(6), RLELossless)
    series[1].PixelData = encapsulate([b"\x05" + b"\x00" * 60])
    del series[3]

    with pytest.raises(VolumeError) as caught:
        assemble_volume(series)

    assert caught.value.code == "missing_slices"
    assert "about 1 missing" in caught.value.message


def test_series_size_can_be_checked_from_counts_before_download() -> None:
    with pytest.raises(VolumeError, match=r"1000\.0 MiB .* the limit is 512\.0 MiB"):
        check_series_size(instances=1000, rows=512, columns=512, max_bytes=512 * 2**20)


@pytest.mark.parametrize(
    "data",
    [
        b"not a dicom file at all" * 10,
        _testdata("CT_small.dcm").read_bytes()[:900],  # cut inside the header
        _testdata("CT_small.dcm").read_bytes()[:-5000],  # cut inside the pixel data
        _testdata("MR_truncated.dcm").read_bytes(),
        b"",
    ],
    ids=["garbage", "cut-header", "cut-pixels", "pydicom-truncated", "empty"],
)
def test_unreadable_or_truncated_file_is_corrupt(data: bytes) -> None:
    with pytest.raises(VolumeError) as caught:
        read_dataset(data)

    assert caught.value.code == "corrupt_file"


def test_file_without_pixel_data_is_reported_as_such() -> None:
    with pytest.raises(VolumeError) as caught:
        read_dataset(_testdata("rtplan.dcm"))

    assert caught.value.code == "missing_pixel_data"


def test_volume_is_plain_data() -> None:
    volume = assemble_volume(_series())

    assert isinstance(volume, Volume)
    assert volume.orientation == pytest.approx(AXIAL)
    assert volume.meta["slice_count"] == 6
    assert volume.meta["rows"] == volume.meta["columns"] == 8


def test_file_round_trip_of_synthetic_slice_reads_back() -> None:
    ds = ct_slice(np.zeros((4, 4), np.int16), position=(0, 0, 0))

    again = pydicom.dcmread(io.BytesIO(to_bytes(ds)))

    assert again.Rows == 4

"""Phantom generators: determinism, labels that agree with masks, the anatomical rule of each subtype, DICOM output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from inference.dicom_write import JPEG2000Lossless, RLELossless, write_series, write_study
from inference.phantoms import Phantom, generate_cta, generate_ncct
from inference.phantoms.anatomy import CSF, VENT, head_model, resolution_for, sample
from inference.phantoms.cta import CTA_HARD_NEGATIVES
from inference.phantoms.geometry import Grid
from inference.phantoms.mimics import HARD_NEGATIVES

SMALL_NCCT = (24, 96, 96)
SMALL_CTA = (40, 96, 96)
SIDE_SIGN = {"right": 1.0, "left": -1.0}


def canonical_of_mask(phantom: Phantom) -> np.ndarray:
    """Canonical (z, y, x) millimetres of the lesion voxels; canonical x > 0 is the patient's right."""
    grid = Grid.from_meta(phantom.shape, phantom.spacing_mm, phantom.meta["to_canonical"])
    idx = np.argwhere(phantom.mask).astype(float)
    return idx @ grid.matrix.T + grid.offset


def head_channel_at_mask(phantom: Phantom, channel: int) -> np.ndarray:
    grid = Grid.from_meta(phantom.shape, phantom.spacing_mm, phantom.meta["to_canonical"])
    head = head_model(phantom.meta["anatomy"], resolution_for(phantom.spacing_mm))
    return sample(head, grid, grid.full(), (channel,))[0][phantom.mask]


def read_hu(paths: list[Path]) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2]))
    volume = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    return volume, datasets


def test_same_seed_gives_identical_phantoms() -> None:
    a, b = generate_ncct(7, shape=SMALL_NCCT), generate_ncct(7, shape=SMALL_NCCT)
    c, d = generate_cta(7, shape=SMALL_CTA), generate_cta(7, shape=SMALL_CTA)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(c.volume_hu, d.volume_hu)
    assert (a.subtype, a.side) == (b.subtype, b.side)


def test_different_seeds_give_different_volumes() -> None:
    assert not np.array_equal(
        generate_ncct(1, shape=SMALL_NCCT).volume_hu, generate_ncct(2, shape=SMALL_NCCT).volume_hu
    )


def test_volumes_have_the_requested_shape_and_types() -> None:
    phantom = generate_ncct(3, shape=(20, 80, 72))
    assert phantom.volume_hu.shape == (20, 80, 72)
    assert phantom.volume_hu.dtype == np.float32
    assert phantom.mask.shape == (20, 80, 72)
    assert phantom.mask.dtype == bool
    assert phantom.finding == "ich"
    assert len(phantom.spacing_mm) == 3


@pytest.mark.parametrize("seed", range(12))
def test_ncct_mask_is_non_empty_exactly_for_positives(seed: int) -> None:
    phantom = generate_ncct(seed, shape=SMALL_NCCT)
    assert phantom.positive == bool(phantom.mask.any())
    assert (phantom.subtype is not None) == phantom.positive


@pytest.mark.parametrize("seed", range(8))
def test_cta_mask_is_non_empty_exactly_for_positives(seed: int) -> None:
    phantom = generate_cta(seed, shape=SMALL_CTA)
    assert phantom.positive == bool(phantom.mask.any())
    assert (phantom.side is not None) == phantom.positive


def test_unspecified_labels_are_about_half_positive() -> None:
    from inference.phantoms import cta, ncct

    draws = [
        module._decide(np.random.default_rng(s), None, None, None)[0] for s in range(400) for module in (ncct, cta)
    ]
    assert 0.44 <= float(np.mean(draws)) <= 0.56


@pytest.mark.parametrize("subtype", ["edh", "sdh", "iph", "sah", "ivh"])
def test_bleed_voxels_are_at_acute_blood_density_before_noise(subtype: str) -> None:
    phantom = generate_ncct(11, subtype=subtype, shape=SMALL_NCCT, clean=True)
    assert 50.0 <= float(np.median(phantom.volume_hu[phantom.mask])) <= 90.0


@pytest.mark.parametrize("subtype", ["edh", "sdh", "iph", "sah", "ivh"])
def test_noisy_bleed_mean_stays_in_blood_range(subtype: str) -> None:
    phantom = generate_ncct(21, subtype=subtype, shape=SMALL_NCCT, size=0.8)
    assert 45.0 <= float(phantom.volume_hu[phantom.mask].mean()) <= 90.0


@pytest.mark.parametrize(("subtype", "seed"), [("edh", 1), ("edh", 2), ("sdh", 1), ("sdh", 2)])
def test_extra_axial_bleeds_touch_the_inner_table(subtype: str, seed: int) -> None:
    phantom = generate_ncct(seed, subtype=subtype, shape=SMALL_NCCT, clean=True)
    bone = phantom.volume_hu > 300.0
    assert (ndi.binary_dilation(phantom.mask, iterations=2) & bone).any()


@pytest.mark.parametrize("seed", range(4))
def test_subdural_stays_on_its_side_of_the_falx(seed: int) -> None:
    phantom = generate_ncct(seed, subtype="sdh", shape=SMALL_NCCT, clean=True)
    x = canonical_of_mask(phantom)[:, 2]
    assert np.all(x * SIDE_SIGN[phantom.side] > 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_intraventricular_blood_lies_in_the_ventricles(seed: int) -> None:
    phantom = generate_ncct(seed, subtype="ivh", shape=SMALL_NCCT, clean=True)
    assert float(np.mean(head_channel_at_mask(phantom, VENT) > 0.3)) > 0.95


@pytest.mark.parametrize("seed", range(3))
def test_subarachnoid_blood_replaces_csf(seed: int) -> None:
    phantom = generate_ncct(seed, subtype="sah", shape=SMALL_NCCT, clean=True)
    csf = head_channel_at_mask(phantom, CSF)
    assert float(np.median(csf)) > 0.3


def test_intraparenchymal_bleed_is_surrounded_by_low_density_oedema() -> None:
    phantom = generate_ncct(5, subtype="iph", shape=SMALL_NCCT, size=0.9, clean=True)
    ring = ndi.binary_dilation(phantom.mask, iterations=2) & ~phantom.mask
    brain = (phantom.volume_hu > 15) & (phantom.volume_hu < 50) & ~ndi.binary_dilation(phantom.mask, iterations=5)
    assert float(np.median(phantom.volume_hu[ring])) < float(np.median(phantom.volume_hu[brain])) + 10.0


@pytest.mark.parametrize("hard_negative", HARD_NEGATIVES)
def test_ncct_hard_negatives_are_negative(hard_negative: str) -> None:
    phantom = generate_ncct(4, hard_negative=hard_negative, shape=SMALL_NCCT)
    assert not phantom.positive
    assert phantom.hard_negative == hard_negative
    assert not phantom.mask.any()


def test_calcification_mimics_are_denser_than_blood() -> None:
    clean = generate_ncct(4, hard_negative="pineal_calcification", shape=SMALL_NCCT, clean=True)
    plain = generate_ncct(4, positive=False, shape=SMALL_NCCT, clean=True)
    assert float((clean.volume_hu > 100).sum()) > 0
    assert clean.volume_hu.shape == plain.volume_hu.shape


@pytest.mark.parametrize("hard_negative", CTA_HARD_NEGATIVES)
def test_cta_hard_negatives_are_negative(hard_negative: str) -> None:
    phantom = generate_cta(4, hard_negative=hard_negative, shape=SMALL_CTA)
    assert not phantom.positive
    assert phantom.hard_negative == hard_negative
    assert not phantom.mask.any()


@pytest.mark.parametrize(("subtype", "seed"), [("ica_t", 1), ("ica_t", 2), ("m1", 1), ("m1", 2)])
def test_occlusion_is_thrombus_on_the_labelled_side(subtype: str, seed: int) -> None:
    phantom = generate_cta(seed, subtype=subtype, shape=SMALL_CTA, clean=True)
    x = canonical_of_mask(phantom)[:, 2]
    assert 35.0 <= float(np.median(phantom.volume_hu[phantom.mask])) <= 70.0
    assert np.all(x * SIDE_SIGN[phantom.side] > 0.0)


def test_cta_arteries_are_opacified() -> None:
    phantom = generate_cta(3, positive=False, shape=(48, 160, 160), clean=True)
    inside = ndi.binary_erosion(phantom.volume_hu > -100, iterations=12)
    assert (phantom.volume_hu[inside] > 200).sum() > 50


@pytest.mark.parametrize("anatomy", ["template", "parametric"])
def test_both_anatomies_give_a_head_with_brain_skull_and_air(anatomy: str) -> None:
    phantom = generate_ncct(9, positive=False, shape=SMALL_NCCT, anatomy=anatomy, clean=True)
    middle = phantom.volume_hu[SMALL_NCCT[0] // 2]
    assert middle[0, 0] < -900
    assert (middle > 600).sum() > 50
    assert ((middle > 15) & (middle < 45)).sum() > 1000
    assert phantom.meta["anatomy"] == anatomy


def test_family_changes_the_scanner_population() -> None:
    a = {generate_ncct(s, shape=(4, 32, 32), family="A").meta["scanner"]["model"] for s in range(6)}
    b = {generate_ncct(s, shape=(4, 32, 32), family="B").meta["scanner"]["model"] for s in range(6)}
    assert a.isdisjoint(b - {"LightSpeed VCT"})


def test_unknown_subtype_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match='"xdh"'):
        generate_ncct(0, subtype="xdh")


@pytest.mark.parametrize("syntax", [None, RLELossless, JPEG2000Lossless])
def test_dicom_series_reads_back_to_the_same_hu(tmp_path: Path, syntax: str | None) -> None:
    phantom = generate_ncct(12, shape=(6, 64, 64))
    extra = {} if syntax is None else {"transfer_syntax": syntax}
    volume, _ = read_hu(write_series(phantom, tmp_path, seed=12, **extra))
    assert np.abs(volume - np.clip(phantom.volume_hu, -1024, 3071)).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_dicom_rescale_variants_round_trip(tmp_path: Path, seed: int) -> None:
    phantom = generate_cta(seed, shape=(4, 48, 48))
    volume, datasets = read_hu(write_series(phantom, tmp_path, seed=seed))
    assert np.abs(volume - phantom.volume_hu).max() <= 0.5 + 1e-3
    assert float(datasets[0].RescaleIntercept) == phantom.meta["scanner"]["rescale_intercept"]


def test_dicom_tags_describe_a_ct_head_study(tmp_path: Path) -> None:
    phantom = generate_cta(2, shape=(4, 48, 48))
    info = write_study(phantom, tmp_path, seed=2)
    ds = pydicom.dcmread(info.series[0][0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert (ds.Modality, ds.BodyPartExamined, ds.StudyDescription) == ("CT", "HEAD", "CTA HEAD NECK")
    assert ds.ContrastBolusAgent
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.StudyInstanceUID == info.study_uid
    assert ds.AccessionNumber == info.accession_number
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(phantom.spacing_mm[1:], abs=1e-4)


def test_dicom_uids_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    phantom = generate_ncct(8, shape=(3, 32, 32))
    first = [pydicom.dcmread(p).SOPInstanceUID for p in write_series(phantom, tmp_path / "a", seed=8)]
    second = [pydicom.dcmread(p).SOPInstanceUID for p in write_series(phantom, tmp_path / "b", seed=8)]
    assert first == second
    assert len(set(first)) == 3


def test_unsupported_transfer_syntax_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not supported"):
        write_series(generate_ncct(1, shape=(2, 32, 32)), tmp_path, seed=1, transfer_syntax="1.2.840.10008.1.2.4.50")


def test_thick_reformat_adds_a_second_series(tmp_path: Path) -> None:
    phantom = generate_ncct(6, shape=(16, 48, 48), slice_thickness_mm=1.25)
    info = write_study(phantom, tmp_path, seed=6, thick_reformat=True)
    second = pydicom.dcmread(info.series[1][0])
    assert len(info.series) == 2
    assert len(info.series[1]) == 4
    assert float(second.SliceThickness) == 5.0


def test_command_line_writes_studies_and_a_manifest(tmp_path: Path) -> None:
    from inference.phantoms.__main__ import main

    assert (
        main(
            ["--kind", "ncct", "--count", "2", "--seed", "3", "--out", str(tmp_path), "--matrix", "48", "--slices", "4"]
        )
        == 0
    )
    assert len(list(tmp_path.glob("ncct-*/series1/*.dcm"))) == 8
    assert (tmp_path / "manifest-ncct.json").is_file()

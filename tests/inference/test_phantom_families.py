"""Family R (domain randomisation, for training) and family C (written apart, for evaluation only)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.phantoms import generate_cta, generate_ncct, randomise
from inference.phantoms.family_c import generate as generate_c
from inference.train import parse_args


def test_randomised_ncct_is_deterministic_for_a_seed() -> None:
    a = generate_ncct(5, subtype="sdh", family="R", anatomy="parametric", shape=(12, 48, 48))
    b = generate_ncct(5, subtype="sdh", family="R", anatomy="parametric", shape=(12, 48, 48))

    np.testing.assert_array_equal(a.volume_hu, b.volume_hu)
    assert a.meta["acquisition"]["rescale"] == b.meta["acquisition"]["rescale"]


def test_randomised_phantoms_keep_their_label_and_lesion() -> None:
    ncct = generate_ncct(3, subtype="iph", size=0.8, family="R", anatomy="parametric", shape=(12, 48, 48))
    cta = generate_cta(3, subtype="m1", family="R", anatomy="parametric", shape=(24, 48, 48))

    assert ncct.positive
    assert ncct.mask.any()
    assert cta.positive
    assert cta.mask.any()
    assert cta.side in ("left", "right")


def test_tissue_remap_is_monotone_and_keeps_air() -> None:
    hu = np.linspace(-1024.0, 3071.0, 4096, dtype=np.float32)

    randomise.remap_tissues(hu, np.random.default_rng(0), "ncct")

    assert np.all(np.diff(hu) >= 0)
    assert hu[0] == pytest.approx(-1024.0)


def test_draw_shape_spans_thin_to_thick_slices() -> None:
    spacings = [150.0 / randomise.draw_shape(seed, "ncct")[0] for seed in range(40)]

    assert min(spacings) < 2.0
    assert max(spacings) > 3.0


def test_family_c_is_deterministic_and_labelled() -> None:
    a = generate_c("ncct", 11, subtype="edh", coarse=True)
    b = generate_c("ncct", 11, subtype="edh", coarse=True)

    np.testing.assert_array_equal(a.volume_hu, b.volume_hu)
    assert a.positive
    assert a.mask.any()
    assert a.meta["family"] == "C"


@pytest.mark.parametrize("subtype", ["edh", "sdh", "iph", "sah", "ivh"])
def test_family_c_bleeds_are_dense(subtype: str) -> None:
    p = generate_c("ncct", 2, subtype=subtype, coarse=True)

    assert float(np.median(p.volume_hu[p.mask])) > 40.0


def test_family_c_negative_has_no_lesion() -> None:
    p = generate_c("ncct", 4, positive=False, coarse=True)

    assert not p.positive
    assert not p.mask.any()
    assert p.subtype is None


def test_family_c_occlusion_is_thrombus_on_one_side() -> None:
    p = generate_c("cta", 6, subtype="m1", coarse=True)

    assert p.side in ("left", "right")
    assert p.mask.any()
    assert float(np.median(p.volume_hu[p.mask])) < 150.0


def test_family_c_is_refused_for_training() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--finding", "ich", "--family", "C", "--out", "/tmp/unused"])

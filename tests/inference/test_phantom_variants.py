"""Family V (family R with the anatomy varied): skull base, face, sinuses, tentorium, deep grey nuclei and a warp."""

from __future__ import annotations

import numpy as np
import pytest

from inference.phantoms import generate_ncct, variants
from inference.phantoms.anatomy import HU, head_model, sample
from inference.phantoms.geometry import Grid
from inference.phantoms.scene import Canvas


def _canvas() -> Canvas:
    shape, spacing = (40, 64, 64), (5.0, 3.5, 3.5)
    head = head_model("parametric", 2.0)
    grid = Grid.posed(
        shape,
        spacing,
        head_center=np.array([-20.0, -17.0, 0.0]),
        rotation=np.eye(3),
        scale=np.ones(3),
        shift_mm=np.zeros(3),
    )
    volume = sample(head, grid, grid.full(), (HU,))[0]
    return Canvas(head, grid, volume, np.zeros(shape, dtype=bool))


def test_every_variation_paints_something_and_marks_no_lesion() -> None:
    canvas = _canvas()
    before = canvas.volume.copy()
    rng = np.random.default_rng(4)

    for painter in (
        variants._face_and_neck,
        variants._skull_base,
        variants._venous_sinuses,
        variants._tentorium,
        variants._deep_grey,
    ):
        painted = canvas.volume.copy()
        painter(canvas, rng)
        assert np.abs(canvas.volume - painted).max() > 2.0, painter.__name__

    assert not canvas.mask.any()
    assert np.abs(canvas.volume - before).max() > 100.0


def test_skull_base_and_face_fill_the_air_below_the_brain() -> None:
    canvas = _canvas()
    air_before = int((canvas.volume < -900).sum())

    variants._face_and_neck(canvas, np.random.default_rng(1))
    variants._skull_base(canvas, np.random.default_rng(1))

    assert int((canvas.volume < -900).sum()) < air_before
    assert int((canvas.volume > 500).sum()) > 0


def test_venous_sinuses_lie_in_the_range_of_circulating_blood() -> None:
    canvas = _canvas()
    before = canvas.volume.copy()

    variants._venous_sinuses(canvas, np.random.default_rng(2))

    brighter = canvas.volume - before > 10.0
    assert brighter.any()
    high = variants.ANATOMY_RANGES["venous_sinus_hu"][1]
    # blood in a sinus brightens brain and CSF to at most its own density (bone beside it only loses some)
    assert canvas.volume[brighter].max() <= high + 1.0


def test_warp_moves_the_mask_with_the_volume() -> None:
    volume = np.zeros((30, 60, 60), dtype=np.float32)
    volume[10:20, 20:40, 20:40] = 80.0
    mask = volume > 40.0

    for seed in range(20):
        bent, bent_mask, amplitude = variants.warp(volume, mask, np.random.default_rng(seed), (2.0, 1.0, 1.0))
        if amplitude:
            break
    assert amplitude > 0.5
    assert bent.shape == volume.shape
    assert not np.array_equal(bent_mask, mask)
    assert bent_mask.sum() == pytest.approx(mask.sum(), rel=0.35)
    # the bent mask is exactly where the bent volume is dense: lesion and label stay together
    assert (bent[bent_mask] > 40.0).mean() > 0.95


def test_family_v_records_its_variations_and_stays_deterministic() -> None:
    a = generate_ncct(8, positive=False, family="V", shape=(16, 48, 48))
    b = generate_ncct(8, positive=False, family="V", shape=(16, 48, 48))

    np.testing.assert_array_equal(a.volume_hu, b.volume_hu)
    assert isinstance(a.meta["anatomy_variants"], list)
    assert "warp_mm" in a.meta["acquisition"]
    assert not a.mask.any()


def test_family_a_is_untouched_by_the_variations() -> None:
    p = generate_ncct(8, positive=False, family="A", shape=(16, 48, 48))

    assert p.meta["anatomy_variants"] == []
    assert "warp_mm" not in p.meta["acquisition"]


def test_family_r_is_as_it_was_without_the_variations() -> None:
    p = generate_ncct(8, positive=False, family="R", shape=(16, 48, 48))

    assert p.meta["anatomy_variants"] == []
    assert "warp_mm" not in p.meta["acquisition"]

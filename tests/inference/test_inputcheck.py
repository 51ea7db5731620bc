"""The input check: a study's HU, noise and geometry against the model card's validated ranges."""

from __future__ import annotations

import numpy as np
import pytest

from inference.inputcheck import input_check, ranges_for


def head(*, offset: float = 0.0, noise: float = 4.0, slices: int = 40, seed: int = 0) -> np.ndarray:
    """A cylinder of skull around brain in air, as a small head CT in HU."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    radius = np.hypot(yy - 64, xx - 64)
    plane = np.where(radius < 46, 32.0, np.where(radius < 52, 900.0, -1000.0))
    volume = np.repeat(plane[None], slices, axis=0) + offset
    volume += rng.normal(0.0, noise, volume.shape) * (radius < 52)
    return volume.astype(np.int16)


def test_a_typical_head_ct_is_inside_the_validated_ranges():
    check = input_check(head(), (5.0, 0.45, 0.45), finding="ich", card=None)

    assert check.in_range, check.reasons
    assert check.stats["brain_hu"] == pytest.approx(32, abs=2)
    assert check.stats["brain_noise_hu"] == pytest.approx(4, abs=1)


@pytest.mark.parametrize(
    ("kwargs", "spacing", "what"),
    [
        ({"offset": 40.0}, (5.0, 0.45, 0.45), "brain HU"),
        ({"noise": 40.0}, (5.0, 0.45, 0.45), "brain noise"),
        ({}, (5.0, 1.2, 1.2), "pixel size"),
        ({"slices": 8}, (5.0, 0.45, 0.45), "head coverage"),
        ({}, (8.0, 0.45, 0.45), "slice spacing"),
    ],
)
def test_a_study_unlike_the_validated_ones_is_outside_with_a_reason(kwargs, spacing, what):
    check = input_check(head(**kwargs), spacing, finding="ich", card=None)

    assert not check.in_range
    assert any(reason.startswith(what) for reason in check.reasons), check.reasons


def test_the_model_card_ranges_replace_the_defaults():
    card = {"validated_ranges": {"brain_hu": [60, 90]}}

    check = input_check(head(), (5.0, 0.45, 0.45), finding="ich", card=card)

    assert ranges_for("ich", card)["brain_hu"] == (60.0, 90.0)
    assert check.reasons == [f"brain HU {check.stats['brain_hu']:.4g} is below the validated 60"]

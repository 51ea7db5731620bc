"""Robustness shifts change the acquisition, never the label."""

from __future__ import annotations

import numpy as np
import pytest

from inference.robustness import SHIFTS, shifted_phantom

CHEAP = [name for name in SHIFTS if not name.startswith(("pixel", "slices_0"))]


@pytest.mark.parametrize("name", CHEAP)
def test_shifted_ich_positive_keeps_its_label_and_a_finite_volume(name: str) -> None:
    p = shifted_phantom("ich", SHIFTS[name], 1, 0)

    assert p.positive
    assert np.isfinite(p.volume_hu).all()


def test_tilt_moves_the_lesion_with_the_head() -> None:
    straight = shifted_phantom("ich", SHIFTS["none"], 1, 2)
    tilted = shifted_phantom("ich", SHIFTS["tilt_plus15"], 1, 2)

    assert tilted.mask.any()
    assert not np.array_equal(np.argwhere(straight.mask).mean(axis=0), np.argwhere(tilted.mask).mean(axis=0))


def test_noise_shift_raises_the_noise() -> None:
    base = shifted_phantom("ich", SHIFTS["none"], 1, 1)
    noisy = shifted_phantom("ich", SHIFTS["noise_x3"], 1, 1)

    air = base.volume_hu < -900
    assert float(np.std(noisy.volume_hu[air] - base.volume_hu[air])) > 0.5


def test_robustness_refuses_the_seed_the_weights_were_trained_with() -> None:
    from inference.loader import read_card, shipped_weights
    from inference.robustness import main

    trained_seed = read_card(shipped_weights("lvo"))["training"]["seed"]

    with pytest.raises(SystemExit) as exited:
        main(["--finding", "lvo", "--seed", str(trained_seed), "--count", "2", "--shift", "none"])

    assert exited.value.code == 2

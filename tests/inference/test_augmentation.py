"""Training-time intensity randomisation keeps the order of tissues and blood above grey matter, and moves the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.batches import _remap_tissue
from inference.trainset import family_of

# Nominal HU of the training generators: CSF, white matter, grey matter, the faintest and densest acute blood.
CSF, WHITE, GREY, BLOOD_LOW, BLOOD_HIGH = 8.0, 26.0, 40.0, 55.0, 88.0


def _remapped(seed: int, finding: str = "ich") -> dict[float, float]:
    values = torch.tensor([-1000.0, CSF, WHITE, GREY, BLOOD_LOW, BLOOD_HIGH, 120.0, 300.0, 1500.0])
    out = _remap_tissue(values, np.random.default_rng(seed), finding)
    return dict(zip(values.tolist(), out.tolist(), strict=True))


@pytest.mark.parametrize("seed", range(200))
def test_remap_keeps_tissue_order_and_blood_above_grey_matter(seed: int) -> None:
    m = _remapped(seed)

    assert list(m.values()) == sorted(m.values())
    assert m[BLOOD_LOW] - m[GREY] >= 6.0
    assert abs(m[-1000.0] + 1000.0) < 1e-3


def test_remap_moves_grey_white_contrast_beyond_what_one_scanner_gives() -> None:
    contrasts = [(_remapped(seed)[GREY] - _remapped(seed)[WHITE]) for seed in range(300)]

    assert min(contrasts) < 5.0
    assert max(contrasts) > 20.0


def test_remap_scales_cta_arteries_more_than_ncct() -> None:
    lvo = [_remapped(seed, "lvo")[300.0] for seed in range(300)]
    ich = [_remapped(seed, "ich")[300.0] for seed in range(300)]

    assert np.ptp(lvo) > 1.5 * np.ptp(ich)


def test_a_mixture_gives_each_family_positive_and_negative_pairs_in_turn() -> None:
    families = [family_of("A+R", i) for i in range(8)]

    assert families == ["A", "A", "R", "R", "A", "A", "R", "R"]
    assert family_of("A", 5) == "A"

"""Preprocessing does not depend on one scanner's conventions: padding values, tables, head-and-neck coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.preprocess import ICH_GRID, head_centre, prepare_ich, resample_to_grid


def _head(shape: tuple[int, int, int] = (40, 64, 64), centre: tuple[float, float, float] = (20, 32, 32)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(((z - centre[0]) / 12) ** 2 + ((y - centre[1]) / 20) ** 2 + ((x - centre[2]) / 16) ** 2)
    return np.where(r < 1.0, 30.0, -1000.0).astype(np.float32)


def test_a_table_under_the_head_does_not_move_the_centre() -> None:
    volume = _head()
    volume[:, 60:63, :] = 50.0  # a table along the whole scan, apart from the head

    centre = head_centre(torch.from_numpy(volume))

    assert centre[1] == pytest.approx(32.0, abs=1.5)


def test_shoulders_far_below_the_top_of_the_scan_do_not_move_the_centre() -> None:
    volume = np.full((120, 64, 64), -1000.0, dtype=np.float32)
    volume[80:] = _head((40, 64, 64))
    volume[:30, 4:60, 2:62] = 40.0  # a wide trunk 200+ mm below the vertex (5 mm slices)
    volume[30:80, 28:36, 28:36] = 40.0  # the neck joins them into one body

    centre = head_centre(torch.from_numpy(volume), (5.0, 1.0, 1.0))

    assert centre[0] > 75.0


@pytest.mark.parametrize("padding", [-2000.0, -3024.0, -32768.0])
def test_padding_outside_the_circle_is_clamped_to_air(padding: float) -> None:
    volume = _head()
    volume[:, :, :4] = padding

    resampled, _ = resample_to_grid(torch.from_numpy(volume), (5.0, 0.9, 0.9), ICH_GRID)

    assert float(resampled.min()) >= -1024.0


def test_the_same_head_stored_with_another_intercept_convention_gives_the_same_input() -> None:
    hu = _head()
    stored_unsigned = np.clip(hu, -1024.0, None)  # unsigned with intercept -1024 cannot go below -1024
    padded = hu.copy()
    padded[:, :, :3] = -3024.0  # signed storage with a padding ring

    a = prepare_ich(stored_unsigned, (5.0, 0.9, 0.9)).tensor
    b = prepare_ich(padded, (5.0, 0.9, 0.9)).tensor

    torch.testing.assert_close(a, b)

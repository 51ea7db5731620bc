"""The record every phantom generator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np


@dataclass
class Phantom:
    """A synthetic CT volume with its ground truth.

    Array axes are (z, y, x) in the DICOM patient frame: z runs inferior to superior, y anterior to posterior and x
    from the patient's right to the patient's left (ImageOrientationPatient 1\\0\\0\\0\\1\\0), so column 0 shows the
    patient's right side as a radiologist expects.
    """

    volume_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    finding: str
    positive: bool
    subtype: str | None = None
    side: str | None = None
    mask: np.ndarray | None = None
    hard_negative: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return cast(tuple[int, int, int], tuple(self.volume_hu.shape))

    @property
    def label(self) -> int:
        return int(self.positive)

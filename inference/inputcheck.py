"""Does a study look like what the model was validated on? Input statistics against the model card's ranges.

A study outside the ranges is still read, but its finding is marked "outside the validated range" and does not
change the study's priority: a model's score means little on input unlike anything it was validated on (another
scanner's calibration, noise or geometry). The ranges come from the model card (``validated_ranges``); a card
without them gets the defaults below, which hold for the head CT and CTA the shipped models were evaluated on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# (low, high) per statistic; None leaves that side open.
Range = tuple[float | None, float | None]

# Typical 120 kVp head CT: air -1000 HU, brain parenchyma 20-45 HU, 5 mm NCCT brain noise about 4 HU, thin CTA
# 10-20 HU; in-plane pixels 0.35-0.7 mm for a head field of view; a head is about 150 mm from vertex to foramen.
DEFAULT_RANGES: dict[str, dict[str, Range]] = {
    "ich": {
        "air_hu": (-1100.0, -900.0),
        "brain_hu": (15.0, 55.0),
        "brain_noise_hu": (0.5, 15.0),
        "slice_spacing_mm": (0.4, 6.0),
        "pixel_mm": (0.3, 0.8),
        "coverage_mm": (80.0, None),
    },
    "lvo": {
        "air_hu": (-1100.0, -900.0),
        "brain_hu": (15.0, 70.0),
        "brain_noise_hu": (0.5, 30.0),
        "slice_spacing_mm": (0.3, 2.5),
        "pixel_mm": (0.3, 0.8),
        "coverage_mm": (60.0, None),
    },
}
LABELS = {
    "air_hu": "air HU",
    "brain_hu": "brain HU",
    "brain_noise_hu": "brain noise (HU)",
    "slice_spacing_mm": "slice spacing (mm)",
    "pixel_mm": "pixel size (mm)",
    "coverage_mm": "head coverage (mm)",
}
_SLICE_STEP, _ROW_STEP = 4, 8  # the statistics are medians, robust to the subsampling


@dataclass
class InputCheck:
    in_range: bool
    reasons: list[str] = field(default_factory=list)
    stats: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_stats(volume_hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> dict[str, float | None]:
    """Robust statistics of a head CT volume (z, y, x) in HU: air, brain, brain noise, geometry.

    Read on every fourth slice and every eighth row, at full resolution along the rows so neighbouring voxels
    still give the noise: a 32nd of the volume, a few tens of milliseconds for a 250-slice study.
    """
    rows = np.asarray(volume_hu[::_SLICE_STEP, ::_ROW_STEP, :], dtype=np.float32)
    air = rows[rows < -500.0]
    brain_mask = (rows >= 0.0) & (rows <= 80.0)
    brain = rows[brain_mask]
    return {
        "air_hu": float(np.median(air)) if air.size else None,
        "brain_hu": float(np.median(brain)) if brain.size else None,
        "brain_noise_hu": _brain_noise(rows, brain_mask),
        "slice_spacing_mm": float(spacing_mm[0]),
        "pixel_mm": float(max(spacing_mm[1], spacing_mm[2])),
        "coverage_mm": float(spacing_mm[0] * volume_hu.shape[0]),
    }


def _brain_noise(rows: np.ndarray, brain_mask: np.ndarray) -> float | None:
    """Noise from neighbouring voxels inside the brain: 1.4826·MAD of differences along a row, divided by √2."""
    inside = brain_mask[:, :, 1:] & brain_mask[:, :, :-1]
    diffs = np.diff(rows, axis=2)[inside]
    if diffs.size < 100:
        return None
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return 1.4826 * mad / float(np.sqrt(2.0))


def ranges_for(finding: str, card: dict[str, Any] | None) -> dict[str, Range]:
    """The card's ``validated_ranges`` ({name: [low, high]}) over the defaults for the finding."""
    ranges = dict(DEFAULT_RANGES.get(finding, {}))
    for name, bounds in ((card or {}).get("validated_ranges") or {}).items():
        low, high = bounds
        ranges[name] = (None if low is None else float(low), None if high is None else float(high))
    return ranges


def input_check(
    volume_hu: np.ndarray, spacing_mm: tuple[float, float, float], *, finding: str, card: dict[str, Any] | None
) -> InputCheck:
    stats = input_stats(volume_hu, spacing_mm)
    reasons = [
        reason
        for name, bounds in ranges_for(finding, card).items()
        if (reason := _outside(name, stats.get(name), bounds)) is not None
    ]
    return InputCheck(in_range=not reasons, reasons=reasons, stats=stats)


def _outside(name: str, value: float | None, bounds: Range) -> str | None:
    low, high = bounds
    label = LABELS.get(name, name)
    if value is None:
        return f"{label}: could not be measured"
    if low is not None and value < low:
        return f"{label} {value:.4g} is below the validated {low:.4g}"
    if high is not None and value > high:
        return f"{label} {value:.4g} is above the validated {high:.4g}"
    return None

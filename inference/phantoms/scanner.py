"""Scanner variety: vendors, reconstruction kernels (blur and noise texture), slice thickness, field of view and the
rescale convention the DICOM files will use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# (manufacturer, model, kernels as (name, sharpness 0..1)) per generator family.
_VENDORS: dict[str, list[tuple[str, str, list[tuple[str, float]]]]] = {
    "A": [
        ("SIEMENS", "SOMATOM Definition AS+", [("H31s", 0.3), ("J40s", 0.5), ("Hr38", 0.4)]),
        ("GE MEDICAL SYSTEMS", "Revolution CT", [("STANDARD", 0.4), ("SOFT", 0.2), ("DETAIL", 0.6)]),
        ("SIEMENS", "SOMATOM Force", [("Hr40", 0.5), ("Qr36", 0.35)]),
    ],
    "B": [
        ("TOSHIBA", "Aquilion ONE", [("FC21", 0.3), ("FC26", 0.45), ("FC64", 0.7)]),
        ("Philips", "iCT 256", [("UB", 0.35), ("UC", 0.5), ("EC", 0.65)]),
        ("GE MEDICAL SYSTEMS", "LightSpeed VCT", [("STANDARD", 0.4), ("BONE", 0.8)]),
    ],
}
# Family R (randomised, for training): any of the above; ``randomise.acquire`` draws kernel and noise itself.
_VENDORS["R"] = _VENDORS["A"] + _VENDORS["B"]
# Family V: family R with the anatomy varied too (``variants``; NCCT only, a CTA of family V is one of family R).
_VENDORS["V"] = _VENDORS["R"]
RANDOMISED = ("R", "V")
_INTERCEPTS = (-1024.0, -1024.0, -1000.0, 0.0)
FAMILIES = tuple(_VENDORS)


@dataclass(frozen=True)
class Scanner:
    manufacturer: str
    model: str
    kernel: str
    sharpness: float
    noise_hu: float
    grain_mm: float
    slice_thickness_mm: float
    spacing_mm: tuple[float, float, float]
    fov_mm: float
    kvp: float
    tube_ma: float
    rescale_intercept: float
    family: str

    def as_meta(self) -> dict[str, object]:
        return {
            "manufacturer": self.manufacturer,
            "model": self.model,
            "kernel": self.kernel,
            "noise_hu": round(self.noise_hu, 2),
            "slice_thickness_mm": self.slice_thickness_mm,
            "fov_mm": round(self.fov_mm, 1),
            "kvp": self.kvp,
            "tube_ma": self.tube_ma,
            "rescale_intercept": self.rescale_intercept,
        }


def check_family(family: str) -> str:
    if family not in _VENDORS:
        raise ValueError(f'Generator family "{family}" is not known; use one of {", ".join(FAMILIES)}')
    return family


def draw_scanner(
    rng: np.random.Generator,
    *,
    kind: str,
    family: str,
    shape: tuple[int, int, int],
    slice_thickness_mm: float | None,
    coverage_mm: tuple[float, float],
) -> Scanner:
    """A scanner and reconstruction. Without a requested thickness the slices cover ``coverage_mm`` (a head)."""
    vendors = _VENDORS[check_family(family)]
    manufacturer, model, kernels = vendors[rng.integers(len(vendors))]
    kernel, sharpness = kernels[rng.integers(len(kernels))]
    if slice_thickness_mm is None:
        spacing_z = float(np.clip(rng.uniform(*coverage_mm) / shape[0], 0.5, 5.0))
        thickness = float(np.clip(spacing_z * rng.choice([1.0, 1.0, 1.25]), 0.625, 5.0))
    else:
        thickness = float(slice_thickness_mm)
        spacing_z = thickness
    if family in RANDOMISED:
        thickness = float(np.clip(spacing_z * rng.uniform(1.0, 2.0), 0.5, 5.0))
    fov = float(rng.uniform(200.0, 250.0) if kind == "ncct" else rng.uniform(190.0, 240.0))
    pixel = fov / shape[2]
    # Noise on a native 512 matrix at 5 mm (NCCT, about 4 HU) or 0.6 mm (CTA, 10-20 HU), then scaled to this grid.
    base = rng.uniform(3.0, 5.5) if kind == "ncct" else rng.uniform(5.0, 8.0)
    if family == "B":
        base *= 1.15
    noise = base * np.sqrt(5.0 / thickness) * np.sqrt(0.45 / pixel) * (0.8 + 0.6 * sharpness)
    grain = float(rng.uniform(0.5, 0.9) if family == "A" else rng.uniform(0.8, 1.4))
    return Scanner(
        manufacturer=manufacturer,
        model=model,
        kernel=kernel,
        sharpness=sharpness,
        noise_hu=float(noise),
        grain_mm=grain,
        slice_thickness_mm=round(thickness, 3),
        spacing_mm=(round(spacing_z, 4), pixel, pixel),
        fov_mm=fov,
        kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0]) if kind == "ncct" else rng.choice([80.0, 100.0, 120.0])),
        tube_ma=float(rng.integers(150, 400)),
        rescale_intercept=float(rng.choice(_INTERCEPTS)),
        family=family,
    )


def blur(volume: np.ndarray, scanner: Scanner) -> np.ndarray:
    """Point spread: a softer kernel blurs more in plane; a slab thicker than the spacing mixes neighbouring slices."""
    pixel = scanner.spacing_mm[2]
    sigma_xy = (0.75 - 0.45 * scanner.sharpness) / pixel
    sigma_z = 0.4 * max(scanner.slice_thickness_mm / scanner.spacing_mm[0] - 1.0, 0.0) + 0.35
    return ndi.gaussian_filter(volume, (sigma_z, sigma_xy, sigma_xy), mode="nearest", truncate=3.0)


def add_noise(volume: np.ndarray, scanner: Scanner, rng: np.random.Generator) -> None:
    """Adds correlated noise in place. A band-pass of white noise mimics the mid-frequency peak of CT noise power; the
    grain sets its scale and the sharpness how much fine texture is left."""
    pixel = scanner.spacing_mm[2]
    s1 = max(scanner.grain_mm / pixel * (1.0 - 0.5 * scanner.sharpness), 0.3)
    s2 = 2.5 * s1
    beta = 0.6 if scanner.family == "A" else 0.3
    gain = _band_pass_gain(s1, s2, beta)
    for z0 in range(0, volume.shape[0], 16):
        chunk = rng.standard_normal((min(16, volume.shape[0] - z0), *volume.shape[1:]), dtype=np.float32)
        fine = ndi.gaussian_filter(chunk, (0, s1, s1), truncate=3.0)
        coarse = ndi.gaussian_filter(chunk, (0, s2, s2), truncate=3.0)
        volume[z0 : z0 + chunk.shape[0]] += (fine - beta * coarse) * np.float32(scanner.noise_hu / gain)


def _band_pass_gain(s1: float, s2: float, beta: float) -> float:
    """Standard deviation of the band-passed white noise, from its impulse response."""
    n = int(8 * s2) | 1
    impulse = np.zeros((n, n), dtype=np.float64)
    impulse[n // 2, n // 2] = 1.0
    kernel = ndi.gaussian_filter(impulse, s1, truncate=3.0) - beta * ndi.gaussian_filter(impulse, s2, truncate=3.0)
    return float(np.sqrt(np.sum(kernel**2)))

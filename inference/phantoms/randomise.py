"""Domain randomisation (generator family ``"R"``): every nuisance a scanner, a protocol or a patient brings is drawn
per study from a range wider than real scanners produce, so that a model cannot rely on any one of them (the SynthSeg
approach: Billot et al., Medical Image Analysis 2023).

``draw_shape`` picks the volume size (slice spacing and pixel size) before a study is generated; ``acquire`` turns the
clean canvas into what a scanner would deliver: tissue HU per study, reconstruction kernel, slice profile, rim
brightening and cupping, streaks, metal, motion, correlated noise of random texture, the field-of-view circle with its
padding value and the integer storage of DICOM. ``RANGES`` lists every range with its source; model cards quote it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# name → (low, high, unit, source). "widened" ranges deliberately exceed what scanners produce.
RANGES: dict[str, tuple[float, float, str, str]] = {
    "csf_hu": (-4.0, 18.0, "HU", "CSF 0-15 HU at 120 kVp (head CT attenuation tables), widened"),
    "white_matter_hu": (16.0, 36.0, "HU", "white matter 20-30 HU (head CT attenuation tables), widened"),
    "grey_white_contrast_hu": (
        3.0,
        16.0,
        "HU",
        "grey 30-45 vs white 20-30 HU, 7-9 HU apart (head CT attenuation tables), widened",
    ),
    "acute_blood_hu": (
        46.0,
        95.0,
        "HU",
        "acute blood 50-90 HU (head CT attenuation tables); kept at least 8 HU above grey matter",
    ),
    "calcification_hu_at_100": (90.0, 140.0, "HU", "calcification over 100 HU (head CT attenuation tables)"),
    "bone_scale": (0.6, 1.35, "x", "bone 600-1,900 HU (head CT attenuation tables), widened"),
    "calibration_offset_hu": (
        -10.0,
        10.0,
        "HU",
        "water reads 0 +- 4 HU in typical acceptance and constancy tests, widened",
    ),
    "vessel_hu_scale": (
        0.8,
        1.25,
        "x",
        "opacified arteries 250-450 HU on CTA; the generator draws 180-600 HU in family R",
    ),
    "noise_hu_ncct_5mm": (1.5, 10.0, "HU", "about 4 HU on 5 mm NCCT, widened"),
    "noise_hu_cta_0p6mm": (5.0, 32.0, "HU", "10-20 HU on 0.6 mm CTA, widened"),
    "noise_grain_mm": (0.3, 1.8, "mm", "noise correlation length of soft to sharp kernels"),
    "kernel_blur_mm": (0.15, 1.2, "mm", "in-plane point spread of sharp (bone) to soft (brain) kernels"),
    "edge_enhancement": (0.0, 0.45, "x", "overshoot of sharp kernels next to bone"),
    "native_pixel_mm": (0.35, 0.7, "mm", "512 matrix over a 180-360 mm field of view"),
    "ncct_slice_thickness_mm": (0.5, 5.0, "mm", "thin 0.5-1.25 mm and thick 5 mm head CT reconstructions"),
    "cta_slice_thickness_mm": (0.5, 3.0, "mm", "0.5-1.25 mm CTA source images, 2-3 mm reformats"),
    "slice_overlap": (0.5, 1.0, "spacing / thickness", "overlapping reconstructions"),
    "rim_brightening_hu": (-6.0, 14.0, "HU", "beam-hardening residue under the inner table"),
    "streak_hu": (4.0, 45.0, "HU", "posterior fossa streaks between petrous bones"),
    "metal_streak_hu": (60.0, 400.0, "HU", "clips, coils and dental work"),
    "motion_shift_mm": (0.5, 4.0, "mm", "patient motion during a helical scan"),
    "pose_spread": (2.5, 2.5, "x family A", "yaw and roll sd 10 deg, pitch sd 17 deg (gantry tilt and head pose)"),
}
PADDING_VALUES = (-1024.0, -2000.0, -3024.0, -1000.0)
SLOPES = (1.0, 1.0, 1.0, 0.5, 0.25)
_STREAM = 0x5EED


def uniform(rng: np.random.Generator, name: str) -> float:
    low, high = RANGES[name][:2]
    return float(rng.uniform(low, high))


def draw_shape(seed: int, kind: str) -> tuple[int, int, int]:
    """The volume size for a family-R study: slice spacing from a random thickness and overlap, pixels of about
    1.4-2.0 mm (the model grids use 1.75 mm; the thinner native slices and pixels set the noise ``acquire`` draws)."""
    rng = np.random.default_rng([seed, _STREAM])
    key = "ncct_slice_thickness_mm" if kind == "ncct" else "cta_slice_thickness_mm"
    low, high = RANGES[key][:2]
    thickness = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    spacing = max(thickness * uniform(rng, "slice_overlap"), 2.5 if kind == "ncct" else 1.4)
    coverage = rng.uniform(100.0, 200.0) if kind == "ncct" else rng.uniform(90.0, 170.0)
    pixel = rng.uniform(1.45, 1.95)
    return max(8, round(coverage / spacing)), round(225.0 / pixel), round(225.0 / pixel)


def remap_tissues(volume: np.ndarray, rng: np.random.Generator, kind: str) -> dict[str, float]:
    """A monotone piecewise-linear HU map drawn per study: CSF, white and grey matter, blood, calcification, vessels
    and bone each move within ``RANGES``; air stays air. In place; returns the drawn values."""
    csf = uniform(rng, "csf_hu")
    white = max(uniform(rng, "white_matter_hu"), csf + 6.0)
    grey = white + uniform(rng, "grey_white_contrast_hu")
    blood = max(uniform(rng, "acute_blood_hu"), grey + 8.0)
    calcium = max(uniform(rng, "calcification_hu_at_100"), blood + 10.0)
    vessel = uniform(rng, "vessel_hu_scale") if kind == "cta" else 1.0
    bone = uniform(rng, "bone_scale")
    offset = uniform(rng, "calibration_offset_hu")
    src = [-1024.0, -900.0, -100.0, 8.0, 26.0, 40.0, 70.0, 100.0, 300.0, 600.0, 1000.0, 2000.0, 3071.0]
    dst = [-1024.0, -900.0, rng.uniform(-120.0, -60.0), csf, white, grey, blood, calcium]
    dst += [max(300.0 * vessel, calcium + 20), max(600.0 * vessel, 400.0), 1000.0 * bone, 2000.0 * bone, 3071.0]
    dst_arr = np.maximum.accumulate(np.asarray(dst) + np.where(np.asarray(src) > -200.0, offset, 0.0))
    flat = volume.reshape(-1)
    flat[:] = np.interp(flat, src, dst_arr).astype(np.float32)
    return {"csf": csf, "white": white, "grey": grey, "blood": blood, "offset": offset, "bone_scale": bone}


def kernel(
    volume: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float], thickness: float
) -> np.ndarray:
    """Point spread of a random kernel (soft to sharp, with the overshoot of sharp ones) and the slice profile."""
    blur_mm = uniform(rng, "kernel_blur_mm")
    sigma_xy = blur_mm / spacing[2]
    sigma_z = 0.4 * max(thickness / spacing[0] - 1.0, 0.0) + 0.3
    out = ndi.gaussian_filter(volume, (sigma_z, sigma_xy, sigma_xy), mode="nearest", truncate=3.0)
    if blur_mm < 0.6 and rng.random() < 0.6:
        amount = uniform(rng, "edge_enhancement")
        wide = rng.uniform(0.8, 2.0) / spacing[2]
        out += np.float32(amount) * (out - ndi.gaussian_filter(out, (0, wide, wide), mode="nearest", truncate=3.0))
    return out


def rim_brightening(volume: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float]) -> None:
    """Beam-hardening residue: brain next to the skull reads brighter (or darker), fading over a few millimetres."""
    amp = uniform(rng, "rim_brightening_hu")
    reach_mm = rng.uniform(2.0, 12.0)
    for z in range(volume.shape[0]):
        bone = volume[z] > 300.0
        if not bone.any():
            continue
        dist = ndi.distance_transform_edt(~bone, sampling=spacing[1:])
        soft = (volume[z] > -50.0) & (volume[z] < 150.0)
        volume[z][soft] += np.float32(amp) * np.exp(-dist[soft] / reach_mm).astype(np.float32)


def streaks(
    volume: np.ndarray, rng: np.random.Generator, amplitude: float, *, centre: tuple[float, float] | None
) -> None:
    """Straight bright and dark lines through a band of slices (posterior fossa or a random level)."""
    nz, ny, nx = volume.shape
    z0 = rng.uniform(0.1, 0.5) * nz
    half = max(1.0, rng.uniform(0.08, 0.25) * nz)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = centre if centre is not None else (rng.uniform(0.35, 0.65) * ny, rng.uniform(0.35, 0.65) * nx)
    pattern = np.zeros((ny, nx), dtype=np.float32)
    for _ in range(int(rng.integers(2, 9))):
        theta = rng.uniform(0, np.pi)
        y0, x0 = cy + rng.normal(0, 0.08 * ny), cx + rng.normal(0, 0.08 * nx)
        d = np.abs(np.cos(theta) * (yy - y0) - np.sin(theta) * (xx - x0))
        width = rng.uniform(0.6, 2.5)
        pattern += np.float32(rng.choice([-1.0, 0.7]) * amplitude * rng.uniform(0.4, 1.0)) * np.exp(-((d / width) ** 2))
    for z in range(max(0, int(z0 - half)), min(nz, int(z0 + half) + 1)):
        inside = volume[z] > -200.0
        volume[z][inside] += pattern[inside] * np.float32(1.0 - abs(z - z0) / (half + 1.0))


def metal(volume: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float]) -> None:
    """A small very dense object (a clip or a coil) with the star of streaks it throws, in a few slices."""
    head = np.argwhere(volume[:, ::4, ::4] > -200.0)
    if head.size == 0:
        return
    z, y, x = head[rng.integers(len(head))] * np.array([1, 4, 4])
    radius = rng.uniform(1.0, 3.0) / spacing[2]
    yy, xx = np.mgrid[0 : volume.shape[1], 0 : volume.shape[2]].astype(np.float32)
    r = np.hypot(yy - y, xx - x)
    angle = np.arctan2(yy - y, xx - x)
    rays = np.cos(angle * int(rng.integers(3, 9)) + rng.uniform(0, np.pi)) ** 8
    star = np.float32(uniform(rng, "metal_streak_hu")) * (2.0 * rays - 0.6) / (1.0 + r * spacing[2] / 15.0)
    reach = max(1, round(rng.uniform(1.0, 6.0) / spacing[0]))
    for k in range(max(0, z - reach), min(volume.shape[0], z + reach + 1)):
        fade = np.float32(1.0 - abs(k - z) / (reach + 1.0))
        inside = volume[k] > -200.0
        volume[k][inside] += (star * fade)[inside]
        volume[k][r <= radius * fade] = np.float32(rng.uniform(2000.0, 3071.0))


def motion(volume: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float]) -> None:
    """Ghosting in a slab of slices (the head moved during their rotation) and a step shift of the slices above."""
    nz = volume.shape[0]
    start = int(rng.integers(0, max(1, nz - 2)))
    stop = min(nz, start + max(2, int(rng.uniform(0.1, 0.5) * nz)))
    for z in range(start, stop):
        shift = rng.normal(size=2)
        shift *= uniform(rng, "motion_shift_mm") / (np.linalg.norm(shift) + 1e-6) / spacing[2]
        ghost = ndi.shift(volume[z], shift, order=1, mode="nearest")
        weight = np.float32(rng.uniform(0.15, 0.5))
        volume[z] += weight * (ghost - volume[z])
    if rng.random() < 0.5 and stop < nz:
        step = rng.normal(size=2) * rng.uniform(0.3, 1.5) / spacing[2]
        volume[stop:] = ndi.shift(volume[stop:], (0.0, *step), order=1, mode="nearest")


def noise(
    volume: np.ndarray,
    rng: np.random.Generator,
    spacing: tuple[float, float, float],
    thickness: float,
    kind: str,
) -> float:
    """Correlated noise of random level and texture (grain, band-pass depth, anisotropy, a little slow shading).
    The level is drawn at a native thin-slice grid and carried to this grid as averaging would; returns its sd."""
    pixel = spacing[2]
    native = uniform(rng, "native_pixel_mm")
    if kind == "ncct":
        sd = uniform(rng, "noise_hu_ncct_5mm") * np.sqrt(5.0 / max(thickness, 0.5)) * (0.45 / native)
    else:
        sd = uniform(rng, "noise_hu_cta_0p6mm") * np.sqrt(0.6 / max(thickness, 0.5)) * (0.45 / native)
    grain_mm = uniform(rng, "noise_grain_mm")
    # Averaging native pixels into this grid lowers white noise by native/pixel, correlated noise by grain/pixel.
    sd *= min(1.0, max(native, grain_mm) / pixel)
    grain = grain_mm / pixel
    aniso = rng.uniform(0.6, 1.6) if rng.random() < 0.3 else 1.0
    s1 = (rng.uniform(0.0, 0.8), max(grain * aniso, 0.3), max(grain / aniso, 0.3))
    white = rng.standard_normal(volume.shape, dtype=np.float32)
    fine = ndi.gaussian_filter(white, s1, truncate=3.0)
    beta = rng.uniform(0.0, 0.8)
    if beta > 0.05:
        fine -= np.float32(beta) * ndi.gaussian_filter(white, tuple(2.5 * s for s in s1), truncate=3.0)
    fine *= np.float32(sd / (float(fine.std()) + 1e-6))
    inside = volume > -400.0
    volume[inside] += fine[inside]
    volume[~inside] += np.float32(0.6) * fine[~inside]
    if rng.random() < 0.4:
        slow = ndi.gaussian_filter(rng.standard_normal(volume.shape, dtype=np.float32), 20.0 / pixel, truncate=2.0)
        volume[inside] += (slow * np.float32(rng.uniform(0.5, 4.0) / (float(slow.std()) + 1e-6)))[inside]
    return float(sd)


def field_of_view(volume: np.ndarray, rng: np.random.Generator, keep: np.ndarray | None) -> float:
    """Outside the reconstruction circle: a padding value of one of the usual conventions. The circle never cuts
    into ``keep`` (the lesion). Returns the padding value (NaN when no circle was drawn)."""
    if rng.random() < 0.5:
        return float("nan")
    _, ny, nx = volume.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = (ny - 1) / 2.0 + rng.normal(0, 0.02 * ny), (nx - 1) / 2.0 + rng.normal(0, 0.02 * nx)
    r = np.hypot(yy - cy, xx - cx)
    radius = rng.uniform(0.44, 0.56) * min(ny, nx)
    if keep is not None and keep.any():
        radius = max(radius, float(r[keep.any(axis=0)].max()) + 2.0)
    pad = float(rng.choice(PADDING_VALUES))
    volume[:, r > radius] = np.float32(pad)
    return pad


def storage(volume: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Integer storage with a random rescale slope and intercept (unsigned with -1024, signed otherwise), read back."""
    slope = float(rng.choice(SLOPES))
    intercept = float(rng.choice([-1024.0, -1024.0, -1000.0, 0.0, -8192.0]))
    low = -1024.0 if intercept == -1024.0 else -3024.0
    np.clip(volume, low, 3071.0, out=volume)
    volume[...] = np.rint((volume - intercept) / slope) * slope + intercept
    return slope, intercept


def acquire(
    volume: np.ndarray,
    rng: np.random.Generator,
    *,
    spacing: tuple[float, float, float],
    thickness: float,
    kind: str,
    keep: np.ndarray | None,
    posterior_fossa: tuple[float, float] | None = None,
    streak_strength: float | None = None,
) -> tuple[np.ndarray, dict[str, object]]:
    """The clean canvas through a randomised scanner. ``keep`` is the lesion mask (never cut by the field of view);
    ``streak_strength`` forces posterior fossa streaks of that strength (0..1)."""
    tissues = remap_tissues(volume, rng, kind)
    volume = kernel(volume, rng, spacing, thickness)
    if rng.random() < 0.6:
        rim_brightening(volume, rng, spacing)
    strength = streak_strength if streak_strength is not None else (rng.random() if rng.random() < 0.4 else None)
    if strength is not None:
        low, high = RANGES["streak_hu"][:2]
        streaks(volume, rng, low + (high - low) * strength, centre=posterior_fossa)
    has_metal = bool(rng.random() < 0.12)
    if has_metal:
        metal(volume, rng, spacing)
    moved = bool(rng.random() < 0.2)
    if moved:
        motion(volume, rng, spacing)
    sd = noise(volume, rng, spacing, thickness, kind)
    pad = field_of_view(volume, rng, keep)
    slope, intercept = storage(volume, rng)
    info = {
        "tissues_hu": {k: round(v, 1) for k, v in tissues.items()},
        "noise_hu": round(sd, 2),
        "streaks": None if strength is None else round(float(strength), 2),
        "metal": has_metal,
        "motion": moved,
        "padding": None if np.isnan(pad) else pad,
        "rescale": [slope, intercept],
    }
    return volume, info

"""Anatomical variation for family V (family R with the anatomy varied too): what a real head brings that the shared
head model (a smooth skull shell around the MNI template or the parametric brain) lacks, so that a model cannot learn
"anything dense outside the template's shape is blood".

``paint_anatomy`` adds, each with its own probability, size and density drawn per study:

- the skull base and face below the brain: petrous ridges with mastoid air cells, the clivus, the sphenoid sinus, the
  orbits (fat, globe, bony roof), and the soft tissue of the face and neck (muscle 35-65 HU, in the blood range);
- dural venous sinuses (superior sagittal, transverse, straight) filled with circulating blood, 38-68 HU;
- the tentorium, thin and dense like the falx;
- deep grey nuclei (caudate, lentiform, thalamus) 3 HU darker to 12 HU brighter than the study's grey matter.

``warp`` then bends the whole painted study (volume and lesion mask together) with a smooth random displacement, so
shapes and proportions differ from the template's. None of this is a lesion: the mask only moves with the warp.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage as ndi

from inference.phantoms.anatomy import DIST_IN
from inference.phantoms.scene import Canvas, Painter, Region, edge, smooth_wobble

# name → (low, high, unit, source); a card trained on family V quotes them beside randomise.RANGES.
ANATOMY_RANGES: dict[str, tuple[float, float, str, str]] = {
    "venous_sinus_hu": (38.0, 68.0, "HU", "circulating blood 40-60 HU, higher with a high haematocrit"),
    "muscle_hu": (35.0, 65.0, "HU", "skeletal muscle 35-55 HU at 120 kVp, widened"),
    "skull_base_bone_hu": (500.0, 1900.0, "HU", "cortical and petrous bone 600-1,900 HU, widened"),
    "deep_grey_offset_hu": (-3.0, 12.0, "HU", "basal ganglia and thalamus near cortical grey 35-45 HU, widened"),
    "warp_mm": (0.0, 7.0, "mm", "smooth displacement of the whole head, 40-90 mm wavelength"),
}
_BRAIN_MARGIN_MM = 2.5  # skull-base structures may indent the brain by this much


def _uniform(rng: np.random.Generator, name: str) -> float:
    low, high = ANATOMY_RANGES[name][:2]
    return float(rng.uniform(low, high))


def _ellipsoid_painter(
    center: np.ndarray, radii: np.ndarray, value: float, rng: np.random.Generator, *, inside_mm: float | None
) -> Painter:
    """A wobbly ellipsoid; ``inside_mm`` limits how far it may reach into the intracranial space (None: anywhere)."""
    seed = int(rng.integers(1 << 31))
    center32 = center.astype(np.float32)[:, None, None, None]
    radii32 = radii.astype(np.float32)[:, None, None, None]

    def painter(region: Region) -> tuple[np.ndarray, float]:
        rel = (region.coords - center32) / radii32
        r = np.sqrt(np.sum(rel**2, axis=0))
        wobble = 0.15 * smooth_wobble(np.random.default_rng(seed), region.coords, center, 2.5 * float(radii.mean()))
        weight = edge((1.0 - r + wobble) * float(radii.min()), region.voxel_mm)
        if inside_mm is not None:
            weight = weight * edge(inside_mm - region.channel(DIST_IN), 1.0)
        return weight, value

    return painter


Point = tuple[float, float, float] | np.ndarray


def _blob(
    canvas: Canvas, rng: np.random.Generator, center: Point, radii: Point, value: float, inside_mm: float | None
) -> None:
    c = np.asarray(center, dtype=float) + rng.normal(0.0, 2.5, size=3)
    r = np.asarray(radii, dtype=float) * rng.uniform(0.75, 1.3, size=3)
    painter = _ellipsoid_painter(c, r, value, rng, inside_mm=inside_mm)
    canvas.paint(c - 1.5 * r - 2, c + 1.5 * r + 2, painter)


def _face_and_neck(canvas: Canvas, rng: np.random.Generator) -> None:
    muscle = _uniform(rng, "muscle_hu")
    _blob(canvas, rng, (-62.0, -10.0, 0.0), (30.0, 55.0, 58.0), muscle, inside_mm=-6.0)
    _blob(canvas, rng, (-58.0, -62.0, 0.0), (26.0, 22.0, 48.0), muscle + rng.uniform(-8, 8), inside_mm=-6.0)
    _blob(canvas, rng, (-72.0, 40.0, 0.0), (22.0, 22.0, 34.0), rng.uniform(-60.0, 40.0), inside_mm=-6.0)


def _skull_base(canvas: Canvas, rng: np.random.Generator) -> None:
    bone = _uniform(rng, "skull_base_bone_hu")
    for side in (-1, 1):
        # Petrous ridge: an oblique wedge from the apex (medial, anterior) to the mastoid (lateral, posterior).
        apex = np.array([-32.0, -14.0, 18.0 * side])
        mastoid = np.array([-40.0, -34.0, 46.0 * side])
        for t in np.linspace(0.0, 1.0, 4):
            centre = apex + t * (mastoid - apex)
            _blob(canvas, rng, centre, (6.0, 7.0, 9.0), bone * rng.uniform(0.8, 1.1), inside_mm=_BRAIN_MARGIN_MM)
        if rng.random() < 0.8:  # mastoid air cells inside the bone
            for _ in range(int(rng.integers(2, 6))):
                cell = mastoid + rng.normal(0.0, [4.0, 4.0, 3.0]) + np.array([-6.0, -4.0, 4.0 * side])
                _blob(canvas, rng, cell, (3.0, 3.0, 3.0), rng.uniform(-950.0, -500.0), inside_mm=-1.0)
        if rng.random() < 0.85:  # orbit: fat cone with the globe in front and a bony roof above
            orbit = np.array([-30.0, 52.0, 31.0 * side])
            _blob(canvas, rng, orbit + [6.0, -4.0, 0.0], (4.0, 16.0, 14.0), bone * 0.7, inside_mm=_BRAIN_MARGIN_MM)
            _blob(canvas, rng, orbit, (13.0, 18.0, 13.0), rng.uniform(-120.0, -60.0), inside_mm=-3.0)
            _blob(canvas, rng, orbit + [0.0, 10.0, 0.0], (11.0, 11.0, 11.0), rng.uniform(0.0, 25.0), inside_mm=-3.0)
    _blob(canvas, rng, (-42.0, -18.0, 0.0), (18.0, 7.0, 8.0), bone * rng.uniform(0.6, 1.0), inside_mm=_BRAIN_MARGIN_MM)
    if rng.random() < 0.85:
        sphenoid = rng.uniform(-1000.0, -300.0) if rng.random() < 0.8 else rng.uniform(10.0, 60.0)
        _blob(canvas, rng, (-34.0, 8.0, 0.0), (10.0, 12.0, 13.0), sphenoid, inside_mm=-2.0)


def _venous_sinuses(canvas: Canvas, rng: np.random.Generator) -> None:
    value = _uniform(rng, "venous_sinus_hu")
    width = rng.uniform(2.5, 5.5)
    depth = rng.uniform(4.0, 8.0)

    def sagittal(region: Region) -> tuple[np.ndarray, float]:
        dist = region.channel(DIST_IN)
        x = region.coords[2]
        # triangular section: wide at the inner table, narrowing with depth
        half = width * np.clip(1.0 - dist / depth, 0.0, 1.0)
        weight = edge(half - np.abs(x), region.voxel_mm) * (half > 0.25) * edge(dist + 0.3, 1.0)
        weight = weight * edge(region.coords[0] + 10.0, 6.0)
        return weight, value

    canvas.paint(np.array([-20.0, -120.0, -10.0]), np.array([100.0, 80.0, 10.0]), sagittal)
    level = rng.uniform(-22.0, -6.0)

    def transverse(region: Region) -> tuple[np.ndarray, float]:
        dist, z, y = region.channel(DIST_IN), region.coords[0], region.coords[1]
        band = edge(width - np.abs(z - level - 0.12 * (y + 90.0)), region.voxel_mm)
        weight = band * edge(depth - dist, 1.0) * edge(dist + 0.3, 1.0) * edge(-55.0 - y, 8.0)
        return weight, value

    if rng.random() < 0.85:
        canvas.paint(np.array([level - 20, -125.0, -75.0]), np.array([level + 20, -40.0, 75.0]), transverse)


def _tentorium(canvas: Canvas, rng: np.random.Generator) -> None:
    value = float(rng.uniform(55.0, 100.0))
    half = float(rng.uniform(0.5, 1.2))
    apex_z = float(rng.uniform(-8.0, 4.0))

    def painter(region: Region) -> tuple[np.ndarray, float]:
        z, y, x = region.coords
        # a tent sloping down from the straight sinus towards the petrous ridges and the occiput
        surface = apex_z - 0.35 * np.abs(x) - 0.12 * np.abs(y + 50.0)
        weight = edge(half - np.abs(z - surface), region.voxel_mm) * edge(-15.0 - y, 6.0)
        return weight * edge(region.channel(DIST_IN) - 1.0, 1.0), value

    canvas.paint(np.array([-50.0, -110.0, -70.0]), np.array([10.0, -10.0, 70.0]), painter)


def _deep_grey(canvas: Canvas, rng: np.random.Generator) -> None:
    offset = _uniform(rng, "deep_grey_offset_hu")
    nuclei = {
        "caudate": ((12.0, 12.0, 13.0), (8.0, 11.0, 4.5)),
        "lentiform": ((1.0, 2.0, 22.0), (9.0, 13.0, 6.0)),
        "thalamus": ((6.0, -18.0, 11.0), (8.0, 12.0, 7.0)),
    }
    for centre, radii in nuclei.values():
        part = offset * rng.uniform(0.6, 1.0)
        for side in (-1, 1):
            c = np.asarray(centre) * np.array([1.0, 1.0, side]) + rng.normal(0.0, 1.5, size=3)
            r = np.asarray(radii) * rng.uniform(0.8, 1.2, size=3)
            painter = _ellipsoid_painter(c, r, part, rng, inside_mm=None)

            def in_brain(region: Region, painter=painter) -> tuple[np.ndarray, float]:  # noqa: ANN001
                weight, value = painter(region)
                return weight * edge(region.channel(DIST_IN) - 4.0, 2.0), value

            canvas.paint(c - 1.5 * r - 2, c + 1.5 * r + 2, in_brain, add=True)


def paint_anatomy(canvas: Canvas, rng: np.random.Generator) -> list[str]:
    """Paints the variations this study gets; returns their names for the phantom's metadata."""
    done = []
    for name, chance, painter in (
        ("face_and_neck", 0.8, _face_and_neck),
        ("skull_base", 0.85, _skull_base),
        ("venous_sinuses", 0.75, _venous_sinuses),
        ("tentorium", 0.35, _tentorium),
        ("deep_grey", 0.7, _deep_grey),
    ):
        if rng.random() < chance:
            painter(canvas, rng)
            done.append(name)
    return done


def warp(
    volume: np.ndarray, mask: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Volume and mask bent by one smooth random displacement field (linear and nearest resampling)."""
    amplitude = _uniform(rng, "warp_mm")
    if amplitude < 0.5:
        return volume, mask, 0.0
    wavelength = rng.uniform(40.0, 90.0)
    extent = np.asarray(volume.shape) * np.asarray(spacing)
    nodes = tuple(int(n) for n in np.maximum(2, np.ceil(extent / wavelength).astype(int) + 1))
    coarse = torch.from_numpy(rng.normal(0.0, amplitude / 2.0, size=(1, 3, *nodes)).astype(np.float32))
    with torch.no_grad():
        field_ = F.interpolate(coarse, size=volume.shape, mode="trilinear", align_corners=True)[0].numpy()
    coords = np.indices(volume.shape, dtype=np.float32)
    for axis in range(3):
        coords[axis] += field_[axis] / np.float32(spacing[axis])
    fill = float(volume.min())
    bent = ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=fill).astype(np.float32)
    bent_mask = ndi.map_coordinates(mask.astype(np.uint8), coords, order=0, mode="constant", cval=0).astype(bool)
    return bent, bent_mask, round(float(amplitude), 2)

"""What NCCT and CTA share: head pose, the anatomy choice, and a canvas that paints lesions into the output volume
only inside each lesion's bounding box (so 512×512 volumes stay cheap)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from inference.phantoms import anatomy
from inference.phantoms.geometry import Grid, rotation_zyx


@dataclass(frozen=True)
class Pose:
    rotation: np.ndarray
    scale: np.ndarray
    shift_mm: np.ndarray
    angles_deg: tuple[float, float, float]

    def as_meta(self) -> dict[str, object]:
        return {
            "yaw_deg": round(self.angles_deg[0], 2),
            "pitch_deg": round(self.angles_deg[1], 2),
            "roll_deg": round(self.angles_deg[2], 2),
            "head_scale": [round(float(s), 3) for s in self.scale],
        }


def draw_pose(rng: np.random.Generator, *, family: str, tilt: float = 1.0) -> Pose:
    """Random head size (per axis) and position; ``tilt`` scales the rotation range (hard negatives use more)."""
    spread = {"A": 1.0, "B": 1.4}.get(family, 2.5)
    yaw, roll = rng.normal(0.0, 4.0 * spread * tilt, size=2)
    pitch = rng.normal(6.0, 7.0 * spread * tilt)
    size = rng.normal(1.0, 0.05)
    scale = size * rng.normal(1.0, 0.03 * spread, size=3)
    shift = rng.normal(0.0, [4.0, 6.0, 4.0]) * spread
    rotation = rotation_zyx(float(yaw), float(pitch), float(roll))
    return Pose(rotation, np.clip(scale, 0.82, 1.18), shift, (float(yaw), float(pitch), float(roll)))


def resolve_anatomy(name: str) -> str:
    if name == "auto":
        return "template" if anatomy.template_available() else "parametric"
    if name not in ("template", "parametric"):
        raise ValueError(f'Anatomy "{name}" is not known; use "auto", "template" or "parametric"')
    if name == "template" and not anatomy.template_available():
        raise FileNotFoundError("The MNI152 templates from nilearn are not installed; use anatomy='parametric'")
    return name


@dataclass
class Region:
    """The output voxels of one lesion box: canonical coordinates and head channels sampled on demand."""

    canvas: Canvas
    box: tuple[slice, slice, slice]
    coords: np.ndarray
    _channels: dict[int, np.ndarray] = field(default_factory=dict)

    def channel(self, index: int) -> np.ndarray:
        if index not in self._channels:
            self._channels[index] = anatomy.sample(self.canvas.head, self.canvas.grid, self.box, (index,))[0]
        return self._channels[index]

    @property
    def voxel_mm(self) -> float:
        """Canonical millimetres per voxel in plane, the width of the partial-volume edge."""
        return float(self.canvas.grid.spacing[2] / self.canvas.grid.mm_per_canon())

    def patient(self, axis: int) -> np.ndarray:
        return self.canvas.grid.patient_mm(self.box, axis)

    @property
    def hu(self) -> np.ndarray:
        return self.canvas.volume[self.box]


_SLAB_VOXELS = 2_000_000
Painter = Callable[[Region], tuple[np.ndarray, np.ndarray | float]]


@dataclass
class Canvas:
    head: anatomy.HeadModel
    grid: Grid
    volume: np.ndarray
    mask: np.ndarray

    def paint(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        painter: Painter,
        *,
        lesion: bool = False,
        add: bool = False,
        solid: bool = False,
        whole: bool = False,
    ) -> int:
        """Blends ``painter``'s value into the volume with its weight (or adds it); returns the voxels it marks.
        ``solid`` sets voxels at least half inside to the value outright (a clot that fills a lumen). Large boxes are
        painted in slabs to bound memory, unless the painter needs the ``whole`` box at once."""
        box = self.grid.box_of(np.asarray(lo, float), np.asarray(hi, float))
        if box is None:
            return 0
        plane = (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
        step = box[0].stop - box[0].start if whole else max(1, _SLAB_VOXELS // max(plane, 1))
        marked = 0
        for z0 in range(box[0].start, box[0].stop, step):
            slab = (slice(z0, min(z0 + step, box[0].stop)), box[1], box[2])
            marked += self._paint_box(slab, painter, lesion=lesion, add=add, solid=solid)
        return marked

    def _paint_box(
        self, box: tuple[slice, slice, slice], painter: Painter, *, lesion: bool, add: bool, solid: bool
    ) -> int:
        weight, value = painter(Region(self, box, self.grid.canon(box)))
        weight = np.clip(weight, 0.0, 1.0).astype(np.float32)
        target = self.volume[box]
        if add:
            target += weight * np.float32(value) if np.isscalar(value) else weight * value  # type: ignore[arg-type,operator]
        else:
            target += weight * (np.asarray(value, dtype=np.float32) - target)
            if solid:
                target[weight >= 0.5] = (np.broadcast_to(value, weight.shape)[weight >= 0.5]).astype(np.float32)
        if not lesion:
            return 0
        marked = weight >= 0.5
        self.mask[box] |= marked
        return int(marked.sum())


def edge(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Partial-volume occupancy of a region whose inside is ``signed_mm > 0``."""
    return np.clip(signed_mm / max(width_mm, 1e-3) + 0.5, 0.0, 1.0)


def smooth_wobble(rng: np.random.Generator, coords: np.ndarray, center: np.ndarray, wavelength: float) -> np.ndarray:
    """A smooth random field in [-1, 1] (sum of plane waves) that makes lesion borders irregular."""
    waves = rng.normal(size=(4, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    phases = rng.uniform(0, 2 * np.pi, size=4)
    rel = coords - np.asarray(center, dtype=np.float32)[:, None, None, None]
    out = np.zeros(coords.shape[1:], dtype=np.float32)
    for w, p in zip(waves, phases, strict=True):
        out += np.sin((w[0] * rel[0] + w[1] * rel[1] + w[2] * rel[2]) * np.float32(2 * np.pi / wavelength) + p)
    return out / 2.0


def direction(elevation_deg: float, azimuth_deg: float, side: int) -> np.ndarray:
    """Unit vector (canonical z, y, x): azimuth 0 points anterior, 90 lateral to ``side``, 180 posterior."""
    e, a = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
    return np.array([np.sin(e), np.cos(e) * np.cos(a), side * np.cos(e) * np.sin(a)])


def angle_from(coords: np.ndarray, center: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Angle (radians) between ``axis`` and the ray from ``center`` to each voxel."""
    rel = coords - np.asarray(center, dtype=np.float32)[:, None, None, None]
    norm = np.sqrt(np.sum(rel**2, axis=0)) + 1e-3
    cos = (rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]) / norm
    return np.arccos(np.clip(cos, -1.0, 1.0))

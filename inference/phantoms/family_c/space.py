"""Family C's own geometry: the sampling grid, the head pose and smooth random fields, all in world millimetres.

World axes are (z, y, x) with z superior, y posterior and x towards the patient's left (the output's LPS frame), the
origin at the centre of the skull. Nothing here is shared with families A and B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A voxel grid (internal resolution) posed over the world: world = rot @ (index * spacing - centre_mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    rot: np.ndarray
    centre_mm: np.ndarray

    def world(self, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """World coordinates (3, dz, dy, dx) float32 of the voxels in ``box`` (default all)."""
        whole = tuple(slice(0, n) for n in self.shape)
        axes = [
            np.arange(s.start, s.stop, dtype=np.float32) * np.float32(d)
            for s, d in zip(box or whole, self.spacing, strict=True)
        ]
        axes = [a - np.float32(c) for a, c in zip(axes, self.centre_mm, strict=True)]
        zz, yy, xx = np.meshgrid(*axes, indexing="ij")
        r = self.rot.astype(np.float32)
        return np.stack([r[i, 0] * zz + r[i, 1] * yy + r[i, 2] * xx for i in range(3)])

    def box_around(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """The index box holding the world box [lo, hi] (rotated corners), or None when outside the grid."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = (corners @ self.rot) + self.centre_mm  # inverse rotation (orthonormal), back to grid millimetres
        idx = idx / np.asarray(self.spacing)
        low = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
        high = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, self.shape)
        if np.any(high <= low):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]


def rotation(rng: np.random.Generator, spread_deg: float) -> np.ndarray:
    """A random rotation: a random axis, an angle with this standard deviation (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.normal(0.0, spread_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def make_frame(
    rng: np.random.Generator,
    *,
    n_slices: int,
    matrix: int,
    spacing: tuple[float, float, float],
    centre_world_z: float,
    spread_deg: float,
) -> Frame:
    """Grid centred on the head (plus a random offset) at world height ``centre_world_z``, in a random pose."""
    extent = np.array([n_slices, matrix, matrix], dtype=float) * np.asarray(spacing)
    offset = np.array([-centre_world_z, 0.0, 0.0]) + rng.normal(0.0, [3.0, 5.0, 4.0])
    return Frame((n_slices, matrix, matrix), spacing, rotation(rng, spread_deg), extent / 2.0 + offset)


class Field:
    """A smooth random field: a sum of cosines with random directions, wavelengths and phases, about N(0, 1)."""

    def __init__(self, rng: np.random.Generator, terms: int, wavelength_mm: tuple[float, float]) -> None:
        dirs = rng.normal(size=(terms, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self.k = (dirs * (2 * np.pi / rng.uniform(*wavelength_mm, size=(terms, 1)))).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, size=terms).astype(np.float32)
        self.norm = np.float32(np.sqrt(2.0 / terms))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        out = np.zeros(p.shape[1:], dtype=np.float32)
        for k, ph in zip(self.k, self.phase, strict=True):
            out += np.cos(k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + ph)
        return out * self.norm


def smoothstep(x: np.ndarray, width: float) -> np.ndarray:
    """0 below -width/2, 1 above +width/2, a cubic in between (partial volume across a boundary)."""
    t = np.asarray(x, dtype=np.float32) * np.float32(1.0 / max(width, 1e-3))
    t += np.float32(0.5)
    np.clip(t, 0.0, 1.0, out=t)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from each point to the segment a-b and the position t in [0, 1] along it."""
    ab = (b - a).astype(np.float32)
    rel = p - a.astype(np.float32)[:, None, None, None]
    t = np.clip((rel[0] * ab[0] + rel[1] * ab[1] + rel[2] * ab[2]) / (float(ab @ ab) + 1e-6), 0.0, 1.0)
    d = np.sqrt((rel[0] - t * ab[0]) ** 2 + (rel[1] - t * ab[1]) ** 2 + (rel[2] - t * ab[2]) ** 2)
    return d, t

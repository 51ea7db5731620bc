"""Mapping between the output voxel grid and the canonical head frame.

The canonical frame is MNI-like RAS in millimetres, stored in (z, y, x) order: z superior, y anterior, x towards the
patient's right. The output grid uses the DICOM patient frame (LPS) in (z, y, x) order: z superior, y posterior, x
towards the patient's left. A pose (rotation, per-axis head scale, translation) links the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Patient (S, P, L) to canonical (S, A, R): flip the two in-plane axes.
_FLIP = np.diag([1.0, -1.0, -1.0])


def rotation_zyx(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation in (z, y, x) coordinates: yaw about the z axis, pitch (chin tilt) about x, roll about y."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    yaw = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    pitch = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    roll = np.array([[np.cos(c), 0, -np.sin(c)], [0, 1, 0], [np.sin(c), 0, np.cos(c)]])
    return yaw @ pitch @ roll


@dataclass(frozen=True)
class Grid:
    """An output voxel grid posed over the canonical head: canonical = matrix @ index + offset."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def posed(
        cls,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        *,
        head_center: np.ndarray,
        rotation: np.ndarray,
        scale: np.ndarray,
        shift_mm: np.ndarray,
    ) -> Grid:
        """The volume centre sits on ``head_center + shift`` of the head, scaled by ``scale`` (canonical axes)."""
        to_canon = np.diag(1.0 / np.asarray(scale)) @ rotation.T @ _FLIP
        matrix = to_canon @ np.diag(spacing)
        centre_idx = (np.asarray(shape, dtype=float) - 1.0) / 2.0
        offset = np.asarray(head_center, dtype=float) + np.asarray(shift_mm) - matrix @ centre_idx
        return cls(_ints3(shape), _floats3(spacing), matrix, offset)

    def canon(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Canonical coordinates (3, dz, dy, dx) float32 of the voxels in ``box``."""
        axes = [np.arange(s.start, s.stop, dtype=np.float32) for s in box]
        out = np.empty((3, len(axes[0]), len(axes[1]), len(axes[2])), dtype=np.float32)
        m = self.matrix.astype(np.float32)
        for r in range(3):
            out[r] = (
                m[r, 0] * axes[0][:, None, None]
                + m[r, 1] * axes[1][None, :, None]
                + m[r, 2] * axes[2][None, None, :]
                + np.float32(self.offset[r])
            )
        return out

    def patient_mm(self, box: tuple[slice, slice, slice], axis: int) -> np.ndarray:
        """Patient coordinate along one axis for the voxels of ``box``, broadcastable to the box shape."""
        idx = np.arange(box[axis].start, box[axis].stop, dtype=np.float32) * np.float32(self.spacing[axis])
        shape = [1, 1, 1]
        shape[axis] = idx.size
        return idx.reshape(shape)

    def box_of(self, lo: np.ndarray, hi: np.ndarray, margin: int = 1) -> tuple[slice, slice, slice] | None:
        """Output index box covering the canonical box [lo, hi], or None when it misses the volume."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = np.linalg.solve(self.matrix, (corners - self.offset).T).T
        start = np.floor(idx.min(axis=0)).astype(int) - margin
        stop = np.ceil(idx.max(axis=0)).astype(int) + margin + 1
        start = np.maximum(start, 0)
        stop = np.minimum(stop, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]

    def as_meta(self) -> dict[str, list]:
        """The voxel-to-canonical affine, so tools can check where a lesion lies (see ``from_meta``)."""
        return {"matrix": self.matrix.round(6).tolist(), "offset": self.offset.round(6).tolist()}

    @classmethod
    def from_meta(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float], meta: dict) -> Grid:
        return cls(_ints3(shape), _floats3(spacing), np.asarray(meta["matrix"]), np.asarray(meta["offset"]))

    def full(self) -> tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]

    def mm_per_canon(self) -> float:
        """Mean patient millimetres per canonical millimetre (the head scale)."""
        return float(abs(np.linalg.det(np.diag(self.spacing) @ np.linalg.inv(self.matrix))) ** (1 / 3))


def _ints3(values: Iterable[Any]) -> tuple[int, int, int]:
    z, y, x = (int(v) for v in values)
    return z, y, x


def _floats3(values: Iterable[Any]) -> tuple[float, float, float]:
    z, y, x = (float(v) for v in values)
    return z, y, x

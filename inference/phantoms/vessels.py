"""The intracranial arteries and venous sinuses of a head CTA, as tubes in the canonical frame.

Centrelines follow MNI coordinates of the circle of Willis (z, y, x in mm, x > 0 the patient's right) and radii the
usual diameters: cavernous ICA 5.0 mm, ICA terminus 3.6, M1 3.1, M2 2.4, basilar 3.6 to 3.1, A1 1.5 to 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.phantoms.anatomy import DIST_IN
from inference.phantoms.scene import Canvas, Region, edge


@dataclass
class Vessel:
    name: str
    side: int  # +1 right, -1 left, 0 midline
    points: np.ndarray  # (n, 3) canonical z, y, x
    radii: np.ndarray  # (n,)
    distal_to: str | None = None  # the vessel that feeds it


# One side's anterior circulation, x > 0; the left side mirrors it.
_SIDE_VESSELS: dict[str, tuple[list[tuple[float, float, float]], list[float], str | None]] = {
    "ica": (
        [
            (-78, -10, 21),
            (-55, -8, 23),
            (-40, -4, 24),
            (-34, 4, 20),
            (-28, 8, 16),
            (-22, 6, 15),
            (-17, 13, 14),
            (-12, 9, 14.5),
            (-9, 3, 14.5),
        ],
        [2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.2, 1.9, 1.8],
        None,
    ),
    "m1": ([(-9, 3, 14.5), (-8, 4, 22), (-7, 5, 30), (-5, 5, 38), (-3, 3, 45)], [1.6, 1.55, 1.5, 1.45, 1.4], "ica"),
    "m2_superior": ([(-3, 3, 45), (3, 2, 48), (12, -3, 50), (24, -12, 52)], [1.2, 1.15, 1.05, 0.95], "m1"),
    "m2_inferior": ([(-3, 3, 45), (-7, -4, 48), (-5, -18, 51), (2, -32, 51)], [1.2, 1.15, 1.05, 0.95], "m1"),
    "m3_frontal": ([(24, -12, 52), (36, 4, 54), (46, 20, 46)], [0.8, 0.7, 0.55], "m2_superior"),
    "m3_parietal": ([(24, -12, 52), (38, -28, 52), (48, -45, 42)], [0.8, 0.7, 0.55], "m2_superior"),
    "m3_temporal": ([(2, -32, 51), (-10, -45, 54), (-14, -62, 48)], [0.8, 0.7, 0.55], "m2_inferior"),
    "m3_angular": ([(2, -32, 51), (18, -50, 50), (24, -66, 40)], [0.8, 0.7, 0.55], "m2_inferior"),
    "a1": ([(-9, 3, 14.5), (-8, 9, 9), (-6, 14, 3.5), (-5, 16, 1.5)], [1.1, 1.1, 1.05, 1.0], "ica"),
    "a2": (
        [(-5, 16, 1.5), (5, 24, 2.5), (20, 32, 3), (34, 22, 3), (44, 2, 3), (48, -24, 3)],
        [1.0, 1.0, 0.95, 0.85, 0.75, 0.65],
        "a1",
    ),
    "pcom": ([(-9, 3, 14.5), (-12, -5, 13), (-15, -14, 10)], [0.6, 0.6, 0.6], "ica"),
    "p1": ([(-18, -19, 0.5), (-17, -17, 5), (-15, -14, 10)], [1.0, 1.0, 1.0], "basilar"),
    "p2": (
        [(-15, -14, 10), (-13, -26, 19), (-8, -42, 22), (-2, -58, 20), (4, -74, 14)],
        [1.0, 0.95, 0.9, 0.8, 0.65],
        "p1",
    ),
    "sca": ([(-21, -20, 1), (-22, -30, 10), (-24, -44, 16)], [0.6, 0.55, 0.5], "basilar"),
    "vertebral": ([(-80, -42, 14), (-66, -40, 10), (-56, -34, 4), (-50, -30, 0.5)], [1.7, 1.7, 1.6, 1.6], None),
}
_MIDLINE_VESSELS: dict[str, tuple[list[tuple[float, float, float]], list[float], str | None]] = {
    "basilar": ([(-50, -30, 0), (-40, -27, 0), (-30, -23, 0), (-18, -19, 0)], [1.8, 1.75, 1.65, 1.55], None),
}
ANTERIOR_TREE = (
    "ica",
    "m1",
    "m2_superior",
    "m2_inferior",
    "m3_frontal",
    "m3_parietal",
    "m3_temporal",
    "m3_angular",
    "a1",
    "a2",
    "pcom",
)


def build_tree() -> dict[tuple[str, int], Vessel]:
    tree: dict[tuple[str, int], Vessel] = {}
    for side in (1, -1):
        for name, (points, radii, parent) in _SIDE_VESSELS.items():
            pts = np.asarray(points, dtype=float)
            pts[:, 2] *= side
            tree[(name, side)] = Vessel(name, side, pts, np.asarray(radii, dtype=float), parent)
    for name, (points, radii, parent) in _MIDLINE_VESSELS.items():
        tree[(name, 0)] = Vessel(name, 0, np.asarray(points, dtype=float), np.asarray(radii, dtype=float), parent)
    return tree


def arclength(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def resample(vessel: Vessel, step: float = 3.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every ``step`` mm along the centreline, with radii and arclength."""
    s = arclength(vessel.points)
    t = np.linspace(0.0, s[-1], max(2, int(np.ceil(s[-1] / step)) + 1))
    pts = np.stack([np.interp(t, s, vessel.points[:, i]) for i in range(3)], axis=1)
    return pts, np.interp(t, s, vessel.radii), t


_RUN = 3  # cones per painted box


def paint_tube(
    canvas: Canvas, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, value: float, *, lesion: bool = False
) -> int:
    """A truncated cone between two centreline points, with a partial-volume edge."""
    return paint_polyline(canvas, np.stack([p0, p1]), np.array([r0, r1]), np.array([value]), lesion=lesion)


def paint_polyline(
    canvas: Canvas,
    points: np.ndarray,
    radii: np.ndarray,
    values: np.ndarray,
    *,
    lesion: bool = False,
    solid: bool = False,
) -> int:
    """Consecutive truncated cones (``values[i]`` between points i and i + 1) in one pass over their bounding box:
    each voxel takes the value of the cone it lies deepest in. Long lines go in short runs to keep the boxes small."""
    if len(points) > _RUN + 1:
        return sum(
            paint_polyline(
                canvas,
                points[i : i + _RUN + 1],
                radii[i : i + _RUN + 1],
                values[i : i + _RUN],
                lesion=lesion,
                solid=solid,
            )
            for i in range(0, len(points) - 1, _RUN)
        )
    reach = float(radii.max()) + 2.0
    lo, hi = points.min(axis=0) - reach, points.max(axis=0) + reach

    def painter(region: Region) -> tuple[np.ndarray, np.ndarray]:
        best = np.full(region.coords.shape[1:], -1e9, dtype=np.float32)
        value = np.zeros_like(best)
        for i in range(len(points) - 1):
            depth = _cone_depth(region.coords, points[i], points[i + 1], radii[i], radii[i + 1])
            better = depth > best
            best = np.where(better, depth, best)
            value = np.where(better, np.float32(values[i]), value)
        return edge(best, region.voxel_mm), value

    return canvas.paint(lo, hi, painter, lesion=lesion, solid=solid)


def _cone_depth(coords: np.ndarray, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """How far (mm) each voxel lies inside the cone; negative outside."""
    axis = (p1 - p0).astype(np.float32)
    length2 = float(axis @ axis) + 1e-6
    rel = coords - p0.astype(np.float32)[:, None, None, None]
    t = np.clip((rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]) / length2, 0.0, 1.0)
    d2 = (rel[0] - t * axis[0]) ** 2 + (rel[1] - t * axis[1]) ** 2 + (rel[2] - t * axis[2]) ** 2
    return r0 + (r1 - r0) * t - np.sqrt(d2)


def paint_sinuses(canvas: Canvas, value: float) -> None:
    """Superior sagittal and transverse sinuses: triangles under the inner table in the midline and along the
    tentorium, found from the distance channel so they fit either anatomy."""

    def sagittal(region: Region) -> tuple[np.ndarray, float]:
        depth = region.channel(DIST_IN)
        z, y, x = region.coords
        width = 4.0 - 0.5 * np.clip(depth, 0, 6)
        upper = edge(z + 0.4 * (y + 40) - 10.0, 3.0)
        return edge(width - np.abs(x), region.voxel_mm) * edge(6.0 - depth, 1.5) * edge(depth + 0.5, 1.0) * upper, value

    def transverse(region: Region) -> tuple[np.ndarray, float]:
        depth = region.channel(DIST_IN)
        z, y, _ = region.coords
        band = edge(4.0 - np.abs(z + 22 - 0.2 * (y + 70)), region.voxel_mm) * edge(-50.0 - y, 5.0)
        return band * edge(5.0 - depth, 1.5) * edge(depth + 0.5, 1.0), value

    canvas.paint(np.array([-20.0, -125.0, -10.0]), np.array([100.0, 80.0, 10.0]), sagittal)
    canvas.paint(np.array([-45.0, -125.0, -75.0]), np.array([-5.0, -40.0, 75.0]), transverse)

"""Things on a non-contrast head CT that look like blood to a naive model but are not: calcifications, a dense falx,
beam hardening and old (hypodense) collections."""

from __future__ import annotations

import numpy as np

from inference.phantoms.anatomy import DIST_IN, VENT
from inference.phantoms.hemorrhage import paint_extra_axial, span
from inference.phantoms.scene import Canvas, Region, direction, edge, smooth_wobble

HARD_NEGATIVES = (
    "choroid_calcification",
    "pineal_calcification",
    "basal_ganglia_calcification",
    "dense_falx",
    "beam_hardening",
    "chronic_collection",
)


def paint_blob(canvas: Canvas, rng: np.random.Generator, center: np.ndarray, radius: float, value: float) -> None:
    seed = int(rng.integers(1 << 31))

    def painter(region: Region) -> tuple[np.ndarray, float]:
        rel = region.coords - center[:, None, None, None].astype(np.float32)
        r = np.sqrt(np.sum(rel**2, axis=0))
        r = r + 0.25 * radius * smooth_wobble(np.random.default_rng(seed), region.coords, center, 3.0 * radius)
        return edge(radius - r, region.voxel_mm), value

    canvas.paint(center - radius * 2 - 2, center + radius * 2 + 2, painter)


def choroid_calcification(canvas: Canvas, rng: np.random.Generator, strength: float) -> None:
    sides = [-1, 1] if rng.random() < 0.8 else [int(rng.choice([-1, 1]))]
    for side in sides:
        center = canvas.head.landmark("atrium", side) + rng.normal(0, 1.5, size=3)
        paint_blob(canvas, rng, center, span(strength, 1.5, 4.5), rng.uniform(110.0, 420.0))


def pineal_calcification(canvas: Canvas, rng: np.random.Generator, strength: float) -> None:
    center = canvas.head.landmark("pineal") + rng.normal(0, 1.0, size=3)
    paint_blob(canvas, rng, center, span(strength, 1.5, 4.5), rng.uniform(110.0, 380.0))


def basal_ganglia_calcification(canvas: Canvas, rng: np.random.Generator, strength: float) -> None:
    value = rng.uniform(90.0, 260.0)
    for side in (-1, 1):
        center = canvas.head.landmark("globus_pallidus", side) + rng.normal(0, 1.0, size=3)
        paint_blob(canvas, rng, center, span(strength, 1.5, 5.0), value)


def dense_falx(canvas: Canvas, rng: np.random.Generator, strength: float) -> None:
    """The falx cerebri, thin and dense, in the midline above the corpus callosum."""
    half = span(strength, 0.5, 1.3)
    value = rng.uniform(60.0, 110.0)
    floor = rng.uniform(10.0, 25.0)

    def painter(region: Region) -> tuple[np.ndarray, float]:
        x, z = region.coords[2], region.coords[0]
        sheet = edge(half - np.abs(x), region.voxel_mm) * edge(z - floor, 4.0)
        return sheet * edge(region.channel(DIST_IN) - 1.5, 1.0), value

    canvas.paint(np.array([floor - 5, -120.0, -8.0]), np.array([100.0, 90.0, 8.0]), painter)


def chronic_collection(canvas: Canvas, rng: np.random.Generator, strength: float) -> None:
    """A chronic subdural collection or hygroma: the shape of an SDH at CSF-like density."""
    side = int(rng.choice([-1, 1]))
    axis = direction(rng.uniform(0, 45), rng.uniform(30, 150), side)
    paint_extra_axial(
        canvas,
        rng,
        side=side,
        axis=axis,
        thickness=span(strength, 3.0, 16.0),
        half_angle=np.deg2rad(rng.uniform(35, 70)),
        power=4,
        value=rng.uniform(0.0, 22.0),
        lesion=False,
    )


def beam_hardening(volume: np.ndarray, canvas: Canvas, rng: np.random.Generator, strength: float) -> None:
    """Dark bands and streaks between the petrous bones in the posterior fossa slices (added after sampling)."""
    grid = canvas.grid
    points = [canvas.head.landmark("petrous", s) for s in (-1, 1)]
    idx = [np.linalg.solve(grid.matrix, p - grid.offset) for p in points]
    z_mid = (idx[0][0] + idx[1][0]) / 2.0
    z_half = 22.0 / grid.spacing[0]
    zs = [z for z in range(volume.shape[0]) if abs(z - z_mid) <= z_half]
    if not zs:
        return
    yy, xx = np.mgrid[0 : volume.shape[1], 0 : volume.shape[2]].astype(np.float32)
    (y1, x1), (y2, x2) = idx[0][1:], idx[1][1:]
    length = max(np.hypot(y2 - y1, x2 - x1), 1.0)
    dist_bar = np.abs((x2 - x1) * (yy - y1) - (y2 - y1) * (xx - x1)) / length
    width = rng.uniform(2.0, 5.0) * 2.0 / grid.spacing[2]
    pattern = -span(strength, 8.0, 35.0) * np.exp(-((dist_bar / width) ** 2))
    for _ in range(int(rng.integers(3, 9))):
        y0, x0 = (idx[0] if rng.random() < 0.5 else idx[1])[1:]
        theta = rng.uniform(0, np.pi)
        d = np.abs(np.cos(theta) * (yy - y0) - np.sin(theta) * (xx - x0))
        pattern += rng.choice([-1.0, 0.6]) * span(strength, 6.0, 30.0) * np.exp(-((d / 1.2) ** 2))
    wobble = smooth_wobble(rng, np.stack([np.zeros_like(yy), yy, xx])[:, None], np.zeros(3), 40.0)[0]
    pattern *= 1.0 + 0.3 * wobble
    for z in zs:
        fade = np.float32(1.0 - abs(z - z_mid) / (z_half + 1.0))
        inside = volume[z] > -200.0
        volume[z] += pattern * fade * inside


MIMICS = {
    "choroid_calcification": choroid_calcification,
    "pineal_calcification": pineal_calcification,
    "basal_ganglia_calcification": basal_ganglia_calcification,
    "dense_falx": dense_falx,
    "chronic_collection": chronic_collection,
}
__all__ = ["HARD_NEGATIVES", "MIMICS", "VENT", "beam_hardening"]

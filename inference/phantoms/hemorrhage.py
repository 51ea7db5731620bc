"""Acute intracranial hemorrhage: the five subtypes, each painted with its anatomical rule.

Every painter takes a canvas, a random generator and a size in [0, 1] (0 tiny and subtle, 1 large), paints the blood
with ``lesion=True`` so the mask records it, and returns what it did for the phantom's metadata.
"""

from __future__ import annotations

import numpy as np

from inference.phantoms import anatomy
from inference.phantoms.anatomy import CSF, DIST_IN, VENT
from inference.phantoms.scene import Canvas, Region, angle_from, direction, edge, smooth_wobble

SUBTYPES = ("edh", "sdh", "iph", "sah", "ivh")
_SIDES = {1: "right", -1: "left"}


def span(size: float, low: float, high: float) -> float:
    """Log-uniform interpolation: small sizes stay small for longer."""
    return float(low * (high / low) ** size)


def blood_hu(rng: np.random.Generator) -> float:
    return float(rng.uniform(55.0, 88.0))


def paint_extra_axial(
    canvas: Canvas,
    rng: np.random.Generator,
    *,
    side: int,
    axis: np.ndarray,
    thickness: float,
    half_angle: float,
    power: float,
    value: float,
    lesion: bool,
) -> int:
    """A collection under the inner table, thickest at ``axis``: power 2 gives the EDH lens, 4 the SDH crescent.
    It never crosses the midline (the falx)."""
    center = canvas.head.landmark("head_center")
    lo, hi = _cap_box(center, axis, half_angle)
    wobble_seed = int(rng.integers(1 << 31))

    def painter(region: Region) -> tuple[np.ndarray, float]:
        ang = angle_from(region.coords, center, axis)
        profile = np.clip(1.0 - (ang / half_angle) ** power, 0.0, 1.0) ** (1.0 / power * 2.0)
        local = (
            thickness
            * profile
            * (1.0 + 0.12 * smooth_wobble(np.random.default_rng(wobble_seed), region.coords, center, 40.0))
        )
        dist = region.channel(DIST_IN)
        occupancy = edge(local - dist, region.voxel_mm) * edge(dist + 0.5, region.voxel_mm) * (local > 0.3)
        return occupancy * edge(side * region.coords[2] - 1.0, region.voxel_mm), value

    return canvas.paint(lo, hi, painter, lesion=lesion)


def _cap_box(center: np.ndarray, axis: np.ndarray, half_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the shell 35-105 mm from ``center`` within ``half_angle`` of ``axis`` (the inner table)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    points = [center + axis * r for r in (35.0, 105.0)]
    for angle in np.linspace(0.0, min(half_angle, np.pi), 6):
        for turn in np.linspace(0.0, 2 * np.pi, 16, endpoint=False):
            ray = np.cos(angle) * axis + np.sin(angle) * (np.cos(turn) * u + np.sin(turn) * v)
            points.extend(center + ray * r for r in (35.0, 105.0))
    cloud = np.asarray(points)
    return cloud.min(axis=0) - 2.0, cloud.max(axis=0) + 2.0


def paint_edh(canvas: Canvas, rng: np.random.Generator, size: float) -> dict[str, object]:
    side = int(rng.choice([-1, 1]))
    axis = direction(rng.uniform(-10, 40), rng.uniform(45, 140), side)
    thickness = span(size, 2.5, 24.0)
    half_angle = np.deg2rad(span(size, 9.0, 32.0))
    voxels = paint_extra_axial(
        canvas,
        rng,
        side=side,
        axis=axis,
        thickness=thickness,
        half_angle=half_angle,
        power=2,
        value=blood_hu(rng),
        lesion=True,
    )
    return {"side": _SIDES[side], "voxels": voxels, "thickness_mm": round(thickness, 1)}


def paint_sdh(canvas: Canvas, rng: np.random.Generator, size: float) -> dict[str, object]:
    side = int(rng.choice([-1, 1]))
    axis = direction(rng.uniform(0, 45), rng.uniform(40, 140), side)
    thickness = span(size, 1.8, 18.0)
    half_angle = np.deg2rad(rng.uniform(30, 70))
    voxels = paint_extra_axial(
        canvas,
        rng,
        side=side,
        axis=axis,
        thickness=thickness,
        half_angle=half_angle,
        power=4,
        value=rng.uniform(52.0, 80.0),
        lesion=True,
    )
    return {"side": _SIDES[side], "voxels": voxels, "thickness_mm": round(thickness, 1)}


_IPH_SITES = (
    ("basal_ganglia", 0.33),
    ("thalamus", 0.15),
    ("frontal", 0.08),
    ("parietal", 0.08),
    ("temporal", 0.08),
    ("occipital", 0.07),
    ("cerebellum", 0.12),
    ("pons", 0.09),
)


def paint_iph(canvas: Canvas, rng: np.random.Generator, size: float) -> dict[str, object]:
    names, weights = zip(*_IPH_SITES, strict=True)
    site = str(rng.choice(names, p=np.asarray(weights) / sum(weights)))
    side = int(rng.choice([-1, 1]))
    radius = span(size, 2.2, 24.0) * (0.55 if site == "pons" else 1.0)
    jitter = rng.normal(0, 3.0 if site in ("basal_ganglia", "thalamus", "pons") else 6.0, size=3)
    center = canvas.head.landmark(site, side) + jitter
    if site == "pons":
        center[2] = rng.normal(0, 2.0)
    rim = radius * rng.uniform(0.15, 0.5) + 1.5
    seed = int(rng.integers(1 << 31))
    value = blood_hu(rng)

    def shape(region: Region) -> np.ndarray:
        rel = region.coords - center[:, None, None, None].astype(np.float32)
        r = np.sqrt(np.sum(rel**2, axis=0)) / radius
        return r + 0.22 * smooth_wobble(np.random.default_rng(seed), region.coords, center, 2.2 * radius)

    def in_brain(region: Region) -> np.ndarray:
        return edge(region.channel(DIST_IN) - 3.0, 2.0) * (1.0 - region.channel(VENT))

    def oedema(region: Region) -> tuple[np.ndarray, float]:
        f = shape(region)
        return edge((1.0 + rim / radius - f) * radius, 2.0) * edge((f - 0.9) * radius, 2.0) * in_brain(region), -9.0

    def blood(region: Region) -> tuple[np.ndarray, float]:
        return edge((1.0 - shape(region)) * radius, region.voxel_mm) * in_brain(region), value

    reach = radius * 1.6 + rim + 4.0
    canvas.paint(center - reach, center + reach, oedema, add=True)
    voxels = canvas.paint(center - reach, center + reach, blood, lesion=True)
    midline = site == "pons"
    return {"side": None if midline else _SIDES[side], "site": site, "voxels": voxels, "radius_mm": round(radius, 1)}


def paint_sah(canvas: Canvas, rng: np.random.Generator, size: float) -> dict[str, object]:
    pattern = str(rng.choice(["basal", "sylvian", "convexity", "interhemispheric"], p=[0.3, 0.3, 0.25, 0.15]))
    side = int(rng.choice([-1, 1]))
    head = canvas.head
    reach = span(size, 9.0, 45.0)
    if pattern == "basal":
        center = head.landmark("suprasellar") + rng.normal(0, 3, size=3)
    elif pattern == "sylvian":
        center = head.landmark("sylvian", side) + rng.normal(0, 4, size=3)
    elif pattern == "convexity":
        axis = direction(rng.uniform(10, 60), rng.uniform(30, 150), side)
        center = head.landmark("head_center") + axis * 62.0
    else:
        center = np.array([rng.uniform(20, 55), rng.uniform(-50, 30), 0.0])
    density = rng.uniform(0.9, 2.2)
    value = rng.uniform(50.0, 78.0)

    def blood(region: Region) -> tuple[np.ndarray, float]:
        rel = region.coords - center[:, None, None, None].astype(np.float32)
        patch = np.exp(-np.sum(rel**2, axis=0) / reach**2)
        csf = np.clip((region.channel(CSF) - 0.12) * density * 2.0, 0.0, 1.0)
        spaces = csf * (1.0 - np.clip(region.channel(VENT) * 2.0, 0, 1)) * edge(region.channel(DIST_IN) + 0.5, 1.0)
        return np.clip(patch * 1.6, 0, 1) * spaces, value

    lo, hi = center - 2.2 * reach, center + 2.2 * reach
    voxels = canvas.paint(lo, hi, blood, lesion=True)
    midline = pattern in ("basal", "interhemispheric")
    return {"side": None if midline else _SIDES[side], "pattern": pattern, "voxels": voxels, "extent_mm": round(reach)}


def paint_ivh(canvas: Canvas, rng: np.random.Generator, size: float) -> dict[str, object]:
    """Blood settles in the dependent (posterior, the patient lies supine) part of the ventricles, under a level that is
    horizontal in the scanner frame whatever the head pose."""
    bilateral = rng.random() < 0.5
    side = int(rng.choice([-1, 1]))
    depth = span(size, 1.5, 22.0)
    value = blood_hu(rng)
    atrium = canvas.head.landmark("atrium", side)
    lo = np.array([-25.0, -75.0, -40.0]) if bilateral else atrium - np.array([35.0, 40.0, 22.0])
    hi = np.array([40.0, 30.0, 40.0]) if bilateral else atrium + np.array([30.0, 60.0, 22.0])

    def blood(region: Region) -> tuple[np.ndarray, float]:
        vent = region.channel(VENT)
        keep = vent > 0.5 if bilateral else (vent > 0.5) & (side * region.coords[2] > 1.0)
        posterior = np.broadcast_to(region.patient(1), vent.shape)
        if not keep.any():
            return np.zeros_like(vent), value
        level = posterior[keep].max() - depth
        chosen = vent if bilateral else vent * edge(side * region.coords[2] - 1.0, 2.0)
        return chosen * edge(posterior - level, region.voxel_mm), value

    voxels = canvas.paint(lo, hi, blood, lesion=True, whole=True)
    return {"side": None if bilateral else _SIDES[side], "voxels": voxels, "depth_mm": round(depth, 1)}


PAINTERS = {"edh": paint_edh, "sdh": paint_sdh, "iph": paint_iph, "sah": paint_sah, "ivh": paint_ivh}
__all__ = ["PAINTERS", "SUBTYPES", "anatomy"]

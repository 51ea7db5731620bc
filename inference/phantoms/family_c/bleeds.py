"""Family C's hemorrhages and their mimics, built from set operations on the head's fields: an epidural lens is the
cavity cut by a ball outside the skull, a subdural crescent the cavity outside an off-centre ball, a parenchymal
bleed a cluster of balls with a blurred oedema halo, subarachnoid blood the CSF of a region, and intraventricular
blood the ventricles below a level that is horizontal in the scanner."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from inference.phantoms.family_c.head import Head
from inference.phantoms.family_c.space import smoothstep

SUBTYPES = ("edh", "sdh", "iph", "sah", "ivh")
MIMICS = ("calcification", "dense_falx", "dense_sinus", "chronic_collection", "streaks")
Paint = tuple[np.ndarray, float, dict[str, object]]


def _side_name(side: int) -> str:
    return "left" if side > 0 else "right"  # world x grows towards the patient's left


def _table_point(head: Head, u: np.ndarray) -> np.ndarray | None:
    """The inner-table voxel (world mm) whose direction from the centre is closest to ``u``."""
    shell = (head.depth > -0.5) & (head.depth < 1.5)
    pts = head.world[:, shell]
    if pts.shape[1] == 0:
        return None
    cos = (u @ pts) / (np.linalg.norm(pts, axis=0) + 1e-3)
    best = int(np.argmax(cos))
    return pts[:, best] if cos[best] > 0.97 else None


def _lateral_direction(rng: np.random.Generator, side: int, elevation: tuple[float, float]) -> np.ndarray:
    e = np.deg2rad(rng.uniform(*elevation))
    a = np.deg2rad(rng.uniform(-60.0, 70.0))  # 0: straight lateral; negative: frontal, positive: parietal-occipital
    return np.array([np.sin(e), np.cos(e) * np.sin(a), side * np.cos(e) * np.cos(a)])


def edh(rng: np.random.Generator, head: Head, size: float) -> Paint | None:
    side = int(rng.choice([-1, 1]))
    point = _table_point(head, _lateral_direction(rng, side, (-10.0, 45.0)))
    if point is None:
        return None
    depth = 3.0 + 22.0 * size
    radius = rng.uniform(25.0, 60.0)
    centre = point + point / np.linalg.norm(point) * (radius - depth)
    ball = radius - np.sqrt(np.sum((head.world - centre[:, None, None, None]) ** 2, axis=0))
    occ = smoothstep(ball, _voxel(head)) * smoothstep(head.depth, _voxel(head))
    return occ, rng.uniform(55.0, 85.0), {"side": _side_name(side), "thickness_mm": round(depth, 1)}


def sdh(rng: np.random.Generator, head: Head, size: float, value: float | None = None) -> Paint | None:
    side = int(rng.choice([-1, 1]))
    u = _lateral_direction(rng, side, (0.0, 50.0))
    point = _table_point(head, u)
    if point is None:
        return None
    gap = 2.0 + 17.0 * size
    offset = rng.uniform(0.6, 1.5) * gap + 4.0
    reach = np.linalg.norm(point)
    centre = -u * offset
    outside = np.sqrt(np.sum((head.world - centre[:, None, None, None]) ** 2, axis=0)) - (reach + offset - gap)
    voxel = _voxel(head)
    occ = smoothstep(outside, voxel) * smoothstep(head.depth, voxel) * smoothstep(side * head.world[2] - 1.5, voxel)
    occ *= smoothstep(head.world[0] + 40.0, 8.0)  # above the tentorium
    hu = value if value is not None else rng.uniform(50.0, 80.0)
    return occ, hu, {"side": _side_name(side), "thickness_mm": round(gap, 1)}


_IPH_SITES = ("lentiform", "thalamus", "lobar", "cerebellum", "pons")


def iph(rng: np.random.Generator, head: Head, size: float) -> Paint | None:
    site = str(rng.choice(_IPH_SITES, p=[0.35, 0.2, 0.25, 0.12, 0.08]))
    side = int(rng.choice([-1, 1]))
    if site == "lobar":
        centre = _table_point(head, _lateral_direction(rng, side, (10.0, 60.0)))
        if centre is None:
            return None
        centre = centre * (1.0 - rng.uniform(18.0, 32.0) / np.linalg.norm(centre))
    else:
        key = "pons" if site == "pons" else f"{site}_{side}"
        centre = head.landmarks[key] + rng.normal(0.0, 2.5, 3)
    radius = (3.0 + 19.0 * size) * (0.6 if site == "pons" else 1.0)
    voxel = _voxel(head)
    occ = np.zeros(head.depth.shape, dtype=np.float32)
    for _ in range(int(rng.integers(3, 8))):
        c = centre + rng.normal(0.0, 0.35 * radius, 3)
        r = radius * rng.uniform(0.45, 0.8)
        dist = np.sqrt(np.sum((head.world - c[:, None, None, None]) ** 2, axis=0))
        np.maximum(occ, smoothstep(r - dist, voxel), out=occ)
    occ *= smoothstep(head.depth - 1.0, voxel)
    halo = np.clip(ndi.gaussian_filter(occ, rng.uniform(1.5, 4.0) / voxel) * 2.5, 0, 1) - occ
    head.hu -= np.clip(halo, 0, 1) * np.float32(rng.uniform(5.0, 12.0)) * (head.depth > 0)
    return occ, rng.uniform(55.0, 88.0), {"side": _side_name(side), "site": site}


def sah(rng: np.random.Generator, head: Head, size: float) -> Paint | None:
    region = str(rng.choice(["sylvian", "basal", "convexity", "interhemispheric"], p=[0.35, 0.3, 0.2, 0.15]))
    side = int(rng.choice([-1, 1]))
    centre = {
        "sylvian": np.array([-6.0, -14.0, side * (head.axes[2] - 22.0)]),
        "basal": np.array([-18.0, 2.0, 0.0]),
        "interhemispheric": np.array([rng.uniform(0.0, 40.0), rng.uniform(-50.0, 20.0), 0.0]),
        "convexity": None,
    }[region]
    if centre is None:
        centre = _table_point(head, _lateral_direction(rng, side, (20.0, 60.0)))
        if centre is None:
            return None
    reach = 14.0 + 36.0 * size
    dist = np.sqrt(np.sum((head.world - centre[:, None, None, None]) ** 2, axis=0))
    occ = head.csf * (1.0 - head.ventricles) * smoothstep(reach - dist, 8.0) * rng.uniform(0.75, 1.0)
    return occ, rng.uniform(48.0, 75.0), {"side": None if region in ("basal", "interhemispheric") else _side_name(side)}


def ivh(rng: np.random.Generator, head: Head, size: float) -> Paint | None:
    vent = head.ventricles
    if vent.max() < 0.5:
        return None
    y_scanner = np.arange(vent.shape[1], dtype=np.float32)[None, :, None] * np.float32(head.frame.spacing[1])
    y_scanner = np.broadcast_to(y_scanner, vent.shape)
    ys = y_scanner[vent > 0.5]
    level = float(np.quantile(ys, 1.0 - (0.08 + 0.5 * size)))
    occ = vent * smoothstep(y_scanner - level, _voxel(head))
    return occ, rng.uniform(50.0, 85.0), {"side": None, "level_mm": round(level, 1)}


PAINTERS: dict[str, Callable[..., Paint | None]] = {"edh": edh, "sdh": sdh, "iph": iph, "sah": sah, "ivh": ivh}


def _voxel(head: Head) -> float:
    return float(min(head.frame.spacing))


def _ball(head: Head, centre: np.ndarray, radius: float) -> np.ndarray:
    dist = np.sqrt(np.sum((head.world - centre[:, None, None, None]) ** 2, axis=0))
    return smoothstep(radius - dist, _voxel(head))


def calcifications(rng: np.random.Generator, head: Head, strength: float) -> list[str]:
    """Pineal, choroid plexus and basal ganglia calcification (over 100 HU); ``strength`` raises size and odds."""
    found = []
    spots = (
        ("pineal", [np.array([-2.0, 30.0, 0.0])], 0.35),
        ("choroid", [head.landmarks["atrium_1"], head.landmarks["atrium_-1"]], 0.3),
        ("basal_ganglia", [head.landmarks["lentiform_1"], head.landmarks["lentiform_-1"]], 0.08),
    )
    for name, centres, odds in spots:
        if rng.random() < odds + strength * 0.5:
            for c in centres:
                occ = _ball(head, c + rng.normal(0, 1.5, 3), rng.uniform(1.2, 2.0 + 3.0 * strength))
                head.hu += occ * (rng.uniform(110.0, 450.0) - head.hu)
            found.append(name)
    return found


def dense_falx(rng: np.random.Generator, head: Head) -> None:
    w = head.world
    occ = smoothstep(rng.uniform(0.8, 1.6) - np.abs(w[2]), _voxel(head)) * smoothstep(w[0] + 5.0, 6.0)
    occ *= smoothstep(head.depth - 1.0, 2.0) * smoothstep(head.depth, 1.0)
    head.hu += occ * (rng.uniform(70.0, 140.0) - head.hu)


def dense_sinus(rng: np.random.Generator, head: Head) -> None:
    band = smoothstep(head.depth + 0.5, 1.0) * smoothstep(5.0 - head.depth, 1.0)
    occ = band * smoothstep(4.0 - np.abs(head.world[2]), _voxel(head)) * smoothstep(head.world[0] + 5.0, 6.0)
    head.hu += occ * (rng.uniform(62.0, 78.0) - head.hu)


def chronic_collection(rng: np.random.Generator, head: Head) -> None:
    painted = sdh(rng, head, rng.uniform(0.3, 1.0), value=rng.uniform(0.0, 22.0))
    if painted is not None:
        occ, value, _ = painted
        head.hu += occ * (value - head.hu)

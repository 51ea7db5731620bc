"""Family C's head: a superellipsoid skull with a stepped skull base, a folded cortex from the zero set of a random
field, C-shaped lateral ventricles, deep grey nuclei, fissures, cisterns, cerebellar folia and venous sinuses, all
drawn straight onto the grid in world millimetres."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inference.phantoms.family_c.space import Field, Frame, segment_distance, smoothstep


@dataclass
class Head:
    """The clean volume and what lesion painters need: depth under the inner table (mm), CSF and ventricle
    occupancy, and the tissue values drawn for this study."""

    frame: Frame
    world: np.ndarray
    hu: np.ndarray
    depth: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray
    tissue: dict[str, float]
    axes: np.ndarray
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)


def draw_tissue(rng: np.random.Generator) -> dict[str, float]:
    white = rng.uniform(22.0, 30.0)
    return {
        "white": white,
        "grey": white + rng.uniform(7.0, 14.0),
        "csf": rng.uniform(0.0, 12.0),
        "bone": rng.uniform(1300.0, 1900.0),
        "diploe": rng.uniform(450.0, 900.0),
        "scalp": rng.uniform(25.0, 45.0),
        "sinus": rng.uniform(42.0, 62.0),
    }


def build(rng: np.random.Generator, frame: Frame, tissue: dict[str, float]) -> Head:
    w = frame.world()
    voxel = float(min(frame.spacing))
    axes = np.array([rng.uniform(58, 68), rng.uniform(80, 93), rng.uniform(62, 72)])
    depth = _inner_depth(rng, w, axes)
    hu = _skull_and_scalp(rng, w, depth, tissue, voxel)
    head = Head(frame, w, hu, depth, np.zeros_like(depth), np.zeros_like(depth), tissue, axes)
    _brain(rng, head, voxel)
    return head


def _inner_depth(rng: np.random.Generator, w: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Approximate depth (mm) under the inner table: positive inside the cranial cavity."""
    e = rng.uniform(2.0, 2.6)
    bumps = Field(rng, 6, (90.0, 180.0))
    rho = (np.abs(w[0] / axes[0]) ** e + np.abs(w[1] / axes[1]) ** e + np.abs(w[2] / axes[2]) ** e) ** (1 / e)
    rho *= 1.0 + 0.025 * bumps(w)
    vault = (1.0 - rho) * float(axes.mean())
    # Skull base: the anterior fossa sits high, the middle fossa (temporal lobes) lower, the posterior fossa lowest.
    floor = -axes[0] * (0.42 + 0.5 * smoothstep(w[1] + 5.0, 40.0))
    temporal = smoothstep(np.abs(w[2]) - 26.0, 8.0) * smoothstep(18.0 - np.abs(w[1] + 8.0), 10.0)
    floor = floor + (-0.8 * axes[0] - floor) * temporal * (floor > -0.8 * axes[0])
    return np.minimum(vault, w[0] - floor).astype(np.float32)


def _skull_and_scalp(
    rng: np.random.Generator, w: np.ndarray, depth: np.ndarray, tissue: dict[str, float], voxel: float
) -> np.ndarray:
    thick = rng.uniform(4.5, 7.5) + 1.2 * Field(rng, 5, (60.0, 140.0))(w) + 4.0 * (w[0] < -30)
    out = -depth
    frac = np.clip(out / thick, 0.0, 1.0)
    bone = tissue["diploe"] + (tissue["bone"] - tissue["diploe"]) * np.abs(2 * frac - 1) ** 2
    scalp = rng.uniform(4.0, 7.0)
    hu = np.full(depth.shape, -1000.0, dtype=np.float32)
    in_scalp = smoothstep(thick + scalp - out, voxel)
    hu += in_scalp * (tissue["scalp"] + 1000.0)
    fat = smoothstep(1.2 - np.abs(out - thick - scalp * 0.5), voxel)
    hu += fat * (-70.0 - hu) * in_scalp
    in_bone = smoothstep(thick - out, voxel) * smoothstep(out, voxel)
    hu += in_bone * (bone - hu)
    # Below the skull base: soft tissue of the face and neck around a cervical spine.
    low = smoothstep(-(w[0] + 0.75 * 62.0), 6.0) * (depth < 0) * smoothstep(70.0 - np.hypot(w[1], w[2]), 4.0)
    hu += low * (tissue["scalp"] - hu)
    spine = smoothstep(9.0 - np.hypot(w[1] - 22.0, w[2]), voxel) * smoothstep(-(w[0] + 55.0), 4.0)
    hu += spine * (rng.uniform(350.0, 800.0) - hu)
    return hu.astype(np.float32)


def _brain(rng: np.random.Generator, head: Head, voxel: float) -> None:
    w, d, t = head.world, head.depth, head.tissue
    inside = smoothstep(d, voxel)
    brain = np.full(d.shape, t["white"], dtype=np.float32)
    atrophy = rng.beta(2.0, 3.0)
    space = 0.8 + 3.0 * atrophy
    folds = Field(rng, 14, (16.0, 32.0))(w)
    width = 0.07 + 0.1 * atrophy
    ribbon = rng.uniform(2.5, 4.0)
    near_surface = smoothstep(space + ribbon - d, voxel)
    along_sulci = smoothstep(width + 0.12 - np.abs(folds), 0.05) * smoothstep(30.0 - d, 6.0)
    brain += np.maximum(near_surface, along_sulci) * (t["grey"] - t["white"])
    sulci = smoothstep(width - np.abs(folds), 0.04) * smoothstep(20.0 - d, 6.0) + smoothstep(space - d, voxel)
    sulci = np.clip(sulci, 0, 1)
    fissure = smoothstep(1.0 + space * 0.4 - np.abs(w[2]), voxel) * smoothstep(w[0] + 15.0, 6.0)
    sylvian = _sylvian(w, head.axes, space, voxel)
    csf = np.clip(np.maximum.reduce([sulci, fissure, sylvian]), 0, 1)
    _deep_grey(head, brain, t, voxel)
    _posterior_fossa(rng, head, brain, t, voxel)
    vent = _ventricles(rng, head, 0.7 + 1.2 * atrophy, voxel)
    cisterns = _cisterns(w, voxel)
    csf = np.maximum.reduce([csf, vent, cisterns])
    brain += csf * (t["csf"] - brain)
    falx = smoothstep(0.7 - np.abs(w[2]), voxel) * smoothstep(w[0] + 10.0, 6.0) * smoothstep(d - 1.0, 2.0)
    brain += falx * (rng.uniform(38.0, 60.0) - brain)
    head.hu += inside * (brain - head.hu)
    head.csf[...] = csf * inside
    head.ventricles[...] = vent * inside
    _sinuses(head, t["sinus"], voxel)


def _sylvian(w: np.ndarray, axes: np.ndarray, space: float, voxel: float) -> np.ndarray:
    lateral = np.abs(w[2]) - (axes[2] - 24.0)
    tilt = lateral * 0.5 + (w[0] + 8.0) * 0.87
    sheet = smoothstep(1.2 + 0.3 * space - np.abs(tilt), voxel)
    return sheet * smoothstep(lateral + 14.0, 4.0) * smoothstep(16.0 - np.abs(w[1] + 14.0), 6.0)


def _ellipsoid(w: np.ndarray, c: tuple[float, float, float], r: tuple[float, float, float]) -> np.ndarray:
    """Signed distance-like value (mm, positive inside) of an ellipsoid."""
    q = np.sqrt(((w[0] - c[0]) / r[0]) ** 2 + ((w[1] - c[1]) / r[1]) ** 2 + ((w[2] - c[2]) / r[2]) ** 2)
    return (1.0 - q) * float(min(r))


def _deep_grey(head: Head, brain: np.ndarray, t: dict[str, float], voxel: float) -> None:
    w = head.world
    for side in (-1, 1):
        for centre, radii in (((2.0, 6.0, 11.0), (9.0, 13.0, 8.0)), ((0.0, -9.0, 22.0), (10.0, 14.0, 6.0))):
            c = (centre[0], centre[1], side * centre[2])
            brain += smoothstep(_ellipsoid(w, c, radii), voxel) * np.float32(0.8 * (t["grey"] - t["white"]))
        head.landmarks[f"thalamus_{side}"] = np.array([2.0, 6.0, side * 11.0])
        head.landmarks[f"lentiform_{side}"] = np.array([0.0, -9.0, side * 22.0])


def _posterior_fossa(
    rng: np.random.Generator, head: Head, brain: np.ndarray, t: dict[str, float], voxel: float
) -> None:
    w = head.world
    tent = -14.0 - 0.33 * (w[1] - 10.0)
    below = smoothstep(tent - w[0], voxel) * smoothstep(w[1] - 5.0, 6.0)
    r = np.sqrt((w[0] + 42.0) ** 2 + ((w[1] - 50.0) * 0.8) ** 2 + (w[2] * 0.7) ** 2)
    folia = 0.5 + 0.5 * np.cos(r * np.float32(2 * np.pi / rng.uniform(3.0, 4.5)))
    brain += below * (folia * 0.7 * (t["grey"] - t["white"]))
    stem = smoothstep(11.0 - np.hypot(w[1] - 16.0, w[2]), voxel) * smoothstep(-18.0 - w[0], 4.0)
    brain += stem * (t["white"] + 3.0 - brain)
    sheet = smoothstep(0.8 - np.abs(w[0] - tent), voxel) * smoothstep(w[1] - 12.0, 4.0)
    brain += sheet * (rng.uniform(40.0, 58.0) - brain)
    head.landmarks["pons"] = np.array([-32.0, 16.0, 0.0])
    head.landmarks["cerebellum_1"] = np.array([-42.0, 52.0, 24.0])
    head.landmarks["cerebellum_-1"] = np.array([-42.0, 52.0, -24.0])


# Lateral ventricle centreline (z, y, |x|) and radius: frontal horn, body, atrium, occipital horn; temporal horn.
_VENT_MAIN = ([(12, -28, 9), (20, -8, 13), (16, 14, 19), (10, 28, 24), (8, 42, 19)], [4.5, 4.0, 4.0, 6.5, 2.8])
_VENT_TEMPORAL = ([(10, 28, 24), (-2, 20, 30), (-14, 0, 33), (-18, -10, 32)], [5.0, 3.0, 2.2, 1.8])


def _ventricles(rng: np.random.Generator, head: Head, scale: float, voxel: float) -> np.ndarray:
    w = head.world
    occ = np.zeros(w.shape[1:], dtype=np.float32)
    for side in (-1, 1):
        for knots, radii in (_VENT_MAIN, _VENT_TEMPORAL):
            pts = [np.array([z, y, side * x], dtype=float) + rng.normal(0, 1.0, 3) for z, y, x in knots]
            for i in range(len(pts) - 1):
                _capsule(head, occ, pts[i], pts[i + 1], radii[i] * scale, radii[i + 1] * scale, voxel)
    occ = np.maximum(occ, smoothstep(_ellipsoid(w, (0.0, -2.0, 0.0), (10.0, 11.0, 1.5 * scale)), voxel))
    occ = np.maximum(occ, smoothstep(_ellipsoid(w, (-40.0, 34.0, 0.0), (6.0, 4.0, 7.0)), voxel))
    head.landmarks["atrium_1"] = np.array([10.0, 28.0, 24.0])
    head.landmarks["atrium_-1"] = np.array([10.0, 28.0, -24.0])
    return occ


def _capsule(head: Head, occ: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float, voxel: float) -> None:
    reach = max(ra, rb) + 2.0
    box = head.frame.box_around(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
    if box is None:
        return
    dist, t = segment_distance(head.world[(slice(None), *box)], a, b)
    np.maximum(occ[box], smoothstep(ra + (rb - ra) * t - dist, voxel), out=occ[box])


def _cisterns(w: np.ndarray, voxel: float) -> np.ndarray:
    suprasellar = smoothstep(_ellipsoid(w, (-20.0, -2.0, 0.0), (5.0, 9.0, 13.0)), voxel)
    quadrigeminal = smoothstep(_ellipsoid(w, (-4.0, 32.0, 0.0), (5.0, 6.0, 8.0)), voxel)
    ambient = smoothstep(_ellipsoid(w, (-14.0, 14.0, 0.0), (4.0, 14.0, 16.0)), voxel) * smoothstep(
        np.abs(w[2]) - 9.0, 2.0
    )
    return np.maximum.reduce([suprasellar, quadrigeminal, ambient])


def _sinuses(head: Head, value: float, voxel: float) -> None:
    w, d = head.world, head.depth
    band = smoothstep(d + 0.5, voxel) * smoothstep(5.0 - d, voxel)
    sagittal = band * smoothstep(4.0 - np.abs(w[2]), voxel) * smoothstep(w[0] + 0.4 * w[1] + 5.0, 6.0)
    transverse = band * smoothstep(5.0 - np.abs(w[0] + 28.0 - 0.1 * (w[1] - 60.0)), voxel)
    transverse *= smoothstep(w[1] - 0.65 * head.axes[1], 6.0)
    occ = np.maximum(sagittal, transverse)
    head.hu += occ * (value - head.hu)
    head.landmarks["sinus"] = np.array([30.0, 60.0, 0.0])

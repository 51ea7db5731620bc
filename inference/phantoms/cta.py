"""Head CT angiography phantoms for large-vessel occlusion (finding ``lvo``: ICA terminus or M1)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from inference.phantoms import anatomy as heads
from inference.phantoms import randomise, scanner
from inference.phantoms.geometry import Grid
from inference.phantoms.scene import Canvas, draw_pose, resolve_anatomy
from inference.phantoms.types import Phantom
from inference.phantoms.vessels import Vessel, build_tree, paint_polyline, paint_sinuses, paint_tube, resample

_STREAM = 0x17A0
LVO_SUBTYPES = ("ica_t", "m1")
CTA_HARD_NEGATIVES = (
    "hypoplastic_segment",
    "early_bolus",
    "late_bolus",
    "calcified_siphon",
    "stenosis",
    "m2_occlusion",
    "tilt",
)
_HARD_SHARE = 0.5
_SIDES = {1: "right", -1: "left"}
_DISTAL = {
    "ica": ("m1", "m2_superior", "m2_inferior", "m3_frontal", "m3_parietal", "m3_temporal", "m3_angular"),
    "m1": ("m2_superior", "m2_inferior", "m3_frontal", "m3_parietal", "m3_temporal", "m3_angular"),
    "m2_superior": ("m3_frontal", "m3_parietal"),
    "m2_inferior": ("m3_temporal", "m3_angular"),
}


@dataclass
class Plan:
    """Per-vessel contrast: arterial HU, thrombus spans (arclength mm), narrowed spans and distal fill fractions."""

    arterial: float
    venous: float
    thrombus: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    narrowing: dict[tuple[str, int], tuple[float, float, float]] = field(default_factory=dict)
    fill: dict[tuple[str, int], float] = field(default_factory=dict)
    thrombus_hu: float = 50.0
    collateral: float = 1.0


def generate_cta(
    seed: int,
    *,
    positive: bool | None = None,
    subtype: str | None = None,
    shape: tuple[int, int, int] = (64, 128, 128),
    slice_thickness_mm: float | None = None,
    anatomy: str = "auto",
    family: str = "A",
    hard_negative: str | None = None,
    clean: bool = False,
) -> Phantom:
    """One head CTA. ``subtype`` forces a positive of that kind, ``hard_negative`` a negative built around that mimic;
    ``clean`` skips blur and noise."""
    started = time.perf_counter()
    rng = np.random.default_rng([seed, _STREAM])
    family = scanner.check_family(family)
    positive, subtype, hard_negative = _decide(rng, positive, subtype, hard_negative)
    kind = resolve_anatomy(anatomy)
    scan = scanner.draw_scanner(
        rng,
        kind="cta",
        family=family,
        shape=shape,
        slice_thickness_mm=slice_thickness_mm,
        coverage_mm=(80.0, 170.0) if family in scanner.RANDOMISED else (110.0, 150.0),
    )
    pose = draw_pose(rng, family=family, tilt=3.0 if hard_negative == "tilt" else 1.0)
    head = heads.head_model(kind, heads.resolution_for(scan.spacing_mm))
    grid = Grid.posed(
        shape,
        scan.spacing_mm,
        head_center=np.array([0.0, -15.0, 0.0]),
        rotation=pose.rotation,
        scale=pose.scale,
        shift_mm=pose.shift_mm,
    )
    volume = heads.sample(head, grid, grid.full(), (heads.HU,))[0]
    volume[(volume > -15.0) & (volume < 60.0)] += np.float32(rng.uniform(2.0, 6.0))  # parenchymal enhancement
    canvas = Canvas(head, grid, volume, np.zeros(shape, dtype=bool))
    tree = build_tree()
    wide = family in scanner.RANDOMISED
    _warp_tree(tree, rng, wide=wide)
    variants = _apply_variants(tree, rng)
    plan = _plan(rng, tree, positive, subtype, hard_negative, wide=wide)
    paint_sinuses(canvas, plan.venous)
    _paint_arteries(canvas, tree, plan, lesion=positive)
    if hard_negative == "calcified_siphon" or rng.random() < 0.1:
        _paint_siphon_calcium(canvas, tree, rng)
    volume = canvas.volume
    acquisition: dict[str, object] = {}
    if not clean and wide:
        volume, acquisition = randomise.acquire(
            volume, rng, spacing=scan.spacing_mm, thickness=scan.slice_thickness_mm, kind="cta", keep=canvas.mask
        )
    elif not clean:
        volume = scanner.blur(volume, scan)
        scanner.add_noise(volume, scan, rng)
    np.clip(volume, -1024.0, 3071.0, out=volume)
    occluded = [f"{name}_{_SIDES.get(side, 'midline')}" for name, side in plan.thrombus]
    side = _SIDES[next(iter(plan.thrombus))[1]] if positive else None
    meta = {
        "seed": seed,
        "kind": "cta",
        "family": family,
        "anatomy": kind,
        "variants": variants,
        "arterial_hu": round(plan.arterial, 1),
        "venous_hu": round(plan.venous, 1),
        "occluded": occluded,
        "collateral_fill": round(plan.collateral, 3) if plan.thrombus else None,
        "scanner": scan.as_meta(),
        "pose": pose.as_meta(),
        "acquisition": acquisition,
        "to_canonical": canvas.grid.as_meta(),
        "key_slice": int(np.argmax(canvas.mask.sum(axis=(1, 2)))) if canvas.mask.any() else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Phantom(
        volume_hu=volume,
        spacing_mm=cast(tuple[float, float, float], tuple(float(s) for s in scan.spacing_mm)),
        finding="lvo",
        positive=positive,
        subtype=subtype,
        side=side,
        mask=canvas.mask,
        hard_negative=hard_negative,
        meta=meta,
    )


def _decide(
    rng: np.random.Generator, positive: bool | None, subtype: str | None, hard_negative: str | None
) -> tuple[bool, str | None, str | None]:
    if subtype is not None and subtype not in LVO_SUBTYPES:
        raise ValueError(f'LVO subtype "{subtype}" is not known; use one of {", ".join(LVO_SUBTYPES)}')
    if hard_negative is not None and hard_negative not in CTA_HARD_NEGATIVES:
        raise ValueError(f'Hard negative "{hard_negative}" is not known; use one of {", ".join(CTA_HARD_NEGATIVES)}')
    if positive is None:
        positive = subtype is not None or (hard_negative is None and bool(rng.random() < 0.5))
    if positive and hard_negative is not None:
        raise ValueError("A hard negative cannot be positive")
    if not positive and subtype is not None:
        raise ValueError("A negative phantom has no occlusion subtype")
    if positive:
        return True, subtype or str(rng.choice(LVO_SUBTYPES, p=[0.35, 0.65])), None
    if hard_negative is None and rng.random() < _HARD_SHARE:
        hard_negative = str(rng.choice(CTA_HARD_NEGATIVES))
    return False, None, hard_negative


def _warp_tree(tree: dict[tuple[str, int], Vessel], rng: np.random.Generator, *, wide: bool = False) -> None:
    """A smooth random displacement (a few mm) of every centreline, so branches that share a point still meet.
    ``wide`` (family R): more tortuous and a calibre drawn per vessel and per study (0.6-1.45 of the usual)."""
    waves = rng.normal(size=(3, 3)) * (2 * np.pi / (rng.uniform(35.0, 90.0) if wide else 70.0))
    phases = rng.uniform(0, 2 * np.pi, size=3)
    amps = rng.normal(0, 3.5 if wide else 1.8, size=(3, 3))
    scale = (
        rng.uniform(0.75, 1.25, size=len(tree)) * rng.uniform(0.8, 1.15)
        if wide
        else rng.uniform(0.9, 1.1, size=len(tree))
    )
    for factor, vessel in zip(scale, tree.values(), strict=True):
        shift = sum(np.sin(vessel.points @ w + p)[:, None] * a for w, p, a in zip(waves, phases, amps, strict=True))
        vessel.points = vessel.points + shift
        vessel.radii = vessel.radii * factor


def _apply_variants(tree: dict[tuple[str, int], Vessel], rng: np.random.Generator) -> list[str]:
    """Common circle of Willis variants; only about one person in five has a complete, symmetric circle."""
    found = []
    if rng.random() < 0.10:
        side = int(rng.choice([-1, 1]))
        tree[("a1", side)].radii *= 0.45
        found.append(f"a1_hypoplasia_{_SIDES[side]}")
    for side in (1, -1):
        roll = rng.random()
        if roll < 0.2:
            tree[("pcom", side)].radii[:] = 1.2
            tree[("p1", side)].radii *= 0.45
            found.append(f"fetal_pca_{_SIDES[side]}")
        elif roll < 0.5:
            del tree[("pcom", side)]
            found.append(f"absent_pcom_{_SIDES[side]}")
    if rng.random() < 0.05:
        found.append("absent_acom")
    return found


def _plan(
    rng: np.random.Generator,
    tree: dict[tuple[str, int], Vessel],
    positive: bool,
    subtype: str | None,
    hard_negative: str | None,
    *,
    wide: bool = False,
) -> Plan:
    """``wide`` (family R): arterial 180-600 HU, thrombus 25-85 HU, occlusions 4-28 mm, collaterals up to 80 %."""
    if hard_negative == "early_bolus":
        plan = Plan(arterial=rng.uniform(150.0, 230.0), venous=rng.uniform(40.0, 75.0))
    elif hard_negative == "late_bolus":
        plan = Plan(arterial=rng.uniform(170.0, 260.0), venous=rng.uniform(220.0, 330.0))
    elif wide:
        plan = Plan(arterial=rng.uniform(180.0, 600.0), venous=rng.uniform(60.0, 300.0))
    else:
        plan = Plan(arterial=rng.uniform(250.0, 450.0), venous=rng.uniform(120.0, 250.0))
    plan.thrombus_hu = float(rng.uniform(25.0, 85.0) if wide else rng.uniform(40.0, 60.0))
    side = int(rng.choice([-1, 1]))
    fill = float(rng.uniform(0.0, 0.8 if wide else 0.7))
    plan.collateral = fill
    length = float(rng.uniform(4.0, 28.0) if wide else rng.uniform(5.0, 20.0))
    if positive and subtype == "ica_t":
        ica_len = _length(tree[("ica", side)])
        into_ica = length * rng.uniform(0.3, 0.7)
        plan.thrombus[("ica", side)] = (ica_len - into_ica, ica_len + 1.0)
        plan.thrombus[("m1", side)] = (0.0, length - into_ica)
        plan.fill.update({(name, side): fill for name in _DISTAL["ica"]})
        plan.fill[("ica_proximal", side)] = float(rng.uniform(0.5, 0.95))
        if rng.random() < 0.5:
            plan.thrombus[("a1", side)] = (0.0, float(rng.uniform(2.0, 6.0)))
    elif positive:
        start = float(rng.uniform(0.0, 0.5)) * _length(tree[("m1", side)])
        plan.thrombus[("m1", side)] = (start, start + length)
        plan.fill.update({(name, side): fill for name in _DISTAL["m1"]})
    elif hard_negative == "m2_occlusion":
        branch = str(rng.choice(["m2_superior", "m2_inferior"]))
        start = float(rng.uniform(0.0, 6.0))
        plan.thrombus[(branch, side)] = (start, start + float(rng.uniform(5.0, 15.0)))
        plan.fill.update({(name, side): fill for name in _DISTAL[branch]})
    elif hard_negative == "stenosis":
        name = str(rng.choice(["m1", "ica"]))
        vessel_len = _length(tree[(name, side)])
        start = float(rng.uniform(0.1, 0.7)) * vessel_len if name == "m1" else vessel_len - rng.uniform(6.0, 20.0)
        plan.narrowing[(name, side)] = (start, start + float(rng.uniform(3.0, 6.0)), float(rng.uniform(0.25, 0.5)))
    elif hard_negative == "hypoplastic_segment":
        name = str(rng.choice(["a1", "p1", "vertebral", "m2_inferior"]))
        if (name, side) in tree:
            tree[(name, side)].radii *= rng.uniform(0.3, 0.5)
    return plan


def _length(vessel: Vessel) -> float:
    return float(np.sum(np.linalg.norm(np.diff(vessel.points, axis=0), axis=1)))


def _paint_arteries(canvas: Canvas, tree: dict[tuple[str, int], Vessel], plan: Plan, *, lesion: bool) -> None:
    """Patent lumen first, thrombus last so the clot is not painted over where branches meet."""
    clots: list[tuple[np.ndarray, np.ndarray]] = []
    for key, vessel in tree.items():
        pts, radii, s = resample(vessel)
        mids = 0.5 * (s[:-1] + s[1:])
        span = plan.thrombus.get(key)
        narrow = plan.narrowing.get(key)
        if narrow is not None:
            radii = radii * np.where((s >= narrow[0]) & (s <= narrow[1]), narrow[2], 1.0)
        base = plan.arterial * (0.92 if vessel.name.startswith(("m2", "m3", "a2", "p2")) else 1.0)
        values = np.array([max(base * _fill_factor(plan, key, m, span), 40.0) for m in mids])
        clot = np.zeros(len(mids), dtype=bool) if span is None else (mids >= span[0]) & (mids <= span[1])
        for run in _runs(~clot):
            paint_polyline(canvas, pts[run[0] : run[1] + 1], radii[run[0] : run[1] + 1], values[run[0] : run[1]])
        clots.extend((pts[a : b + 1], radii[a : b + 1]) for a, b in _runs(clot))
    if ("a1", 1) in tree and ("a1", -1) in tree:
        paint_tube(canvas, tree[("a1", 1)].points[-1], tree[("a1", -1)].points[-1], 0.7, 0.7, plan.arterial)
    for pts, radii in clots:
        paint_polyline(canvas, pts, radii, np.full(len(pts) - 1, plan.thrombus_hu), lesion=lesion, solid=True)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True pieces."""
    padded = np.concatenate([[False], flags, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(int)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _fill_factor(plan: Plan, key: tuple[str, int], mid: float, span: tuple[float, float] | None) -> float:
    name, side = key
    if span is not None and mid > span[1]:
        return plan.fill.get(key, min(plan.fill.values(), default=1.0))
    if span is not None and name == "ica" and mid < span[0]:
        return plan.fill.get(("ica_proximal", side), 1.0)
    return plan.fill.get(key, 1.0)


def _paint_siphon_calcium(canvas: Canvas, tree: dict[tuple[str, int], Vessel], rng: np.random.Generator) -> None:
    """Calcified plaques on the wall of the cavernous ICA (the siphon), often both sides."""
    for side in (1, -1) if rng.random() < 0.7 else (int(rng.choice([-1, 1])),):
        pts, radii, _ = resample(tree[("ica", side)], step=1.5)
        siphon = np.flatnonzero((pts[:, 0] > -32) & (pts[:, 0] < -14))
        for i in rng.choice(siphon, size=min(len(siphon), int(rng.integers(1, 4))), replace=False):
            offset = rng.normal(size=3)
            offset /= np.linalg.norm(offset)
            center = pts[i] + offset * radii[i]
            r = float(rng.uniform(0.7, 1.6))
            paint_tube(canvas, center, center + offset * 0.5, r, r, float(rng.uniform(500.0, 1200.0)))

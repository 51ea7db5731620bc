"""Generator family C: head CT phantoms written separately from families A and B, for evaluation only.

Its own anatomy (a superellipsoid skull, a cortex folded along the zero set of a random field, C-shaped ventricles),
its own lesions (set operations on the head's fields), its own arteries (a randomly branching middle cerebral tree)
and its own scanner (frequency-domain kernel and noise, box slice profile, int16 storage). It shares nothing with
the training generators but the ``Phantom`` record, so figures on it say how a model trained on A or R copes with
phantoms it was not built around. It is never used for training or for choosing a threshold.

    from inference.phantoms.family_c import generate
    phantom = generate("ncct", 7, positive=True, subtype="sdh")
"""

from __future__ import annotations

import time

import numpy as np

from inference.phantoms.family_c import arteries, bleeds, head, scanner
from inference.phantoms.family_c.space import make_frame
from inference.phantoms.types import Phantom

_STREAM = 0xC0C0
NCCT_HARD_NEGATIVES = bleeds.MIMICS
CTA_HARD_NEGATIVES = arteries.HARD_NEGATIVES


def generate(
    kind: str,
    seed: int,
    *,
    positive: bool | None = None,
    subtype: str | None = None,
    hard_negative: str | None = None,
    coarse: bool = False,
) -> Phantom:
    """One family-C study: ``kind`` is ``"ncct"`` (finding ``ich``) or ``"cta"`` (finding ``lvo``). ``coarse``
    doubles the voxel size (same random draws; for fast tests)."""
    if kind not in ("ncct", "cta"):
        raise ValueError(f'kind must be "ncct" or "cta", got "{kind}"')
    started = time.perf_counter()
    rng = np.random.default_rng([seed, _STREAM])
    subtypes = bleeds.SUBTYPES if kind == "ncct" else arteries.LVO_SUBTYPES
    negatives = NCCT_HARD_NEGATIVES if kind == "ncct" else CTA_HARD_NEGATIVES
    if positive is None:
        positive = subtype is not None or (hard_negative is None and bool(rng.random() < 0.5))
    if positive:
        subtype = subtype or str(rng.choice(subtypes))
    elif hard_negative is None and rng.random() < 0.45:
        hard_negative = str(rng.choice(negatives))
    build = _ncct if kind == "ncct" else _cta
    phantom = build(rng, positive, subtype, hard_negative, 2.0 if coarse else 1.0)
    phantom.meta.update({"seed": seed, "family": "C", "seconds": round(time.perf_counter() - started, 3)})
    return phantom


def _grid(rng: np.random.Generator, kind: str, zoom: float) -> tuple[head.Head, int, float, float]:
    """The internal grid: thin sub-slices (``k`` per stored slice), pixel size, stored slice thickness."""
    if kind == "ncct":
        thickness = float(rng.choice([2.5, 3.0, 5.0, 5.0]))
        k = max(1, round(thickness / 2.0))
        coverage, pixel, centre_z, spread = rng.uniform(130, 170), rng.uniform(1.2, 1.5), rng.uniform(-8, 8), 6.0
    else:
        thickness, k = float(rng.uniform(1.2, 1.75)), 1
        coverage, pixel, centre_z, spread = rng.uniform(100, 140), rng.uniform(1.3, 1.6), rng.uniform(-16, 0), 5.0
    pixel, thickness = pixel * zoom, thickness * (zoom if kind == "cta" else 1.0)
    matrix = int(round(rng.uniform(190.0, 230.0) / pixel))
    n = max(4, int(round(coverage / thickness))) * k
    frame = make_frame(
        rng, n_slices=n, matrix=matrix, spacing=(thickness / k, pixel, pixel), centre_world_z=centre_z,
        spread_deg=spread,
    )  # fmt: skip
    return head.build(rng, frame, head.draw_tissue(rng)), k, pixel, thickness


def _ncct(
    rng: np.random.Generator, positive: bool, subtype: str | None, hard_negative: str | None, zoom: float
) -> Phantom:
    h, k, pixel, thickness = _grid(rng, "ncct", zoom)
    incidental = bleeds.calcifications(rng, h, 0.6 if hard_negative == "calcification" else 0.0)
    if hard_negative == "dense_falx":
        bleeds.dense_falx(rng, h)
    elif hard_negative == "dense_sinus":
        bleeds.dense_sinus(rng, h)
    elif hard_negative == "chronic_collection":
        bleeds.chronic_collection(rng, h)
    occ = np.zeros(h.hu.shape, dtype=np.float32)
    info: dict[str, object] = {}
    size = float(rng.beta(1.2, 1.6))
    if positive and subtype is not None:
        occ, info, size = _bleed(rng, h, subtype, size)
    scanner.hounsfield_bar(rng, h, 1.6 if hard_negative == "streaks" else rng.uniform(0.2, 0.8))
    scanner.cupping(rng, h)
    volume, scan = scanner.acquire(rng, h.hu, k=k, pixel=pixel, kind="ncct")
    mask = scanner.slab_average(occ, k) >= 0.5 if k > 1 else occ >= 0.5
    meta = {"kind": "ncct", "incidental": incidental, "scanner": scan, "size": round(size, 3), **info}
    return _phantom(volume, (thickness, pixel, pixel), "ich", positive, subtype, mask, hard_negative, meta)


def _bleed(
    rng: np.random.Generator, h: head.Head, subtype: str, size: float
) -> tuple[np.ndarray, dict[str, object], float]:
    """Paints the bleed, a little larger each time it misses the grid or vanishes between voxels."""
    for _ in range(8):
        painted = bleeds.PAINTERS[subtype](rng, h, size)
        if painted is not None and float((painted[0] >= 0.5).sum()) * np.prod(h.frame.spacing) >= 8.0:
            occ, value, info = painted
            h.hu += occ * (np.float32(value) - h.hu)
            return occ, {**info, "blood_hu": round(float(value), 1)}, size
        size = min(1.0, size + 0.15)
    raise RuntimeError(f"Could not place a {subtype} bleed")


def _cta(
    rng: np.random.Generator, positive: bool, subtype: str | None, hard_negative: str | None, zoom: float
) -> Phantom:
    h, k, pixel, thickness = _grid(rng, "cta", zoom)
    arterial, venous = rng.uniform(230.0, 480.0), rng.uniform(130.0, 260.0)
    if hard_negative == "venous_phase":
        arterial, venous = rng.uniform(160.0, 240.0), rng.uniform(200.0, 320.0)
    elif hard_negative == "early_arterial":
        arterial, venous = rng.uniform(140.0, 200.0), rng.uniform(30.0, 70.0)
    h.hu += (np.float32(rng.uniform(2.0, 8.0)) * ((h.hu > 0) & (h.hu < 60))).astype(np.float32)
    head._sinuses(h, venous, float(min(h.frame.spacing)))
    tree = arteries.build_tree(rng, rng.uniform(0.85, 1.15))
    variants = arteries.apply_variants(rng, tree)
    side = int(rng.choice([-1, 1]))
    s = "L" if side > 0 else "R"
    if positive and subtype is not None:
        arteries.occlude(rng, tree, subtype, side)
    elif hard_negative == "m2_occlusion":
        arteries.occlude(rng, tree, "m2", side)
    elif hard_negative == "stenosis":
        tree[f"m1_{s}"].radii[1] *= rng.uniform(0.35, 0.6)
    elif hard_negative == "asymmetric_m1":
        tree[f"m1_{s}"].radii *= rng.uniform(0.65, 0.8)
    clot = arteries.render(h, tree, arterial, rng.uniform(30.0, 65.0))
    if hard_negative == "calcified_siphon" or rng.random() < 0.1:
        arteries.calcified_plaques(rng, h, tree)
    volume, scan = scanner.acquire(rng, h.hu, k=k, pixel=pixel, kind="cta")
    mask = clot >= 0.5
    meta = {"kind": "cta", "variants": variants, "arterial_hu": round(arterial, 1), "scanner": scan}
    phantom = _phantom(volume, (thickness, pixel, pixel), "lvo", positive, subtype, mask, hard_negative, meta)
    phantom.side = ("left" if side > 0 else "right") if positive else None
    return phantom


def _phantom(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    finding: str,
    positive: bool,
    subtype: str | None,
    mask: np.ndarray,
    hard_negative: str | None,
    meta: dict[str, object],
) -> Phantom:
    side = meta.pop("side", None)
    key = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else None
    return Phantom(
        volume_hu=volume.astype(np.float32),
        spacing_mm=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        finding=finding,
        positive=positive,
        subtype=subtype if positive else None,
        side=side if positive else None,  # type: ignore[arg-type]
        mask=mask,
        hard_negative=None if positive else hard_negative,
        meta={**meta, "key_slice": key},
    )

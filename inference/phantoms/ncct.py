"""Non-contrast head CT phantoms for intracranial hemorrhage (finding ``ich``)."""

from __future__ import annotations

import time
from typing import cast

import numpy as np

from inference.phantoms import anatomy, mimics, randomise, scanner, variants
from inference.phantoms.geometry import Grid
from inference.phantoms.hemorrhage import PAINTERS, SUBTYPES
from inference.phantoms.scene import Canvas, Pose, draw_pose, resolve_anatomy
from inference.phantoms.types import Phantom

_STREAM = 0x1C4  # keeps NCCT draws apart from CTA draws for the same seed
_HARD_SHARE = 0.45  # share of negatives built around a mimic
_PARAMETRIC_SHARE = 0.3  # family V: share of studies on the parametric brain instead of the template
_INCIDENTAL = (("pineal_calcification", 0.3), ("choroid_calcification", 0.2), ("dense_falx", 0.15))


def generate_ncct(
    seed: int,
    *,
    positive: bool | None = None,
    subtype: str | None = None,
    shape: tuple[int, int, int] = (32, 128, 128),
    slice_thickness_mm: float | None = None,
    anatomy: str = "auto",
    family: str = "A",
    hard_negative: str | None = None,
    size: float | None = None,
    clean: bool = False,
) -> Phantom:
    """One non-contrast head CT. ``subtype`` forces a positive of that kind, ``hard_negative`` a negative built around
    that mimic; ``size`` in [0, 1] fixes the bleed size; ``clean`` skips blur, artefacts and noise."""
    started = time.perf_counter()
    rng = np.random.default_rng([seed, _STREAM])
    family = scanner.check_family(family)
    positive, subtype, hard_negative = _decide(rng, positive, subtype, hard_negative)
    kind = resolve_anatomy(anatomy)
    if family == "V" and anatomy == "auto" and rng.random() < _PARAMETRIC_SHARE:
        kind = "parametric"  # a second, differently built brain
    scan = scanner.draw_scanner(
        rng,
        kind="ncct",
        family=family,
        shape=shape,
        slice_thickness_mm=slice_thickness_mm,
        coverage_mm=(90.0, 200.0) if family in scanner.RANDOMISED else (140.0, 175.0),
    )
    pose = draw_pose(rng, family=family)
    canvas = _base_canvas(rng, kind, scan, pose, shape, family)
    varied = variants.paint_anatomy(canvas, rng) if family == "V" else []
    incidental = _paint_incidental(canvas, rng)
    finding: dict[str, object] = {}
    if positive:
        assert subtype is not None  # _decide names the subtype of every positive
        finding = _paint_bleed(canvas, rng, subtype, size)
    elif hard_negative is not None and hard_negative in mimics.MIMICS:
        mimics.MIMICS[hard_negative](canvas, rng, float(rng.uniform(0.35, 1.0)))
    volume = canvas.volume
    volume[volume > -200] += np.float32(rng.normal(0.0, 1.5 if family == "A" else 3.0))
    acquisition: dict[str, object] = {}
    if family == "V":
        volume, canvas.mask, acquisition["warp_mm"] = variants.warp(volume, canvas.mask, rng, scan.spacing_mm)
    if not clean and family in scanner.RANDOMISED:
        if hard_negative == "beam_hardening":
            mimics.beam_hardening(volume, canvas, rng, float(rng.uniform(0.35, 1.0)))
        volume, acquired = randomise.acquire(
            volume, rng, spacing=scan.spacing_mm, thickness=scan.slice_thickness_mm, kind="ncct", keep=canvas.mask
        )
        acquisition.update(acquired)
    elif not clean:
        volume = scanner.blur(volume, scan)
        if hard_negative == "beam_hardening":
            mimics.beam_hardening(volume, canvas, rng, float(rng.uniform(0.35, 1.0)))
        elif rng.random() < 0.35:
            mimics.beam_hardening(volume, canvas, rng, float(rng.uniform(0.0, 0.3)))
        scanner.add_noise(volume, scan, rng)
    np.clip(volume, -1024.0, 3071.0, out=volume)
    meta = {
        "seed": seed,
        "kind": "ncct",
        "family": family,
        "anatomy": kind,
        "incidental": incidental,
        "anatomy_variants": varied,
        "scanner": scan.as_meta(),
        "pose": pose.as_meta(),
        "acquisition": acquisition,
        "key_slice": _key_slice(canvas.mask),
        "to_canonical": canvas.grid.as_meta(),
        **{k: v for k, v in finding.items() if k != "side"},
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Phantom(
        volume_hu=volume,
        spacing_mm=cast(tuple[float, float, float], tuple(float(s) for s in scan.spacing_mm)),
        finding="ich",
        positive=positive,
        subtype=subtype,
        side=finding.get("side"),  # type: ignore[arg-type]
        mask=canvas.mask,
        hard_negative=hard_negative,
        meta=meta,
    )


def _decide(
    rng: np.random.Generator, positive: bool | None, subtype: str | None, hard_negative: str | None
) -> tuple[bool, str | None, str | None]:
    if subtype is not None and subtype not in SUBTYPES:
        raise ValueError(f'ICH subtype "{subtype}" is not known; use one of {", ".join(SUBTYPES)}')
    if hard_negative is not None and hard_negative not in mimics.HARD_NEGATIVES:
        raise ValueError(f'Hard negative "{hard_negative}" is not known; use one of {", ".join(mimics.HARD_NEGATIVES)}')
    if positive is None:
        positive = subtype is not None or (hard_negative is None and bool(rng.random() < 0.5))
    if positive and hard_negative is not None:
        raise ValueError("A hard negative cannot be positive")
    if not positive and subtype is not None:
        raise ValueError("A negative phantom has no hemorrhage subtype")
    if positive:
        return True, subtype or str(rng.choice(SUBTYPES)), None
    if hard_negative is None and rng.random() < _HARD_SHARE:
        hard_negative = str(rng.choice(mimics.HARD_NEGATIVES))
    return False, None, hard_negative


def _base_canvas(
    rng: np.random.Generator, kind: str, scan: scanner.Scanner, pose: Pose, shape: tuple[int, int, int], family: str
) -> Canvas:
    head = anatomy.head_model(kind, anatomy.resolution_for(scan.spacing_mm))
    grid = Grid.posed(
        shape,
        scan.spacing_mm,
        head_center=np.asarray(anatomy.LANDMARKS["head_center"]),
        rotation=pose.rotation,
        scale=pose.scale,
        shift_mm=pose.shift_mm,
    )
    base = anatomy.sample(head, grid, grid.full(), (anatomy.HU, anatomy.ATROPHY))
    atrophy = rng.beta(1.3, 3.0) if family == "A" else rng.beta(2.0, 2.0)
    volume = base[0]
    volume += np.float32(atrophy) * base[1]
    # Grey-white contrast varies with kVp and reconstruction; scale it about white matter.
    contrast = rng.uniform(0.85, 1.12) if family == "A" else rng.uniform(0.7, 1.0)
    brain = (volume > -15.0) & (volume < 60.0)
    volume[brain] = 26.0 + (volume[brain] - 26.0) * np.float32(contrast)
    return Canvas(head, grid, volume, np.zeros(shape, dtype=bool))


def _paint_incidental(canvas: Canvas, rng: np.random.Generator) -> list[str]:
    found = []
    for name, share in _INCIDENTAL:
        if rng.random() < share:
            mimics.MIMICS[name](canvas, rng, float(rng.uniform(0.0, 0.4)))
            found.append(name)
    return found


def _paint_bleed(canvas: Canvas, rng: np.random.Generator, subtype: str, size: float | None) -> dict[str, object]:
    """Paints the bleed; if it lands outside the slices or between voxels, tries again a little larger."""
    size = float(rng.random() ** 1.2) if size is None else float(size)
    before = canvas.volume.copy()
    for _ in range(8):
        result = PAINTERS[subtype](canvas, rng, size)
        if canvas.mask.any():
            return {**result, "size": round(size, 3)}
        canvas.volume[...] = before
        size = min(1.0, size + 0.15)
    raise RuntimeError(f"Could not place a {subtype} bleed in a volume of shape {canvas.volume.shape}")


def _key_slice(mask: np.ndarray) -> int | None:
    if not mask.any():
        return None
    return int(np.argmax(mask.sum(axis=(1, 2))))

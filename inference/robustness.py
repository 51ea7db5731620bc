"""Robustness table: AUC and sensitivity/specificity at the shipped threshold under one acquisition shift at a time.

    python -m inference.robustness --finding ich --count 100 --seed 29 [--shift noise_x2 ...] [--update-card]

Every shift is applied to the same family-A phantoms (same seeds, balanced classes): extra correlated noise (x2,
x3), a calibration offset (+-10 HU), a sharp or a soft kernel, 0.625 to 5 mm slices, 0.4 or 0.7 mm pixels, a head
tilted +-15 degrees, the top quarter of the head not covered, patient motion and a metal streak artefact. With
``--update-card`` each row goes into the model card as an ``evaluation_robustness_*`` section.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from inference import stats
from inference.loader import read_card, shipped_weights
from inference.modelcard import update_card
from inference.phantoms import generate_cta, generate_ncct, randomise
from inference.phantoms.types import Phantom
from inference.runner import ModelRunner
from inference.trainset import SEED_STRIDE, phantom_plan

Transform = Callable[[Phantom, np.random.Generator], Phantom]


@dataclass(frozen=True)
class Shift:
    label: str
    options: Callable[[str], dict[str, Any]]  # generator keyword arguments, per kind
    transform: Transform | None = None


def _same(_: str) -> dict[str, Any]:
    return {}


def _slices(thickness: float) -> Callable[[str], dict[str, Any]]:
    def options(kind: str) -> dict[str, Any]:
        coverage = 150.0 if kind == "ncct" else 120.0
        return {"slice_thickness_mm": thickness, "shape": (max(8, round(coverage / thickness)), 128, 128)}

    return options


def _pixels(pixel: float) -> Callable[[str], dict[str, Any]]:
    def options(kind: str) -> dict[str, Any]:
        n = round(220.0 / pixel)
        return {"shape": (32 if kind == "ncct" else 64, n, n)}

    return options


def _noise(factor: float) -> Transform:
    def apply(p: Phantom, rng: np.random.Generator) -> Phantom:
        sd = float(p.meta["scanner"]["noise_hu"]) * np.sqrt(factor**2 - 1.0)
        grain = 0.7 / p.spacing_mm[2]
        extra = ndi.gaussian_filter(rng.standard_normal(p.volume_hu.shape, dtype=np.float32), (0, grain, grain))
        p.volume_hu += extra * np.float32(sd / (float(extra.std()) + 1e-6))
        return p

    return apply


def _offset(hu: float) -> Transform:
    def apply(p: Phantom, _: np.random.Generator) -> Phantom:
        p.volume_hu[p.volume_hu > -500.0] += np.float32(hu)
        return p

    return apply


def _kernel(sharp: bool) -> Transform:
    def apply(p: Phantom, _: np.random.Generator) -> Phantom:
        s = 0.8 / p.spacing_mm[2]
        blurred = ndi.gaussian_filter(p.volume_hu, (0, s, s))
        p.volume_hu = p.volume_hu + 0.6 * (p.volume_hu - blurred) if sharp else blurred
        return p

    return apply


def _tilt(degrees: float) -> Transform:
    """Rotates the head about the left-right axis in millimetres (anisotropic voxels allowed)."""

    def apply(p: Phantom, _: np.random.Generator) -> Phantom:
        a = np.deg2rad(degrees)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        sp = np.diag(p.spacing_mm)
        matrix = np.linalg.inv(sp) @ rot @ sp
        centre = (np.asarray(p.volume_hu.shape) - 1) / 2.0
        offset = centre - matrix @ centre
        p.volume_hu = ndi.affine_transform(p.volume_hu, matrix, offset, order=1, cval=-1024.0)
        if p.mask is not None:
            p.mask = ndi.affine_transform(p.mask.astype(np.float32), matrix, offset, order=1) >= 0.5
        return p

    return apply


def _partial(p: Phantom, _: np.random.Generator) -> Phantom:
    keep = p.volume_hu.shape[0] - p.volume_hu.shape[0] // 4
    p.volume_hu = np.ascontiguousarray(p.volume_hu[:keep])
    p.mask = None if p.mask is None else np.ascontiguousarray(p.mask[:keep])
    return p


def _motion(p: Phantom, rng: np.random.Generator) -> Phantom:
    randomise.motion(p.volume_hu, rng, p.spacing_mm)
    return p


def _metal(p: Phantom, rng: np.random.Generator) -> Phantom:
    randomise.metal(p.volume_hu, rng, p.spacing_mm)
    return p


SHIFTS: dict[str, Shift] = {
    "none": Shift("no shift", _same),
    "noise_x2": Shift("noise x2", _same, _noise(2.0)),
    "noise_x3": Shift("noise x3", _same, _noise(3.0)),
    "hu_plus10": Shift("HU +10", _same, _offset(10.0)),
    "hu_minus10": Shift("HU -10", _same, _offset(-10.0)),
    "sharp_kernel": Shift("sharp kernel", _same, _kernel(True)),
    "soft_kernel": Shift("soft kernel", _same, _kernel(False)),
    "slices_0.625": Shift("0.625 mm slices", _slices(0.625)),
    "slices_1.25": Shift("1.25 mm slices", _slices(1.25)),
    "slices_2.5": Shift("2.5 mm slices", _slices(2.5)),
    "slices_5": Shift("5 mm slices", _slices(5.0)),
    "pixel_0.7": Shift("0.7 mm pixels", _pixels(0.7)),
    "pixel_0.4": Shift("0.4 mm pixels", _pixels(0.4)),
    "tilt_plus15": Shift("tilt +15 deg", _same, _tilt(15.0)),
    "tilt_minus15": Shift("tilt -15 deg", _same, _tilt(-15.0)),
    "partial_coverage": Shift("top quarter not covered", _same, _partial),
    "motion": Shift("motion", _same, _motion),
    "metal": Shift("metal streaks", _same, _metal),
}


def shifted_phantom(finding: str, shift: Shift, seed: int, index: int) -> Phantom:
    positive, subtype = phantom_plan(finding, index)
    kind = "ncct" if finding == "ich" else "cta"
    make = generate_ncct if kind == "ncct" else generate_cta
    phantom = make(seed * SEED_STRIDE + index, positive=positive, subtype=subtype, **shift.options(kind))
    if shift.transform is not None:
        phantom = shift.transform(phantom, np.random.default_rng([seed, index, 0x5A]))
    return phantom


def evaluate_shift(runner: ModelRunner, finding: str, name: str, seed: int, count: int) -> dict[str, Any]:
    """AUC with a bootstrap interval and the operating point at the runner's threshold, for one shift."""
    labels, scores = [], []
    for index in range(count):
        p = shifted_phantom(finding, SHIFTS[name], seed, index)
        if p.positive and p.mask is not None and not p.mask.any():
            continue  # the shift removed the lesion from the volume (partial coverage): not a positive any more
        labels.append(int(p.positive))
        scores.append(runner.run(p.volume_hu, p.spacing_mm).score)
    y, s = np.array(labels), np.array(scores)
    return {
        "seed": seed,
        "family": f"A under {SHIFTS[name].label}",
        "count": len(y),
        "threshold": runner.threshold,
        "auc": stats.bootstrap_auc_ci(y, s, seed=seed).as_dict(),
        "operating_point": stats.operating_point(y, s, runner.threshold).as_dict(),
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    def iv(d: dict[str, float]) -> str:
        return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    lines = ["| shift | n | AUC [95% CI] | sensitivity [95% CI] | specificity [95% CI] |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        op = r["operating_point"]
        lines.append(
            f"| {SHIFTS[name].label} | {r['count']} | {iv(r['auc'])} | {iv(op['sensitivity'])} | "
            f"{iv(op['specificity'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inference.robustness", description=__doc__.split("\n\n")[0])
    p.add_argument("--finding", choices=("ich", "lvo"), required=True)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=29)
    p.add_argument("--shift", nargs="+", choices=sorted(SHIFTS), default=list(SHIFTS))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--update-card", action="store_true")
    args = p.parse_args(argv)
    weights = args.weights or shipped_weights(args.finding)
    if read_card(weights).get("training", {}).get("seed") == args.seed:
        # The shifted phantoms are family-A phantoms of the same seeds: they would repeat training phantoms.
        p.error(f"--seed {args.seed} was used to train these weights; choose another")
    runner = ModelRunner(args.finding, weights=weights, device="cpu")
    rows = {}
    for order, name in enumerate(args.shift):
        rows[name] = evaluate_shift(runner, args.finding, name, args.seed, args.count)
        print(table({name: rows[name]}).splitlines()[-1], flush=True)
        if args.update_card:
            update_card(weights, f"evaluation_robustness_{order:02d}_{name}", rows[name])
    print(table(rows))
    out = args.json or Path("bench/results") / f"robustness_{args.finding}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate weights on held-out phantoms through the full runner (preprocessing included).

    python -m inference.evaluate --finding ich --count 1000 --seed 9 --family B [--weights PATH] [--update-card]
    python -m inference.evaluate --finding lvo --count 400 --family A B C --seed 9 11 17   # side by side

Use a ``--seed`` never used in training (the model card's seed is refused) and preferably a generator family not
used in training. Negatives include the generators' hard negatives (calcifications, dense falx, streaks, chronic
collections; hypoplastic segments, bolus timing, calcified siphons, stenosis, M2 occlusion, tilt). Reports AUC with
a bootstrap interval, sensitivity and specificity with Wilson intervals at the shipped threshold, AUC per subtype
(that subtype's positives against all negatives), the false-positive rate per kind of hard negative, calibration,
and (LVO) how often the side is right. Prints a table and writes JSON. Family ``C`` (``inference.phantoms.family_c``)
is written apart from the training generators and never used for training or threshold choice; family ``R`` is the
randomised training family.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from inference import stats
from inference.loader import read_card, shipped_weights
from inference.modelcard import update_card
from inference.runner import ModelRunner
from inference.trainset import SEED_STRIDE, generate, phantom_plan

logger = logging.getLogger(__name__)


class HeldOut(Dataset):
    """Held-out phantoms as (volume, spacing, truth); generated in worker processes.

    With ``cache``, each phantom is kept there (HU rounded to int16, which the stored DICOM would do too) and read
    back on the next run, so phantoms can be generated before the weights to score them are ready."""

    def __init__(self, finding: str, seed: int, count: int, family: str, cache: Path | None = None) -> None:
        self.finding, self.seed, self.count, self.family, self.cache = finding, seed, count, family, cache

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.cache is None:
            return self._generate(index)
        path = self.cache / f"{self.finding}-{self.family}-seed{self.seed}-{index}.npz"
        if not path.is_file():
            item = self._generate(index)
            self.cache.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp.npz")
            hu = np.clip(np.rint(item["volume"]), -1024, 3071).astype(np.int16)
            np.savez(partial, hu=hu, spacing=np.asarray(item["spacing"]), truth=json.dumps(item["truth"]))
            partial.replace(path)
        with np.load(path) as data:
            spacing = tuple(float(v) for v in data["spacing"])
            return {
                "volume": data["hu"].astype(np.float32),
                "spacing": spacing,
                "truth": json.loads(str(data["truth"])),
            }

    def _generate(self, index: int) -> dict[str, Any]:
        positive, subtype = phantom_plan(self.finding, index)
        # Negatives are left to the generator, which builds a share of them around a mimic (hard negatives).
        p = generate(
            self.finding, self.seed * SEED_STRIDE + index, positive, subtype if positive else None, self.family
        )
        mask_slices = np.flatnonzero(p.mask.any(axis=(1, 2))).tolist() if p.mask is not None else []
        truth = {
            "label": int(p.positive),
            "subtype": p.subtype,
            "side": p.side,
            "hard_negative": p.hard_negative,
            "mask_slices": mask_slices,
            "size": p.meta.get("size"),
        }
        return {"volume": p.volume_hu, "spacing": tuple(p.spacing_mm), "truth": truth}


def _collate_one(item: dict[str, Any]) -> dict[str, Any]:
    return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def score_phantoms(runner: ModelRunner, dataset: HeldOut, workers: int) -> list[dict[str, Any]]:
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init,
        collate_fn=_collate_one,  # type: ignore[arg-type]
    )
    rows = []
    for item in tqdm(loader, total=len(dataset), desc="evaluate", unit="phantom"):
        out = runner.run(item["volume"], item["spacing"])
        truth = item["truth"]
        rows.append(
            {
                **truth,
                "score": out.score,
                "side_pred": out.side,
                "key_slice": out.key_slice,
                "key_slice_hit": out.key_slice in truth["mask_slices"] if truth["mask_slices"] else None,
                "seconds": out.timings.get("total_s"),
            }
        )
    return rows


def summarise(rows: list[dict[str, Any]], threshold: float, *, seed: int, family: str, n_boot: int = 2000) -> dict:
    y = np.array([r["label"] for r in rows])
    s = np.array([r["score"] for r in rows])
    result: dict[str, Any] = {
        "seed": seed,
        "family": family,
        "count": len(rows),
        "positives": int(y.sum()),
        "negatives": int((1 - y).sum()),
        "threshold": threshold,
        "auc": stats.bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed).as_dict(),
        "auc_delong": stats.delong_ci(y, s).as_dict(),
        "operating_point": stats.operating_point(y, s, threshold).as_dict(),
        "calibration": stats.calibration(y, s).as_dict(),
        "subtypes": _per_subtype(rows, y, s, seed, n_boot),
        "hard_negatives": _per_hard_negative(rows, threshold),
        "size_bands": _per_size_band(rows, y, s, threshold, seed, n_boot),
        "seconds_per_study": float(np.mean([r["seconds"] for r in rows])),
    }
    hits = [r["key_slice_hit"] for r in rows if r["label"] and r["key_slice_hit"] is not None]
    if hits:
        result["key_slice_in_lesion"] = stats.wilson_interval(sum(hits), len(hits)).as_dict()
    sides = [r["side_pred"] == r["side"] for r in rows if r["label"] and r["side"] in ("left", "right")]
    if sides and any(r["side_pred"] is not None for r in rows):
        result["side_accuracy"] = stats.wilson_interval(sum(sides), len(sides)).as_dict()
    return result


def _per_subtype(rows: list[dict[str, Any]], y: np.ndarray, s: np.ndarray, seed: int, n_boot: int) -> dict:
    negatives = y == 0
    out = {}
    for subtype in sorted({r["subtype"] for r in rows if r["label"] and r["subtype"]}):
        mine = np.array([bool(r["label"]) and r["subtype"] == subtype for r in rows])
        keep = mine | negatives
        out[subtype] = {
            "positives": int(mine.sum()),
            "auc": stats.bootstrap_auc_ci(y[keep], s[keep], n_boot=n_boot, seed=seed).as_dict(),
        }
    return out


# Bleed size as drawn by the generator, in [0, 1] (0: a 2 mm blob or a 2 mm film; 1: the largest of its kind).
SIZE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("tiny (<0.15)", 0.0, 0.15),
    ("small (0.15-0.4)", 0.15, 0.4),
    ("medium (0.4-0.7)", 0.4, 0.7),
    ("large (>=0.7)", 0.7, 1.01),
)


def _per_size_band(
    rows: list[dict[str, Any]], y: np.ndarray, s: np.ndarray, threshold: float, seed: int, n_boot: int
) -> dict:
    """AUC (that band's positives against all negatives) and sensitivity at the threshold, per bleed size band."""
    negatives = y == 0
    out = {}
    for name, low, high in SIZE_BANDS:
        mine = np.array([bool(r["label"]) and r.get("size") is not None and low <= r["size"] < high for r in rows])
        if not mine.any():
            continue
        keep = mine | negatives
        out[name] = {
            "positives": int(mine.sum()),
            "auc": stats.bootstrap_auc_ci(y[keep], s[keep], n_boot=n_boot, seed=seed).as_dict(),
            "sensitivity": stats.wilson_interval(int((s[mine] >= threshold).sum()), int(mine.sum())).as_dict(),
        }
    return out


def _per_hard_negative(rows: list[dict[str, Any]], threshold: float) -> dict:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if not r["label"]:
            groups[r["hard_negative"] or "none"].append(r["score"])
    return {
        name: {
            "count": len(scores),
            "false_positive_rate": stats.wilson_interval(sum(x >= threshold for x in scores), len(scores)).as_dict(),
            "mean_score": float(np.mean(scores)),
        }
        for name, scores in sorted(groups.items())
    }


def format_table(finding: str, model: str, r: dict[str, Any]) -> str:
    def iv(d: dict[str, float]) -> str:
        return f"{d['estimate']:.3f}  [{d['low']:.3f}, {d['high']:.3f}]"

    op = r["operating_point"]
    lines = [
        f"{finding} · {model} · seed {r['seed']} · family {r['family']} · "
        f"{r['count']} phantoms ({r['positives']} positive)",
        f"{'metric':<40} {'estimate [95% CI]':>26}",
        f"{'AUC (bootstrap)':<40} {iv(r['auc']):>26}",
        f"{'AUC (DeLong)':<40} {iv(r['auc_delong']):>26}",
        f"{'sensitivity @ ' + format(r['threshold'], '.4f'):<40} {iv(op['sensitivity']):>26}",
        f"{'specificity @ ' + format(r['threshold'], '.4f'):<40} {iv(op['specificity']):>26}",
        f"{'PPV (this sample)':<40} {iv(op['ppv']):>26}",
    ]
    for name, sub in r["subtypes"].items():
        lines.append(f"{'AUC ' + name + ' (n+=' + str(sub['positives']) + ')':<40} {iv(sub['auc']):>26}")
    for name, band in r.get("size_bands", {}).items():
        lines.append(f"{'AUC size ' + name + ' (n+=' + str(band['positives']) + ')':<40} {iv(band['auc']):>26}")
        lines.append(f"{'  sensitivity, size ' + name:<40} {iv(band['sensitivity']):>26}")
    for name, hn in r["hard_negatives"].items():
        label = f"FP rate {name} (n={hn['count']})"
        lines.append(f"{label:<40} {iv(hn['false_positive_rate']):>26}")
    for key, label in (("key_slice_in_lesion", "key slice in lesion"), ("side_accuracy", "side correct")):
        if key in r:
            lines.append(f"{label:<40} {iv(r[key]):>26}")
    cal = r["calibration"]
    lines.append(f"{'calibration ECE / Brier':<40} {cal['ece']:>12.3f} / {cal['brier']:.3f}")
    lines.append(f"{'seconds per study (runner)':<40} {r['seconds_per_study']:>26.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m inference.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--finding", choices=("ich", "lvo"), required=True)
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--architecture", default=None)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, nargs="+", required=True, help="one per family (or one for all)")
    p.add_argument("--family", nargs="+", default=["B"], help="phantom generator families: A, B, C (or R)")
    p.add_argument("--threshold", type=float, default=None, help="default: the model card's threshold")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="default: bench/results/eval_<finding>[_<family>].json")
    p.add_argument("--cache", type=Path, default=None, help="keep the generated held-out phantoms here")
    p.add_argument(
        "--generate-only", action="store_true", help="fill --cache with the phantoms and stop (no weights needed)"
    )
    p.add_argument(
        "--update-card",
        action="store_true",
        help="store the result in the model card (one section per generator family)",
    )
    args = p.parse_args(argv)
    if len(args.seed) not in (1, len(args.family)):
        p.error("give one --seed, or one per --family")
    return args


def compare_table(finding: str, model: str, results: dict[str, dict[str, Any]]) -> str:
    """One line per family: AUC, sensitivity and specificity at the threshold, each with its 95 % interval."""

    def iv(d: dict[str, float]) -> str:
        return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    lines = [f"{finding} · {model}", f"{'family':<7} {'n':>5} {'AUC':>22} {'sensitivity':>22} {'specificity':>22}"]
    for family, r in results.items():
        op = r["operating_point"]
        lines.append(
            f"{family:<7} {r['count']:>5} {iv(r['auc']):>22} {iv(op['sensitivity']):>22} {iv(op['specificity']):>22}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    seeds = args.seed * len(args.family) if len(args.seed) == 1 else args.seed
    if args.generate_only:
        return _generate_only(args, seeds)
    weights = args.weights or shipped_weights(args.finding)
    card = read_card(weights)
    if card.get("training", {}).get("seed") in seeds:
        print(f"--seed {card['training']['seed']} was used to train these weights; choose another", file=sys.stderr)
        return 2
    runner = ModelRunner(
        args.finding, weights=weights, architecture=args.architecture, device=args.device, threshold=args.threshold
    )
    model = f"{runner.model_name} {runner.model_version}"
    results = {}
    for family, seed in zip(args.family, seeds, strict=True):
        results[family] = _evaluate_family(args, runner, family, seed)
        print(format_table(args.finding, model, results[family]))
        if args.update_card:
            trained_on = card.get("training", {}).get("generator_family", "A")
            section = "evaluation" if family == trained_on else f"evaluation_family_{family}"
            update_card(weights, section, results[family])
    if len(results) > 1:
        print(compare_table(args.finding, model, results))
    _write_json(args, results)
    return 0


def _generate_only(args: argparse.Namespace, seeds: list[int]) -> int:
    if args.cache is None:
        print("--generate-only needs --cache", file=sys.stderr)
        return 2
    for family, seed in zip(args.family, seeds, strict=True):
        held_out = HeldOut(args.finding, seed, args.count, family, args.cache)
        loader = DataLoader(
            held_out,
            batch_size=None,
            num_workers=args.workers,
            worker_init_fn=_worker_init,
            collate_fn=_collate_one,  # type: ignore[arg-type]
        )
        for _ in tqdm(loader, total=len(held_out), desc=f"generate {family}", unit="phantom"):
            pass
    return 0


def _evaluate_family(args: argparse.Namespace, runner: ModelRunner, family: str, seed: int) -> dict[str, Any]:
    started = time.time()
    held_out = HeldOut(args.finding, seed, args.count, family, args.cache)
    rows = score_phantoms(runner, held_out, args.workers)
    result = summarise(rows, runner.threshold, seed=seed, family=family)
    result.update({"finding": args.finding, "model": runner.model_name, "model_version": runner.model_version})
    result["wall_seconds"] = round(time.time() - started, 1)
    return result


def _write_json(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    single = len(results) == 1
    out = args.json or Path("bench/results") / (
        f"eval_{args.finding}.json" if single else f"eval_{args.finding}_{''.join(results)}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = next(iter(results.values())) if single else results
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

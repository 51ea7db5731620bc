"""Train a triage network on phantoms generated on the fly.

    python -m inference.train --finding ich --train-count 2000 --val-count 300 --seed 1 --epochs 5 --out runs/ich

Phantoms are deterministic per seed, so each is generated once (DataLoader workers) and kept at the model grid as
int16 HU with its low-resolution targets; later epochs re-draw crops and augmentations from that cache. Seeds are
``seed * 1_000_000 + i`` for training and ``+ 500_000`` for validation; evaluation uses another ``--seed`` (and
another generator family) so it never sees a training phantom. The operating point is chosen on the validation
split for a target sensitivity. Writes ``<architecture>.pt`` (a state_dict), ``checkpoint.pt`` per epoch, and a
model card (``<architecture>.card.json`` / ``.md``). ``--epochs 0 --init W`` trains nothing: it chooses the
operating point for the weights ``W`` (for instance served by an architecture that reads them differently).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from inference import stats
from inference.batches import (
    AUGMENTATION_NOTE,
    BATCHERS,
    hardest_slices,
    ich_batch,
    loss_for,
)
from inference.modelcard import CARD_VERSION, LIMITS, card_load, card_paths, sha256_file, write_card
from inference.networks import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_network, count_parameters
from inference.trainset import (
    PhantomDataset,
    build_cache,
    phantom_seed,
)

logger = logging.getLogger(__name__)


def cached(cfg: RunConfig, dataset: PhantomDataset, split: str) -> list[dict[str, Any]]:
    """Samples from ``--cache`` when an earlier run with the same finding, seed and family saved them.

    Phantom ``i`` depends only on the seed and ``i``, so a cache of fewer phantoms is a prefix of this one: it is
    loaded and only the rest are generated.
    """
    if cfg.cache is None:
        return build_cache(dataset, cfg.workers, split)
    stem = f"{cfg.finding}-{split}-seed{cfg.seed}"
    path = cfg.cache / f"{stem}-n{dataset.count}-{cfg.family}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)  # noqa: S614 - a file this command wrote itself
    earlier = {
        int(found.name[len(stem) + 2 : -len(f"-{cfg.family}.pt")]): found
        for found in (cfg.cache.glob(f"{stem}-n*-{cfg.family}.pt") if cfg.cache.is_dir() else ())
    }
    shorter = [n for n in earlier if n < dataset.count]
    prefix: list[dict[str, Any]] = (
        torch.load(earlier[max(shorter)], weights_only=False) if shorter else []  # noqa: S614 - written by this command
    )
    samples = prefix + build_cache(Subset(dataset, range(len(prefix), len(dataset))), cfg.workers, split)
    cfg.cache.mkdir(parents=True, exist_ok=True)
    torch.save(samples, path)
    return samples


# --- batches ----------------------------------------------------------------------------------------------------


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, finding: str, batch: dict[str, torch.Tensor]
) -> float:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_for(finding, model(batch["x"]), batch)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return float(loss.detach())


def predict(model: nn.Module, finding: str, samples: list[dict[str, Any]], batch_size: int = 4) -> dict[str, Any]:
    """Study probabilities (and LVO side / ICH subtype probabilities) on whole model-grid volumes."""
    model.eval()
    rng = np.random.default_rng(0)
    scores, extra = [], []
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            groups: dict[tuple[int, ...], list[int]] = {}
            for j, s in enumerate(chunk):
                groups.setdefault(tuple(s["hu"].shape), []).append(j)
            part: dict[int, tuple[float, list[float]]] = {}
            for idx in groups.values():
                out = model(BATCHERS[finding]([chunk[j] for j in idx], rng, augment=False)["x"])
                key = "subtype_logits" if finding == "ich" else "side_logit"
                for row, j in enumerate(idx):
                    part[j] = (
                        float(torch.sigmoid(out["logit"][row])),
                        torch.sigmoid(out[key][row]).reshape(-1).tolist(),
                    )
            for j in range(len(chunk)):
                scores.append(part[j][0])
                extra.append(part[j][1])
    return {"scores": np.array(scores), "extra": extra}


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    finding: str
    train_count: int
    val_count: int
    seed: int
    epochs: int
    out: Path
    batch_size: int
    lr: float
    workers: int
    target_sensitivity: float
    family: str
    budget_s: float | None = None
    cache: Path | None = None
    init: Path | None = None
    threads: int | None = None
    mine_hard_negatives: bool = False
    repeat_small: int = 0
    architecture: str | None = None
    version: str = CARD_VERSION
    lineage: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - libraries below may use the global state
    torch.manual_seed(seed)
    # torch.use_deterministic_algorithms() makes CPU training about four times slower; CPU convolutions with a
    # fixed thread count already repeat exactly, so it is left off.


def run(cfg: RunConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    arch = cfg.architecture or DEFAULT_ARCHITECTURE[cfg.finding]
    started = time.time()
    # Choosing a threshold for given weights (no epochs) needs only the validation split.
    train_set = PhantomDataset(cfg.finding, cfg.seed, cfg.train_count, family=cfg.family)
    train = cached(cfg, train_set, "train") if cfg.epochs > 0 else []
    val = cached(cfg, PhantomDataset(cfg.finding, cfg.seed, cfg.val_count, validation=True, family=cfg.family), "val")
    generation_s = time.time() - started
    model = build_network(arch)
    if cfg.init is not None:
        # Fine-tuning: start from earlier weights with the same parameter shapes (a state_dict file).
        model.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    indices = epoch_indices(train, cfg.repeat_small)  # the same every epoch, in a new order each time
    schedule = LrSchedule(cfg, math.ceil(len(indices) / cfg.batch_size))
    rng = np.random.default_rng(cfg.seed)
    # With no epochs the starting weights are the result: only the operating point is chosen, on validation.
    best: dict[str, Any] = {"auc": -1.0, "epoch": 0, "state": _snapshot(model)}
    history = []
    for epoch in range(cfg.epochs):
        if schedule.exhausted():
            break
        losses = _train_epoch(model, optimizer, schedule, cfg, train, indices, rng, epoch)
        val_auc = _val_auc(model, cfg.finding, val)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": val_auc})
        logger.info("epoch %d loss %.4f val AUC %.4f", epoch + 1, np.mean(losses), val_auc)
        tqdm.write(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, validation AUC {val_auc:.4f}")
        state = _snapshot(model)
        torch.save({"epoch": epoch + 1, "model": state, "optimizer": optimizer.state_dict()}, cfg.out / "checkpoint.pt")
        if val_auc >= best["auc"]:
            best = {"auc": val_auc, "epoch": epoch + 1, "state": state}
    model.load_state_dict(best["state"])
    weights = cfg.out / f"{arch}.pt"
    torch.save(best["state"], weights)
    summary = _summarise(model, cfg, arch, val, history, best["epoch"], time.time() - started, generation_s)
    write_card(weights, summary, version=cfg.version)
    return summary


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class LrSchedule:
    """Warm-up then cosine decay over the planned steps, or over wall time when a time budget is set.

    A time budget keeps training within its slot on a shared machine: the learning rate follows the fraction of the
    budget used, so a slower machine trains fewer steps but still ends at a low learning rate.
    """

    def __init__(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        self.base_lr, self.total_steps, self.budget_s = cfg.lr, max(1, cfg.epochs * steps_per_epoch), cfg.budget_s
        self.steps, self.started = 0, time.monotonic()

    def progress(self) -> float:
        by_steps = self.steps / self.total_steps
        if self.budget_s is None:
            return by_steps
        return max(by_steps, (time.monotonic() - self.started) / self.budget_s)

    def exhausted(self) -> bool:
        return self.progress() >= 1.0

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        t = min(self.progress(), 1.0)
        lr = self.base_lr * (t / 0.05 if t < 0.05 else 0.5 * (1 + math.cos(math.pi * (t - 0.05) / 0.95)))
        for group in optimizer.param_groups:
            group["lr"] = max(lr, self.base_lr * 0.01)
        self.steps += 1


SMALL_LESION_CELLS = 12  # ICH map cells (14 mm square, 5 mm thick): about the smallest fifth of the bleeds


def epoch_indices(train: list[dict[str, Any]], repeat_small: int) -> np.ndarray:
    """Every sample once, and ICH positives with a small bleed ``repeat_small`` more times.

    The smallest bleeds (a 2 mm lens, a thin film) are the ones the network misses; seen more often, they weigh more
    in the gradient without changing what any sample is labelled.
    """
    extra = [
        j
        for j, s in enumerate(train)
        if s["label"] > 0 and "slice_target" in s and int(s["cam_target"].sum()) <= SMALL_LESION_CELLS
    ]
    return np.concatenate([np.arange(len(train)), np.repeat(np.array(extra, dtype=int), repeat_small)])


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LrSchedule,
    cfg: RunConfig,
    train: list[dict[str, Any]],
    indices: np.ndarray,
    rng: np.random.Generator,
    epoch: int,
) -> list[float]:
    order = rng.permutation(indices)
    losses: list[float] = []
    bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
    for i in bar:
        if schedule.exhausted():
            break
        schedule.apply(optimizer)
        chosen = [train[j] for j in order[i : i + cfg.batch_size]]
        if cfg.finding == "ich" and cfg.mine_hard_negatives:
            batch = ich_batch(chosen, rng, augment=True, centres=hardest_slices(model, chosen))
        else:
            batch = BATCHERS[cfg.finding](chosen, rng, augment=True)
        losses.append(train_step(model, optimizer, cfg.finding, batch))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses


def _val_auc(model: nn.Module, finding: str, val: list[dict[str, Any]]) -> float:
    labels = np.array([s["label"] for s in val])
    return stats.auc(labels, predict(model, finding, val)["scores"])


def _summarise(
    model: nn.Module,
    cfg: RunConfig,
    arch: str,
    val: list[dict[str, Any]],
    history: list[dict[str, Any]],
    best_epoch: int,
    seconds: float,
    generation_s: float,
) -> dict[str, Any]:
    labels = np.array([s["label"] for s in val])
    scores = predict(model, cfg.finding, val)["scores"]
    threshold = stats.threshold_for_sensitivity(labels, scores, cfg.target_sensitivity)
    point = stats.operating_point(labels, scores, threshold)
    summary = {
        "finding": cfg.finding,
        "architecture": arch,
        "parameters": count_parameters(model),
        "threshold": threshold,
        "target_sensitivity": cfg.target_sensitivity,
        "training": {
            "data": "synthetic phantoms (inference.phantoms), generated from seeds; no patient data",
            "generator_family": cfg.family,
            "seed": cfg.seed,
            "train_count": cfg.train_count,
            "val_count": cfg.val_count,
            "train_seeds": f"{phantom_seed(cfg.seed, 0)}..{phantom_seed(cfg.seed, cfg.train_count - 1)}",
            "val_seeds": f"{phantom_seed(cfg.seed, 0, validation=True)}.."
            f"{phantom_seed(cfg.seed, cfg.val_count - 1, validation=True)}",
            "epochs": len(history),
            "time_budget_s": cfg.budget_s,
            "best_epoch": best_epoch,
            "batch_size": cfg.batch_size,
            "learning_rate": cfg.lr,
            "hard_negative_mining": cfg.mine_hard_negatives,
            "small_bleeds_repeated": cfg.repeat_small,
            "initialised_from": None if cfg.init is None else {"file": cfg.init.name, "sha256": sha256_file(cfg.init)},
            "history": history,
            "seconds": round(seconds, 1),
            "phantom_generation_seconds": round(generation_s, 1),
            "torch": torch.__version__,
        },
        "validation": {
            "auc": stats.bootstrap_auc_ci(labels, scores, seed=cfg.seed).as_dict(),
            "operating_point": point.as_dict(),
            "calibration": stats.calibration(labels, scores).as_dict(),
        },
    }
    return with_card_notes(summary, cfg.family, cfg.lineage)


# What a phantom figure means, for every card: stated plainly, beside the figures.
PHANTOM_FIGURES = (
    "What the phantom figures mean: they show that the whole pipeline (volume, preprocessing, network, threshold) "
    "finds lesions drawn by the project's generators, including family C, written separately and never used for "
    "training or for the threshold, under the scanner and protocol variation listed. They do not estimate "
    "sensitivity, specificity or PPV on patients: real anatomy, pathology mix, prevalence, devices and artefacts "
    "are not modelled, and the generators share their authors' assumptions."
)


def randomisation_notes(*, anatomy: bool) -> dict[str, dict[str, Any]]:
    """The family-R ranges with their units and sources, as the card's ``randomisation`` section; with ``anatomy``
    (ICH on family V) also the anatomical variation (``inference/phantoms/variants.py``)."""
    from inference.phantoms.randomise import RANGES
    from inference.phantoms.variants import ANATOMY_RANGES

    ranges = {**RANGES, **ANATOMY_RANGES} if anatomy else RANGES
    return {k: {"low": lo, "high": hi, "unit": unit, "source": src} for k, (lo, hi, unit, src) in ranges.items()}


def with_card_notes(summary: dict[str, Any], family: str, lineage: str | None) -> dict[str, Any]:
    """Adds the phantom statement to the limits and, for family R, the randomisation ranges (JSON and one line)."""
    summary = {**summary, "limits": [*LIMITS, PHANTOM_FIGURES]}
    parts = [lineage] if lineage else []
    parts.append(AUGMENTATION_NOTE)
    from inference.phantoms.scanner import RANDOMISED

    families = set(family.split("+"))
    anatomy = summary.get("finding") == "ich" and "V" in families
    if families & set(RANDOMISED):
        ranges = randomisation_notes(anatomy=anatomy)
        summary["randomisation"] = ranges
        listed = "; ".join(f"{k} {v['low']:g} to {v['high']:g} {v['unit']} ({v['source']})" for k, v in ranges.items())
        parts.append(
            "Domain randomisation (generator family R, inference/phantoms/randomise.py, after SynthSeg: Billot et "
            f"al., Medical Image Analysis 2023), every value drawn per study: {listed}. Also: pixel padding value "
            "and rescale slope/intercept conventions, field-of-view circle, slice spacing 1.4-5 mm at generation "
            "(thinner native slices through their noise), rare front-back and head-foot flips."
        )
        if anatomy:
            parts.append(
                "Family V (family R with the anatomy varied, inference/phantoms/variants.py): the parametric brain "
                "instead of the MNI template for 30 %; skull base (petrous ridges, mastoid air cells, clivus, "
                "sphenoid sinus, orbits), face and neck soft tissue, dural venous sinuses, tentorium and deep grey "
                "nuclei, each with its own chance and density; then a smooth warp of the whole head."
            )
    if parts:
        summary["training"] = {**summary["training"], "lineage": " ".join(parts)}
    return summary


def rewrite_card(weights: Path, *, version: str, lineage: str | None = None) -> dict[str, Any]:
    """Rewrites the card beside ``weights`` (its training summary kept) with this code's notes and a version."""
    card = card_load(card_paths(weights)[0])
    keep = {k: v for k, v in card.items() if k not in ("name", "version", "sha256", "weights_file", "intended_use")}
    keep.pop("advisory", None)
    family = keep.get("training", {}).get("generator_family", "A")
    return write_card(weights, with_card_notes(keep, family, lineage), version=version)


def parse_args(argv: list[str] | None = None) -> RunConfig:
    p = argparse.ArgumentParser(prog="python -m inference.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--finding", choices=("ich", "lvo"), required=True)
    p.add_argument("--architecture", choices=sorted(ARCHITECTURES), default=None, help="default: the finding's")
    p.add_argument("--train-count", type=int, default=2000)
    p.add_argument("--val-count", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--epochs", type=int, default=5, help="0 with --init: no training, only choose the threshold on validation"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=None, help="default: 12 (ich crops) or 8 (lvo)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes generating phantoms")
    p.add_argument("--target-sensitivity", type=float, default=0.95)
    p.add_argument(
        "--family",
        default="A",
        help="training phantom family: A, B, R (domain randomisation), V (R with varied anatomy), or a mixture (A+R)",
    )
    p.add_argument("--time-budget-min", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--cache", type=Path, default=None, help="keep generated samples here for later runs")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (a state_dict) instead")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training (default: torch's)")
    p.add_argument("--version", default=CARD_VERSION, help="version written into the model card")
    p.add_argument("--lineage", default=None, help="a sentence for the card: where the weights come from")
    p.add_argument(
        "--mine-hard-negatives",
        action="store_true",
        help="ICH: crop each negative around the slice the model scores highest (one more forward pass per negative)",
    )
    p.add_argument(
        "--repeat-small",
        type=int,
        default=0,
        metavar="N",
        help=f"ICH: show positives whose bleed covers <= {SMALL_LESION_CELLS} map cells N more times per epoch",
    )
    a = p.parse_args(argv)
    if a.architecture and ARCHITECTURES[a.architecture].finding != a.finding:
        p.error(f"--architecture {a.architecture} is not for --finding {a.finding}")
    if not set(a.family.split("+")) <= {"A", "B", "R", "V"}:
        p.error("--family is A, B, R, V (R with varied anatomy) or a mixture such as A+R; C is for evaluation only")
    if a.epochs < 0 or (a.epochs == 0 and a.init is None):
        p.error("--epochs must be at least 1, or 0 with --init (weights to calibrate)")
    if a.finding != "ich" and (a.mine_hard_negatives or a.repeat_small):
        p.error("--mine-hard-negatives and --repeat-small are for --finding ich")
    batch = a.batch_size or (12 if a.finding == "ich" else 8)
    return RunConfig(
        a.finding, a.train_count, a.val_count, a.seed, a.epochs, a.out, batch, a.lr, a.workers,
        a.target_sensitivity, a.family, a.time_budget_min * 60 if a.time_budget_min else None, a.cache,
        a.init, a.threads, a.mine_hard_negatives, max(0, a.repeat_small), a.architecture, a.version, a.lineage,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = run(parse_args(argv))
    v = summary["validation"]
    print(
        f"{summary['architecture']}: validation AUC {v['auc']['estimate']:.4f} "
        f"[{v['auc']['low']:.4f}, {v['auc']['high']:.4f}], threshold {summary['threshold']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

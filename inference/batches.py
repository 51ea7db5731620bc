"""Training batches from cached phantoms: windows, crops, augmentation, the per-finding batch builders and losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from inference.networks import ICH_SUBTYPES
from inference.preprocess import (
    ICH_WINDOWS,
    LVO_WINDOW,
    window,
)

CAM_STRIDE = 8  # both networks localise at 1/8 of the model grid


ICH_CHUNK = 8  # slices per training crop: the study score is a maximum over slices, so crops train it well


def ich_channels(hu: torch.Tensor) -> torch.Tensor:
    """(..., H, W) HU → (..., 3, H, W) windows."""
    return torch.stack([window(hu, level, width) for level, width in ICH_WINDOWS], dim=-3)


def lvo_channels(hu: torch.Tensor) -> torch.Tensor:
    """(D, H, W) HU → (2, D, H, W): window and mirror image."""
    w = window(hu, *LVO_WINDOW)
    return torch.stack([w, w.flip(-1)], dim=0)


# Soft-tissue HU of the training generators (families A and B): CSF 8, white matter 26, grey matter 40, acute blood
# 55-88, calcification above 100, opacified arteries 250-450. ``_remap_tissue`` moves each of these per sample within
# ranges wider than scanners produce (the family-R ranges in inference/phantoms/randomise.py, widened further for
# grey-white contrast), keeping their order and blood above grey matter, so a network cannot learn "brighter than
# 45 HU is blood" or "arteries read 300 HU": only what blood or an occlusion looks like next to its surroundings.
AUGMENTATION_NOTE = (
    "Training-time intensity randomisation on every family (inference/batches.py): 80% of training crops pass "
    "through a random monotone HU map: CSF -4 to 18 HU, white matter 12 to 38, grey matter 3 to 24 HU above white "
    "matter, acute blood at least 6 to 14 HU above grey matter and 46 to 115 HU, calcification 95 to 140, CTA "
    "arteries scaled 0.55 to 1.6, bone 0.6 to 1.35, calibration offset -10 to +10 HU; then white or correlated "
    "noise of 0 to 5 HU."
)
_TISSUE_SRC = (-1024.0, -900.0, -200.0, 8.0, 26.0, 40.0, 55.0, 88.0, 110.0, 250.0, 450.0, 1000.0, 3071.0)


def _remap_tissue(x: torch.Tensor, rng: np.random.Generator, finding: str) -> torch.Tensor:
    """A random monotone piecewise-linear HU map of a sample (SynthSeg-style intensity randomisation)."""
    u = rng.uniform
    csf = u(-4.0, 18.0)
    white = max(u(12.0, 38.0), csf + 5.0)
    grey = white + u(3.0, 24.0)  # grey-white 7-15 HU on real scanners, deep nuclei up to about 20: widened
    blood_low = max(u(46.0, 75.0), grey + u(6.0, 14.0))
    blood_high = blood_low + u(12.0, 40.0)
    calcium = max(u(95.0, 140.0), blood_high + 8.0)
    vessel = u(0.55, 1.6) if finding == "lvo" else u(0.8, 1.25)
    bone = u(0.6, 1.35)
    offset = u(-10.0, 10.0)
    dst = [-1024.0, -900.0, u(-230.0, -170.0), csf, white, grey, blood_low, blood_high, calcium]
    dst += [max(250.0 * vessel, calcium + 15.0), max(450.0 * vessel, calcium + 40.0), 1000.0 * bone, 3071.0]
    dst_t = torch.tensor(dst, dtype=torch.float32)
    dst_t[2:-1] += offset  # air stays air
    dst_t = torch.cummax(dst_t, dim=0).values
    src_t = torch.tensor(_TISSUE_SRC, dtype=torch.float32)
    x = x.clamp(src_t[0], src_t[-1])
    upper = torch.bucketize(x, src_t).clamp(1, len(_TISSUE_SRC) - 1)
    x0, x1, y0, y1 = src_t[upper - 1], src_t[upper], dst_t[upper - 1], dst_t[upper]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _augment_hu(hu: torch.Tensor, rng: np.random.Generator, finding: str = "ich") -> torch.Tensor:
    """Scanner-like variation: tissue HU remapped (most samples), then extra noise, white or kernel-shaped."""
    x = hu.float()
    if rng.random() < 0.8:
        x = _remap_tissue(x, rng, finding)
    sigma = float(rng.uniform(0.0, 5.0))
    if sigma > 0.5:
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(x.shape, generator=gen)
        if rng.random() < 0.5:  # correlated (soft-kernel) grain, rescaled to the same standard deviation
            flat = noise.reshape(-1, 1, *noise.shape[-2:])
            noise = F.avg_pool2d(flat, 3, stride=1, padding=1).reshape(noise.shape) * 3.0
        x = x + sigma * noise
    return x


def _shift(hu: torch.Tensor, cam: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the head by whole map cells (air fills the gap) so that lesion position is not a learnable prior."""
    dy, dx = (int(rng.integers(-2, 3)) * CAM_STRIDE for _ in range(2))
    hu = torch.roll(hu.float(), shifts=(dy, dx), dims=(-2, -1))
    cam = torch.roll(cam, shifts=(dy // CAM_STRIDE, dx // CAM_STRIDE), dims=(-2, -1))
    for axis, d in ((-2, dy), (-1, dx)):
        if d:
            band = slice(0, d) if d > 0 else slice(d, None)
            idx = [slice(None)] * hu.ndim
            idx[axis] = band
            hu[tuple(idx)] = -1000.0
            cidx = [slice(None)] * cam.ndim
            cidx[axis] = slice(0, d // CAM_STRIDE) if d > 0 else slice(d // CAM_STRIDE, None)
            cam[tuple(cidx)] = False
    return hu, cam


def _ich_crop(sample: dict[str, Any], rng: np.random.Generator, centre: int | None = None) -> slice:
    """ICH_CHUNK slices: around a random blood slice, around ``centre`` when given, else anywhere."""
    n = sample["hu"].shape[0]
    if n <= ICH_CHUNK:
        return slice(0, n)
    hits = np.flatnonzero(sample["slice_target"].numpy())
    if centre is None and hits.size:
        centre = int(rng.choice(hits))
    if centre is not None:
        low, high = max(0, centre - ICH_CHUNK + 1), min(centre, n - ICH_CHUNK)
        start = int(rng.integers(low, high + 1))
    else:
        start = int(rng.integers(0, n - ICH_CHUNK + 1))
    return slice(start, start + ICH_CHUNK)


def hardest_slices(model: nn.Module, samples: list[dict[str, Any]]) -> dict[int, int]:
    """For each negative study, the slice the model now scores highest: its worst false alarm.

    A random crop of a negative rarely holds the calcification, dense falx or streak that the model mistakes for
    blood, while every positive crop holds its bleed; cropping negatives here trains on what fools the model.
    """
    was_training = model.training
    model.eval()
    out: dict[int, int] = {}
    with torch.inference_mode():
        for j, s in enumerate(samples):
            if s["label"] == 0 and s["hu"].shape[0] > ICH_CHUNK:
                out[j] = int(model(ich_channels(s["hu"].float())[None])["slice_logits"][0].argmax())
    model.train(was_training)
    return out


def ich_batch(
    samples: list[dict[str, Any]],
    rng: np.random.Generator,
    *,
    augment: bool,
    centres: dict[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """``centres``: sample index → a slice the training crop must hold (see ``hardest_slices``)."""
    xs, cams, slices, labels, subtypes = [], [], [], [], []
    for j, s in enumerate(samples):
        crop = _ich_crop(s, rng, (centres or {}).get(j)) if augment else slice(0, s["hu"].shape[0])
        hu, cam, sl = s["hu"][crop], s["cam_target"][crop], s["slice_target"][crop]
        if augment:
            hu, cam = _shift(hu, cam.clone(), rng)
            hu = _augment_hu(hu, rng, "ich")
            if rng.random() < 0.5:
                hu, cam = hu.flip(-1), cam.flip(-1)
            hu, cam = _reorient(hu, cam, rng, ((-2, 0.15),))
        xs.append(ich_channels(hu.float()))
        cams.append(cam.float())
        slices.append(sl.float())
        labels.append(float(sl.any()) if augment else s["label"])
        subtype = torch.zeros(len(ICH_SUBTYPES))
        if s["subtype"] in ICH_SUBTYPES and labels[-1] > 0:
            subtype[ICH_SUBTYPES.index(s["subtype"])] = 1.0
        subtypes.append(subtype)
    return {
        "x": _stack_padded(xs),
        "cam": _stack_padded(cams),
        "slice": _stack_padded(slices),
        "label": torch.tensor(labels),
        "subtype": torch.stack(subtypes),
    }


def _reorient(
    hu: torch.Tensor, cam: torch.Tensor, rng: np.random.Generator, flips: tuple[tuple[int, float], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rare front-back (and, for volumes, head-foot) flips: a study stored in another axis convention still reads."""
    for axis, chance in flips:
        if rng.random() < chance:
            hu, cam = hu.flip(axis), cam.flip(axis)
    return hu, cam


def _stack_padded(items: list[torch.Tensor]) -> torch.Tensor:
    """Stack along a new batch axis, padding the first axis (slices) with zeros where lengths differ."""
    n = max(t.shape[0] for t in items)
    padded = [F.pad(t, [0, 0] * (t.ndim - 1) + [0, n - t.shape[0]]) if t.shape[0] < n else t for t in items]
    return torch.stack(padded)


def lvo_batch(samples: list[dict[str, Any]], rng: np.random.Generator, *, augment: bool) -> dict[str, torch.Tensor]:
    xs, cams, labels, sides = [], [], [], []
    for s in samples:
        hu, cam, side = s["hu"], s["cam_target"], s["side"]
        if augment:
            hu = _augment_hu(hu, rng, "lvo")
            if rng.random() < 0.5:
                hu, cam = hu.flip(-1), cam.flip(-1)
                side = {"left": "right", "right": "left"}.get(side, side)
            hu, cam = _reorient(hu, cam, rng, ((-2, 0.15), (-3, 0.1)))
        xs.append(lvo_channels(hu.float()))
        cams.append(cam.float())
        labels.append(s["label"])
        sides.append(1.0 if side == "left" else 0.0)
    return {"x": torch.stack(xs), "cam": torch.stack(cams), "label": torch.tensor(labels), "side": torch.tensor(sides)}


BATCHERS = {"ich": ich_batch, "lvo": lvo_batch}


# --- loss and steps ---------------------------------------------------------------------------------------------


def loss_for(finding: str, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Study BCE plus localisation terms; the map is supervised by the phantom mask so small bleeds are learnt."""
    bce = F.binary_cross_entropy_with_logits
    loss = bce(out["logit"], batch["label"])
    # The map term is weighted down: at full weight it first learns where lesions usually are, not what they are.
    pos_weight = torch.tensor(2.0)
    if finding == "ich":
        # A small bleed fills 1-10 of the 2,048 map cells of a crop, a large subdural hundreds: balanced per study,
        # each bleed's cells count as much as another's, and as much as all the cells without blood.
        loss = loss + 0.5 * balanced_bce(out["cam"], batch["cam"], per_sample=True)
        loss = loss + bce(out["slice_logits"], batch["slice"], pos_weight=pos_weight)
        loss = loss + 0.5 * bce(out["subtype_logits"], batch["subtype"])
    else:
        # An occlusion fills a few of the map's 1,568 cells: without balancing, the map learns to say "nothing"
        # everywhere and never finds the occluded segment. Occlusion cells and the rest weigh the same.
        loss = loss + balanced_bce(out["cam"], batch["cam"])
        positives = batch["label"] > 0
        if positives.any():
            loss = loss + 0.5 * bce(out["side_logit"][positives], batch["side"][positives])
    return loss


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, *, per_sample: bool = False) -> torch.Tensor:
    """Binary cross-entropy with the positive and the negative cells averaged separately, then the two averaged.

    ``per_sample``: positive cells are averaged within each sample first, so a lesion of a few cells weighs as much
    as one of hundreds."""
    cells = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    positive = target > 0.5
    negative_loss = cells[~positive].mean()
    if not positive.any():
        return negative_loss
    if per_sample:
        dims = list(range(1, target.ndim))
        counts = positive.sum(dim=dims)
        has = counts > 0
        positive_loss = ((cells * positive).sum(dim=dims)[has] / counts[has]).mean()
    else:
        positive_loss = cells[positive].mean()
    return 0.5 * (negative_loss + positive_loss)

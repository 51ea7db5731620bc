"""Training phantoms: the seed plan, generation, and the cached samples at the model grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from inference.batches import (
    CAM_STRIDE,
)
from inference.networks import ICH_SUBTYPES
from inference.preprocess import (
    ICH_GRID,
    LVO_GRID,
    head_centre,
    resample_to_grid,
)

SEED_STRIDE = 1_000_000


VAL_OFFSET = 500_000


LVO_SUBTYPES = ("ica_t", "m1")


def phantom_seed(run_seed: int, index: int, *, validation: bool = False) -> int:
    return run_seed * SEED_STRIDE + (VAL_OFFSET if validation else 0) + index


def phantom_plan(finding: str, index: int) -> tuple[bool, str | None]:
    """Balanced classes, subtypes in turn: even indices are positives."""
    if index % 2:
        return False, None
    subtypes = ICH_SUBTYPES if finding == "ich" else LVO_SUBTYPES
    return True, subtypes[(index // 2) % len(subtypes)]


def generate(finding: str, seed: int, positive: bool | None, subtype: str | None, family: str = "A"):  # noqa: ANN201
    """One phantom. Family ``R`` (domain randomisation) also draws the volume size (slice spacing, pixel size);
    family ``C`` is the separately written generator kept for evaluation only."""
    from inference import phantoms

    kind = "ncct" if finding == "ich" else "cta"
    if family == "C":
        from inference.phantoms import family_c

        return family_c.generate(kind, seed, positive=positive, subtype=subtype)
    options: dict[str, Any] = {"positive": positive, "subtype": subtype, "family": family}
    from inference.phantoms.scanner import RANDOMISED

    if family in RANDOMISED:
        from inference.phantoms.randomise import draw_shape

        options["shape"] = draw_shape(seed, kind)
    if finding == "ich":
        return phantoms.generate_ncct(seed, **options)
    return phantoms.generate_cta(seed, **options)


# --- samples at the model grid ----------------------------------------------------------------------------------


def make_sample(phantom: Any) -> dict[str, Any]:
    """A phantom at its finding's model grid: int16 HU, low-resolution localisation targets and labels."""
    grid = ICH_GRID if phantom.finding == "ich" else LVO_GRID
    volume = torch.from_numpy(np.ascontiguousarray(phantom.volume_hu, dtype=np.float32))
    centre = head_centre(volume, phantom.spacing_mm)
    hu, _ = resample_to_grid(volume, phantom.spacing_mm, grid, centre=centre)
    mask_src = phantom.mask if phantom.mask is not None else np.zeros(phantom.shape, dtype=bool)
    # The mask follows the same crop as the volume: resampled about the volume's head centre.
    mask_t = torch.from_numpy(mask_src.astype(np.float32))
    mask, _ = resample_to_grid(mask_t, phantom.spacing_mm, grid, centre=centre, fill=0.0, hu_range=None)
    sample: dict[str, Any] = {
        "hu": hu.round().clamp(-1024, 3071).to(torch.int16),
        "label": float(phantom.positive),
        "subtype": phantom.subtype,
        "side": phantom.side,
        "hard_negative": phantom.hard_negative,
        "seed": phantom.meta.get("seed"),
    }
    if phantom.finding == "ich":
        # Cam targets per slice at 1/8 in-plane; a pixel counts when a fifth of some voxel in it is blood.
        sample["cam_target"] = F.max_pool2d(mask[:, None], CAM_STRIDE)[:, 0] > 0.2
        sample["slice_target"] = mask.amax(dim=(1, 2)) > 0.2
    else:
        sample["cam_target"] = F.max_pool3d(mask[None, None], CAM_STRIDE)[0, 0] > 0.05
    return sample


class PhantomDataset(Dataset):
    """Phantoms by index; each worker generates and resamples its own, with torch limited to one thread."""

    def __init__(self, finding: str, run_seed: int, count: int, *, validation: bool = False, family: str = "A") -> None:
        self.finding, self.run_seed, self.count = finding, run_seed, count
        self.validation, self.family = validation, family

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        positive, subtype = phantom_plan(self.finding, index)
        seed = phantom_seed(self.run_seed, index, validation=self.validation)
        return make_sample(generate(self.finding, seed, positive, subtype, family_of(self.family, index)))


def family_of(families: str, index: int) -> str:
    """The generator family of phantom ``index`` in a mixture such as ``"A+R"``: each positive-negative pair (see
    ``phantom_plan``) comes from one family, the families in turn, so every family gives both classes."""
    names = families.split("+")
    return names[(index // 2) % len(names)]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def build_cache(dataset: Dataset, workers: int, desc: str) -> list[dict[str, Any]]:
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    return list(tqdm(loader, total=len(dataset), desc=desc, unit="phantom", leave=False))  # type: ignore[arg-type]

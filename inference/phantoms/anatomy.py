"""Canonical head models: the MNI152 templates shipped with nilearn, or a parametric ellipsoid head.

Both give the same channels on a canonical grid (see ``geometry``): CT numbers of brain, skull and scalp, the HU change
that full atrophy brings, the signed distance to the inner table, the CSF fraction and the ventricle fraction. The
generators sample them through a pose with ``sample``; models are cached per process because they take about a second
to build.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from inference.phantoms.geometry import Grid

HU, ATROPHY, DIST_IN, CSF, VENT = range(5)
# What each channel reads outside the model grid (air, far outside the skull).
_PAD = np.array([-1000.0, 0.0, -100.0, 0.0, 0.0], dtype=np.float32)
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
# Canonical (z, y, x) landmarks in MNI millimetres; x > 0 is the patient's right.
LANDMARKS: dict[str, tuple[float, float, float]] = {
    "head_center": (8.0, -17.0, 0.0),
    "basal_ganglia": (2.0, 4.0, 24.0),
    "thalamus": (6.0, -18.0, 12.0),
    "pons": (-30.0, -25.0, 0.0),
    "cerebellum": (-38.0, -60.0, 24.0),
    "frontal": (28.0, 38.0, 28.0),
    "parietal": (42.0, -42.0, 34.0),
    "temporal": (-12.0, -12.0, 46.0),
    "occipital": (10.0, -78.0, 22.0),
    "atrium": (14.0, -38.0, 24.0),
    "pineal": (4.0, -32.0, 0.0),
    "globus_pallidus": (0.0, -2.0, 19.0),
    "suprasellar": (-12.0, 2.0, 0.0),
    "sylvian": (2.0, 4.0, 42.0),
    "petrous": (-36.0, -22.0, 30.0),
}


@dataclass(frozen=True)
class HeadModel:
    kind: str
    res_mm: float
    origin: np.ndarray
    channels: np.ndarray
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)

    @functools.cached_property
    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.channels - _PAD[:, None, None, None])[None]

    def landmark(self, name: str, side: int = 1) -> np.ndarray:
        """A landmark, mirrored to the left (side = -1) by flipping canonical x."""
        point = self.landmarks.get(name, np.asarray(LANDMARKS[name], dtype=float)).copy()
        point[2] *= side
        return point


def template_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def template_available() -> bool:
    try:
        return (template_dir() / _TEMPLATE.format("gm")).is_file()
    except ImportError:
        return False


def resolution_for(spacing: tuple[float, float, float]) -> float:
    """Fine model for sub-millimetre output pixels, coarse (fast) otherwise."""
    return 1.0 if min(spacing[1:]) < 1.0 else 2.0


@functools.lru_cache(maxsize=4)
def head_model(kind: str, res_mm: float) -> HeadModel:
    if res_mm < 2.0:
        return _refined(head_model(kind, 2.0), res_mm)
    if kind == "template":
        gm, wm, csf, icv, origin = _template_tissues(res_mm)
        vent = _template_ventricles(csf, icv, origin, res_mm)
    elif kind == "parametric":
        gm, wm, csf, icv, vent, origin = _parametric_tissues(res_mm)
    else:
        raise ValueError(f'Head model "{kind}" is not known; use "template" or "parametric"')
    return _finish(kind, res_mm, origin, gm, wm, csf, icv, vent)


def _refined(coarse: HeadModel, res: float) -> HeadModel:
    """A finer model: every channel interpolated from the coarse one (distance transforms at 1 mm take half a minute),
    then, for the template, the brain's CT numbers recomputed from the templates at full resolution."""
    factor = coarse.res_mm / res
    origin = coarse.origin - (coarse.res_mm - res) / 2.0
    channels = np.stack([ndi.zoom(c, factor, order=1, mode="nearest", grid_mode=True) for c in coarse.channels])
    if coarse.kind == "template" and res == 1.0:
        gm, wm, csf, _, fine_origin = _template_tissues(1.0)
        offset = np.rint((fine_origin - origin) / res).astype(int)
        brain_hu = 40.0 * gm + 26.0 * wm + 8.0 * np.clip(csf + np.clip(1.0 - gm - wm - csf, 0, 1), 0, 1)
        region = tuple(slice(o, o + n) for o, n in zip(offset, brain_hu.shape, strict=True))
        target = channels[HU][region]
        inside = channels[DIST_IN][region] > 0.0
        target[inside] = brain_hu[: target.shape[0], : target.shape[1], : target.shape[2]][inside]
    return HeadModel(coarse.kind, res, origin, channels.astype(np.float32), dict(coarse.landmarks))


def sample(head: HeadModel, grid: Grid, box: tuple[slice, slice, slice], channels: tuple[int, ...]) -> np.ndarray:
    """Channels of ``head`` resampled (trilinear) onto the output voxels in ``box``: (len(channels), dz, dy, dx)."""
    shape = [s.stop - s.start for s in box]
    out = np.empty((len(channels), *shape), dtype=np.float32)
    src = head.tensor[:, list(channels)]
    to_model = grid.matrix / head.res_mm
    model_offset = (grid.offset - head.origin) / head.res_mm
    to_norm = 2.0 / (np.asarray(head.channels.shape[1:], dtype=float) - 1.0)
    step = max(1, 4_000_000 // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):
        start = np.array([box[0].start + z0, box[1].start, box[2].start], dtype=float)
        size = np.array([min(step, shape[0] - z0), shape[1], shape[2]])
        coords = _normalised_coords(
            to_norm[:, None] * to_model, to_norm * (to_model @ start + model_offset) - 1.0, size
        )
        with torch.no_grad():
            res = torch.nn.functional.grid_sample(
                src, torch.from_numpy(coords)[None], mode="bilinear", align_corners=True
            )
        out[:, z0 : z0 + size[0]] = res[0].numpy()
    out += _PAD[list(channels), None, None, None]
    return out


def _normalised_coords(linear: np.ndarray, shift: np.ndarray, size: np.ndarray) -> np.ndarray:
    """grid_sample's (dz, dy, dx, 3) grid (last axis x, y, z) for model coordinates ``linear @ index + shift``."""
    axes = [np.arange(n, dtype=np.float32) for n in size]
    out = np.empty((*size.tolist(), 3), dtype=np.float32)
    for r in range(3):
        m = linear[r].astype(np.float32)
        plane = m[1] * axes[1][:, None] + m[2] * axes[2][None, :] + np.float32(shift[r])
        np.add(plane[None], (m[0] * axes[0])[:, None, None], out=out[..., 2 - r])
    return out


def _canon_axes(shape: tuple[int, ...], origin: np.ndarray, res: float) -> list[np.ndarray]:
    return [origin[i] + res * np.arange(n, dtype=np.float32) for i, n in enumerate(shape)]


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    pad = [(0, (-n) % f) for n in a.shape]
    a = np.pad(a, pad)
    z, y, x = (n // f for n in a.shape)
    return a.reshape(z, f, y, f, x, f).mean(axis=(1, 3, 5))


def _template_tissues(res: float) -> tuple[np.ndarray, ...]:
    import nibabel as nib

    def load(name: str) -> np.ndarray:
        img: Any = nib.load(str(template_dir() / _TEMPLATE.format(name)))
        return np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0) / 255.0

    gm, wm, t1 = load("gm"), load("wm"), load("t1")
    # The template stops at the medulla: pad below so the skull base closes under the cerebellum.
    below = 30
    gm, wm, t1 = (np.pad(a, ((below, 8), (0, 0), (0, 0))) for a in (gm, wm, t1))
    origin = np.array([-72.0 - below, -134.0, -98.0])
    f = int(round(res))
    brain = _block_mean((t1 > 0).astype(np.float32), f)
    gm, wm = _block_mean(gm, f), _block_mean(wm, f)
    origin = origin + (f - 1) / 2.0
    tissue = np.clip(gm + wm, 0, 1)
    csf = np.clip(brain - tissue, 0, 1)
    icv = ndi.gaussian_filter(brain, 3.0 / res) > 0.3
    icv = ndi.binary_fill_holes(icv)
    return gm, wm, csf, icv, origin


def _template_ventricles(csf: np.ndarray, icv: np.ndarray, origin: np.ndarray, res: float) -> np.ndarray:
    z, y, x = np.meshgrid(*_canon_axes(csf.shape, origin, res), indexing="ij")
    depth = ndi.distance_transform_edt(icv) * res
    box = (np.abs(x) < 32) & (y > -50) & (y < 32) & (z > -8) & (z < 36)
    seeds = (csf > 0.45) & (depth > 14) & box
    labels, n = ndi.label(seeds)
    if n == 0:
        return np.zeros_like(csf)
    sizes = ndi.sum(seeds, labels, index=np.arange(1, n + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 40 / res**3))
    grown = ndi.binary_dilation(keep, iterations=1) & (csf > 0.3) & box
    return ndi.gaussian_filter(grown.astype(np.float32), 0.5) * np.clip(csf * 1.4, 0, 1)


def _ellipsoid(z: np.ndarray, y: np.ndarray, x: np.ndarray, c: tuple, r: tuple) -> np.ndarray:
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2


def _parametric_tissues(res: float) -> tuple[np.ndarray, ...]:
    origin = np.array([-100.0, -134.0, -98.0])
    shape = tuple(int(n / res) + 1 for n in (216.0, 232.0, 196.0))
    z, y, x = np.meshgrid(*_canon_axes(shape, origin, res), indexing="ij")
    ax = np.abs(x)
    icv = _ellipsoid(z, y, x, (8, -17, 0), (74, 88, 69)) < 1
    icv &= ~((y > 5) & (z < -22 - 0.15 * (y - 5)))  # anterior skull base sits higher than the posterior fossa
    icv &= ~((y < -20) & (z < -60))
    depth = ndi.distance_transform_edt(icv).astype(np.float32) * res
    rng = np.random.default_rng(20240611)
    field_ = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 5.0 / res)
    field_ /= field_.std()
    brain = depth > 2.0
    cerebellum = _ellipsoid(z, y, x, (-38, -60, 0), (20, 24, 48)) < 1
    sulci = brain & (np.abs(field_) < 0.09) & (depth < 22)
    sulci |= brain & (ax < 1.2) & (z > -15)  # interhemispheric fissure
    sylvian = brain & (np.abs(z - 2 - 0.25 * (y + 5)) < 1.3) & (ax > 30) & (ax < 60) & (np.abs(y + 5) < 28)
    cisterns = (_ellipsoid(z, y, x, (-14, 0, 0), (6, 12, 14)) < 1) | (
        _ellipsoid(z, y, x, (-26, -14, 0), (10, 5, 10)) < 1
    )
    vent = _parametric_ventricles(z, y, x)
    csf = (sulci | sylvian | cisterns | vent | (icv & ~brain)).astype(np.float32)
    deep = (
        (_ellipsoid(z, y, ax, (2, 4, 24), (10, 14, 6)) < 1)
        | (_ellipsoid(z, y, ax, (6, -18, 11), (8, 12, 7)) < 1)
        | (_ellipsoid(z, y, ax, (14, 10, 13), (8, 12, 4)) < 1)
    )
    cortex = brain & ((depth < 5.5) | (np.abs(field_) < 0.3) & (depth < 24))
    gm = ((cortex | deep | cerebellum & (np.abs(field_) < 0.8)) & (csf < 0.5)).astype(np.float32)
    wm = (brain & (gm < 0.5) & (csf < 0.5)).astype(np.float32)
    smooth = 0.6 / res
    gm, wm, csf = (ndi.gaussian_filter(a, smooth) for a in (gm, wm, csf))
    return gm, wm, csf, icv, ndi.gaussian_filter(vent.astype(np.float32), smooth), origin


def _parametric_ventricles(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    bodies = _ellipsoid(z, y, ax + 0.12 * (z - 18) ** 2 / 4, (18, -8, 11), (7, 30, 5)) < 1
    horns = _ellipsoid(z, y, ax, (12, 18, 10), (8, 10, 5)) < 1
    atria = _ellipsoid(z, y, ax, (12, -38, 22), (8, 10, 7)) < 1
    occipital = _ellipsoid(z, y, ax, (8, -55, 20), (5, 12, 4)) < 1
    temporal = _ellipsoid(z, y, ax, (-14, -18, 32), (4, 14, 4)) < 1
    third = _ellipsoid(z, y, x, (0, -12, 0), (10, 12, 2.2)) < 1
    return bodies | horns | atria | occipital | temporal | third


def _finish(
    kind: str,
    res: float,
    origin: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    icv: np.ndarray,
    vent: np.ndarray,
) -> HeadModel:
    """Adds extra-axial CSF, skull and scalp; derives the atrophy and distance channels."""
    inside = ndi.distance_transform_edt(icv).astype(np.float32) * res
    outside = ndi.distance_transform_edt(~icv).astype(np.float32) * res
    dist_in = inside - outside
    total = gm + wm + csf
    rim = np.clip(1.0 - total, 0, 1) * icv  # the thin subarachnoid space left by smoothing the mask
    csf = np.clip(csf + rim, 0, 1)
    brain_hu = 40.0 * gm + 26.0 * wm + 8.0 * csf
    z, y, x = np.meshgrid(*_canon_axes(icv.shape, origin, res), indexing="ij")
    hu = np.where(icv, brain_hu, _skull_and_scalp(-dist_in, z, y, x)).astype(np.float32)
    widened = np.clip(ndi.gaussian_filter(csf, 1.2 / res) * 1.9, 0, 1)
    big_vent = np.clip(ndi.gaussian_filter(vent, 2.5 / res) * 2.2, 0, 1)
    gain = np.clip(np.maximum(widened, big_vent) - csf, 0, 1) * icv * (dist_in > 1.5)
    atrophy = (gain * (8.0 - brain_hu)).astype(np.float32)
    channels = np.stack([hu, atrophy, dist_in, csf.astype(np.float32), vent.astype(np.float32)])
    model = HeadModel(kind, res, origin.astype(float), channels)
    model.landmarks.update(_snap_landmarks(model))
    return model


def _skull_and_scalp(d: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """CT numbers outside the inner table, by depth ``d`` (mm): bone tables and diploe, fat, scalp, then air."""
    thick = 5.5 + 1.5 * np.cos(np.deg2rad(np.arctan2(y + 17, np.abs(x) + 1) * 57.3)) + 1.5 * (z < -20)
    temporal = 4.0 * np.exp(-(((z + 5) / 25) ** 2)) * (np.abs(x) > 40)  # temporalis muscle widens the scalp
    frac = np.clip(d / thick, 0, 1)
    bone = 650.0 + 1000.0 * np.abs(2 * frac - 1) ** 1.5
    hu = np.full(d.shape, -1000.0, dtype=np.float32)
    scalp_out = thick + 6.0 + temporal
    hu = np.where(d <= scalp_out, 35.0, hu)
    hu = np.where((d > thick + 1.0) & (d < thick + 2.5), -80.0, hu)
    return np.where(d <= thick, bone, hu)


def _snap_landmarks(model: HeadModel) -> dict[str, np.ndarray]:
    """Moves the ventricle landmarks onto the model's own ventricles (the template's differ from the defaults)."""
    vent = model.channels[VENT]
    pts = np.argwhere(vent > 0.5)
    if pts.size == 0:
        return {}
    canon = model.origin + pts * model.res_mm
    target = np.asarray(LANDMARKS["atrium"])
    best = canon[np.argmin(np.sum((canon - target) ** 2, axis=1))]
    return {"atrium": best}

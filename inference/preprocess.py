"""HU volume with spacing → model input, in torch on the model's device.

Both findings resample to a fixed millimetre grid centred on the head, so scanner field of view and matrix size do
not change the apparent anatomy. Downsampling averages (``area``) so thin slices are combined the way a thick
reconstruction would combine them; upsampling interpolates linearly. The volume is converted to a float32 tensor
once and cropped by views before any arithmetic, which keeps a 250×512×512 study well under a second and
about one extra copy of memory.

Each result carries a ``GridMap`` that takes model-grid voxel indices back to the original volume, so key slices
and boxes are reported in the coordinates of the study that was sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage as ndi

AIR_HU = -1000.0
# Voxels above this are inside the head (skin, brain, bone); used only to find the head's centre.
HEAD_HU = -300.0
# Scanners store air at -1024 and pad outside the reconstruction circle with -2000, -3024 or lower; some extend the
# scale for metal above 3071. Values are clamped to this range after the in-plane resize, so padding never darkens
# an averaged edge and every study reaches the network on the same scale.
HU_RANGE: tuple[float, float] = (-1024.0, 3071.0)
# Vertex to the foramen magnum and a little more: what the crop is centred on when a scan also covers neck and chest.
HEAD_HEIGHT_MM = 200.0

# (level, width) per channel. Brain and subdural windows show blood; the soft-tissue window keeps calcification
# (over 100 HU) apart from blood (50–90 HU), which both saturate in the narrow windows.
ICH_WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 80.0), (80.0, 200.0), (40.0, 380.0))
# Opacified arteries are 150–450 HU and thrombus 40–60 HU: a wide window centred between them keeps both.
LVO_WINDOW: tuple[float, float] = (150.0, 500.0)


@dataclass(frozen=True)
class GridSpec:
    """A model grid: voxel spacing in mm (z, y, x) and the fixed size of the axes that are cropped or padded."""

    spacing_mm: tuple[float, float, float]
    # None for z means "keep the whole z extent" (ICH looks at every slice).
    shape: tuple[int | None, int, int]


ICH_GRID = GridSpec(spacing_mm=(5.0, 1.75, 1.75), shape=(None, 128, 128))
LVO_GRID = GridSpec(spacing_mm=(1.75, 1.75, 1.75), shape=(64, 112, 112))


@dataclass(frozen=True)
class GridMap:
    """Original voxel coordinate = ``origin + index * step`` per axis (z, y, x), for model-grid voxel centres."""

    origin: tuple[float, float, float]
    step: tuple[float, float, float]
    model_shape: tuple[int, int, int]
    original_shape: tuple[int, int, int]

    def to_original(self, index: tuple[float, float, float]) -> tuple[float, float, float]:
        return tuple(o + i * s for o, i, s in zip(self.origin, index, self.step, strict=True))  # type: ignore[return-value]

    def slice_to_original(self, model_slice: int) -> int:
        z = self.origin[0] + model_slice * self.step[0]
        return int(min(max(round(z), 0), self.original_shape[0] - 1))

    def box_to_original(self, low: tuple[float, float, float], high: tuple[float, float, float]) -> list[int]:
        """A box given by model-grid voxel bounds (inclusive low, exclusive high) → [z0, y0, x0, z1, y1, x1]."""
        out_low, out_high = [], []
        for axis in range(3):
            a = self.origin[axis] + (low[axis] - 0.5) * self.step[axis] + 0.5
            b = self.origin[axis] + (high[axis] - 0.5) * self.step[axis] + 0.5
            n = self.original_shape[axis]
            out_low.append(int(min(max(np.floor(a), 0), n - 1)))
            out_high.append(int(min(max(np.ceil(b), 1), n)))
        return out_low + out_high


@dataclass
class Prepared:
    tensor: torch.Tensor  # ICH: (S, 3, H, W); LVO: (2, D, H, W); float32 on the device
    grid: GridMap


def as_tensor(volume_hu: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A float32 tensor on ``device``, without a copy when the array is already float32 and on the CPU."""
    if isinstance(volume_hu, torch.Tensor):
        t = volume_hu
    else:
        arr = volume_hu if volume_hu.dtype == np.float32 else volume_hu.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def head_centre(
    volume: torch.Tensor, spacing_mm: tuple[float, float, float] | None = None
) -> tuple[float, float, float]:
    """Centroid (z, y, x) in voxels of the head, from a strided subsample (cheap on big volumes).

    Only the largest connected part above ``HEAD_HU`` counts, so a table, a head holder, a padding ring outside the
    reconstruction circle or a separate object does not pull the crop off the head. With ``spacing_mm``, only the
    top ``HEAD_HEIGHT_MM`` of the scan counts, so a head-and-neck acquisition (shoulders included) is centred on
    the head as a head-only one is."""
    steps = [max(1, n // 32) for n in volume.shape]
    sub = volume[:: steps[0], :: steps[1], :: steps[2]]
    inside = ((sub > HEAD_HU) & (sub <= HU_RANGE[1])).cpu().numpy()
    if spacing_mm is not None:
        inside = _top_of_scan(inside, HEAD_HEIGHT_MM / (steps[0] * float(spacing_mm[0])))
    labels, count = ndi.label(inside)
    if count == 0:
        return tuple((n - 1) / 2.0 for n in volume.shape)  # type: ignore[return-value]
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        inside = labels == int(sizes.argmax())
    mean = np.argwhere(inside).mean(axis=0).tolist()
    z, y, x = (m * s + (s - 1) / 2.0 for m, s in zip(mean, steps, strict=True))
    return z, y, x


def _top_of_scan(inside: np.ndarray, height: float) -> np.ndarray:
    """Keeps the slices within ``height`` (slices) below the highest one that holds a tenth of the largest section."""
    area = inside.sum(axis=(1, 2))
    if not area.any():
        return inside
    top = int(np.flatnonzero(area >= 0.1 * area.max())[-1])
    keep = np.arange(inside.shape[0]) >= top - height
    return inside & keep[:, None, None]


def _crop_plan(resized_len: int, step: float, centre: float, target_len: int | None) -> tuple[int, int, int, int]:
    """Where to cut one resampled axis: (start, stop, pad_before, pad_after), keeping the head centre in the middle."""
    if target_len is None:
        return 0, resized_len, 0, 0
    centre_resized = (centre + 0.5) / step - 0.5
    first = round(centre_resized - (target_len - 1) / 2.0)
    start, stop = max(first, 0), min(first + target_len, resized_len)
    stop = max(stop, start)
    pad_before = start - first
    return start, stop, pad_before, target_len - pad_before - (stop - start)


def resample_to_grid(
    volume: torch.Tensor,
    spacing_mm: tuple[float, float, float],
    grid: GridSpec,
    *,
    centre: tuple[float, float, float] | None = None,
    fill: float = AIR_HU,
    hu_range: tuple[float, float] | None = HU_RANGE,
) -> tuple[torch.Tensor, GridMap]:
    """Resample to ``grid`` spacing, then crop around the head centre and pad with air: (D, H, W) and the map.

    Resampling the whole contiguous volume before cropping is faster than resampling a strided crop, and after
    in-plane averaging everything left is small. ``centre`` (voxels), ``fill`` and ``hu_range=None`` (no clamping)
    let a label mask follow the crop of its volume.
    """
    centre = centre if centre is not None else head_centre(volume, spacing_mm)
    size = [
        max(1, round(n * float(sp) / t)) for n, sp, t in zip(volume.shape, spacing_mm, grid.spacing_mm, strict=True)
    ]
    steps = [n / r for n, r in zip(volume.shape, size, strict=True)]
    # In-plane first, with the slices as the batch: the big axes shrink before anything touches z.
    plane = _resize(volume.unsqueeze(1), (size[1], size[2]))  # (Z, 1, h, w)
    if hu_range is not None:
        plane = plane.clamp(*hu_range)
    vol = _resize(plane.squeeze(1)[None, None], tuple(size))[0, 0]
    plans = [_crop_plan(size[a], steps[a], centre[a], grid.shape[a]) for a in range(3)]
    vol = vol[plans[0][0] : plans[0][1], plans[1][0] : plans[1][1], plans[2][0] : plans[2][1]]
    pads: list[int] = []
    for plan in reversed(plans):  # F.pad takes the last axis first
        pads += [plan[2], plan[3]]
    if any(pads):
        vol = F.pad(vol, pads, value=fill)
    origin = tuple((p[0] - p[2] + 0.5) * st - 0.5 for p, st in zip(plans, steps, strict=True))
    gmap = GridMap(origin, tuple(steps), tuple(vol.shape), tuple(volume.shape))  # type: ignore[arg-type]
    return vol.contiguous(), gmap


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Area averaging on axes that shrink, linear interpolation on axes that grow (one pass per kind)."""
    current = tuple(x.shape[2:])
    if current == tuple(size):
        return x
    shrink = tuple(min(c, s) for c, s in zip(current, size, strict=True))
    if shrink != current:
        x = F.interpolate(x, size=shrink, mode="area")
    if shrink != tuple(size):
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        x = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return x


def window(volume: torch.Tensor, level: float, width: float) -> torch.Tensor:
    low = level - width / 2.0
    return ((volume - low) / width).clamp_(0.0, 1.0)


def prepare_ich(
    volume_hu: np.ndarray | torch.Tensor, spacing_mm: tuple[float, float, float], device: torch.device | str = "cpu"
) -> Prepared:
    """(S, 3, 128, 128): 5 mm slices, 1.75 mm pixels, brain / subdural / soft-tissue windows."""
    vol, gmap = resample_to_grid(as_tensor(volume_hu, device), spacing_mm, ICH_GRID)
    channels = torch.stack([window(vol, level, width) for level, width in ICH_WINDOWS], dim=1)
    return Prepared(channels, gmap)


def prepare_lvo(
    volume_hu: np.ndarray | torch.Tensor, spacing_mm: tuple[float, float, float], device: torch.device | str = "cpu"
) -> Prepared:
    """(2, 64, 112, 112) at 1.75 mm: the windowed crop and its left–right mirror image."""
    vol, gmap = resample_to_grid(as_tensor(volume_hu, device), spacing_mm, LVO_GRID)
    w = window(vol, *LVO_WINDOW)
    return Prepared(torch.stack([w, w.flip(-1)], dim=0), gmap)


PREPARERS = {"ich": prepare_ich, "lvo": prepare_lvo}

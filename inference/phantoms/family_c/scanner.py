"""Family C's acquisition, done in the frequency domain: a box slice profile over thin sub-slices, a modulation
transfer function per kernel, noise shaped by a ramp-and-window noise power spectrum whose level follows the path
length through the head, a Hounsfield bar between the petrous bones, cupping, and int16 storage."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from inference.phantoms.family_c.head import Head

# name, MTF 50 % frequency (cycles/mm), edge boost
KERNELS = (("soft", 0.35, 0.0), ("standard", 0.5, 0.0), ("detail", 0.65, 0.15), ("sharp", 0.8, 0.35))


def slab_average(volume: np.ndarray, k: int) -> np.ndarray:
    """Mean of each run of ``k`` sub-slices: the box slice-sensitivity profile of a thick reconstruction."""
    n = volume.shape[0] // k
    return volume[: n * k].reshape(n, k, *volume.shape[1:]).mean(axis=1)


def _frequencies(ny: int, nx: int, pixel: float) -> np.ndarray:
    fy = np.fft.fftfreq(ny, d=pixel)[:, None]
    fx = np.fft.rfftfreq(nx, d=pixel)[None, :]
    return np.sqrt(fy**2 + fx**2).astype(np.float32)


def apply_mtf(volume: np.ndarray, pixel: float, f50: float, boost: float) -> np.ndarray:
    """Multiplies each slice's spectrum by exp(-ln2 (f/f50)^2), lifted at mid frequencies by ``boost``."""
    f = _frequencies(volume.shape[1], volume.shape[2], pixel)
    mtf = np.exp(-np.log(2.0) * (f / f50) ** 2) * (1.0 + boost * (f / f50) ** 2)
    spec = np.fft.rfft2(volume, axes=(1, 2)) * mtf[None]
    return np.fft.irfft2(spec, s=volume.shape[1:], axes=(1, 2)).astype(np.float32)


def noise(rng: np.random.Generator, shape: tuple[int, int, int], pixel: float, f50: float) -> np.ndarray:
    """Unit-variance noise with a CT-like spectrum: rising with frequency (filtered back-projection's ramp), rolled off
    by the kernel's window."""
    f = _frequencies(shape[1], shape[2], pixel)
    nps = f * np.exp(-np.log(2.0) * (f / f50) ** 2)
    white = rng.standard_normal(shape, dtype=np.float32)
    shaped = np.fft.irfft2(np.fft.rfft2(white, axes=(1, 2)) * nps[None], s=shape[1:], axes=(1, 2))
    return (shaped / (shaped.std() + 1e-6)).astype(np.float32)


def path_weight(volume: np.ndarray, pixel: float) -> np.ndarray:
    """Relative noise level per voxel: higher where the beam crosses more of the head (its centre, the skull base)."""
    dense = (volume > -300.0).astype(np.float32) + (volume > 500.0).astype(np.float32) * 1.5
    path = ndi.gaussian_filter(dense, (0.0, 25.0 / pixel, 25.0 / pixel))
    return (0.75 + 0.5 * path / (path.max() + 1e-6)).astype(np.float32)


def hounsfield_bar(rng: np.random.Generator, head: Head, strength: float) -> None:
    """A dark band between the petrous bones and a few streaks from them, in the posterior fossa slices."""
    near = np.flatnonzero(np.abs(head.world[0] + 36.0).min(axis=(1, 2)) < 25.0)
    if near.size == 0:
        return
    box = slice(int(near[0]), int(near[-1]) + 1)
    w = head.world[:, box]
    a, b = np.array([-36.0, 8.0, -30.0]), np.array([-36.0, 8.0, 30.0])
    ab = b - a
    rel = w - a[:, None, None, None].astype(np.float32)
    t = np.clip((rel[1] * ab[1] + rel[2] * ab[2]) / float(ab[1:] @ ab[1:]), 0, 1)
    d = np.hypot(rel[1] - t * ab[1], rel[2] - t * ab[2])
    level = np.exp(-(((w[0] + 36.0) / 9.0) ** 2))
    bar = -strength * rng.uniform(10.0, 30.0) * np.exp(-((d / rng.uniform(3.0, 7.0)) ** 2)) * level
    for _ in range(int(rng.integers(2, 6))):
        origin = a if rng.random() < 0.5 else b
        theta = rng.uniform(0, np.pi)
        dist = np.abs(np.cos(theta) * (w[1] - origin[1]) - np.sin(theta) * (w[2] - origin[2]))
        bar += strength * rng.choice([-1.0, 0.6]) * rng.uniform(8.0, 25.0) * np.exp(-((dist / 1.0) ** 2)) * level
    head.hu[box] += (bar * (head.depth[box] > 0)).astype(np.float32)


def cupping(rng: np.random.Generator, head: Head) -> None:
    r = np.sqrt(np.sum((head.world / head.axes[:, None, None, None].astype(np.float32)) ** 2, axis=0))
    head.hu -= (rng.uniform(0.0, 6.0) * np.clip(1.0 - r**2, 0, 1) * (head.depth > 0)).astype(np.float32)


def acquire(
    rng: np.random.Generator, volume: np.ndarray, *, k: int, pixel: float, kind: str
) -> tuple[np.ndarray, dict[str, object]]:
    """Thin sub-slices in, the stored study out (float32 HU of int16 values) and what was drawn."""
    name, f50, boost = KERNELS[int(rng.integers(len(KERNELS) if kind == "cta" else 3))]
    f50 *= rng.uniform(0.85, 1.15)
    out = slab_average(volume, k)
    out = apply_mtf(out, pixel, f50, boost)
    sd = rng.uniform(2.5, 5.0) if kind == "ncct" else rng.uniform(7.0, 16.0)
    sd *= np.sqrt(0.5 / pixel) * np.sqrt(5.0 / (k * 2.5) if kind == "ncct" else 1.0)
    out += noise(rng, out.shape, pixel, f50 * 1.1) * path_weight(out, pixel) * np.float32(sd)
    out = np.clip(np.rint(out), -1024, 3071).astype(np.float32)
    return out, {"kernel": name, "mtf50_per_mm": round(f50, 3), "noise_hu": round(float(sd), 2)}

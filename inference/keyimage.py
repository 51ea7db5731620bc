"""Key image: the key slice in the brain window with the model's heatmap and box, marked as AI output.

Encoded as PNG with zlib alone and labelled with a built-in 5×7 bitmap font, so no imaging library is needed.
The "AI OUTPUT – ADVISORY" banner is burnt into the pixels: a screenshot or export cannot lose it.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

if TYPE_CHECKING:
    from inference.runner import TriageOutput

BANNER = "AI OUTPUT - ADVISORY"
BRAIN_WINDOW = (40.0, 80.0)

# 5×7 glyphs, one string of 7 rows per character, '#' = ink.
_GLYPHS: dict[str, str] = {
    "A": ".###.#...##...#######...##...##...#",
    "B": "####.#...#####.#...##...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.",
    "D": "####.#...##...##...##...##...#####.",
    "E": "######....####.#....#....#....#####",
    "F": "######....####.#....#....#....#....",
    "G": ".###.#...##....#.####...##...#.####",
    "H": "#...##...#######...##...##...##...#",
    "I": ".###...#....#....#....#....#...###.",
    "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##...##...##...##...#",
    "N": "#...###..##.#.##..###...##...##...#",
    "O": ".###.#...##...##...##...##...#.###.",
    "P": "####.#...##...#####.#....#....#....",
    "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".####.....#.....###.....#....#####.",
    "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.",
    "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.",
    "Y": "#...##...#.#.#...#....#....#....#..",
    "X": "#...##...#.#.#...#...#.#.#...##...#",
    "0": ".###.#...##..###.#.###..##...#.###.",
    "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####",
    "3": "#####...#...#.....#.....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.",
    "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.",
    "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.",
    "9": ".###.#...##...#.####....#...#..##..",
    ".": "..............................##...",
    ":": ".......##..##.......##..##.........",
    "-": "................###................",
    " ": "...................................",
}


def _glyph(ch: str) -> np.ndarray:
    rows = _GLYPHS.get(ch.upper(), _GLYPHS[" "]).ljust(35, ".")
    return np.array([c == "#" for c in rows[:35]], dtype=bool).reshape(7, 5)


def _draw_text(img: np.ndarray, text: str, top: int, left: int, scale: int, colour: tuple[int, int, int]) -> None:
    for i, ch in enumerate(text):
        ink = np.kron(_glyph(ch), np.ones((scale, scale), dtype=bool))
        y0, x0 = top, left + i * 6 * scale
        h, w = min(ink.shape[0], img.shape[0] - y0), min(ink.shape[1], img.shape[1] - x0)
        if h <= 0 or w <= 0:
            return
        img[y0 : y0 + h, x0 : x0 + w][ink[:h, :w]] = colour


def encode_png(rgb: np.ndarray) -> bytes:
    """A truecolour 8-bit PNG from an (H, W, 3) uint8 array."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("encode_png needs an (H, W, 3) uint8 array")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _heat_colour(heat: np.ndarray) -> np.ndarray:
    """Transparent below 0.3, then red to yellow."""
    rgb = np.zeros(heat.shape + (3,), dtype=np.float32)
    rgb[..., 0] = 255.0
    rgb[..., 1] = 255.0 * np.clip((heat - 0.5) / 0.5, 0.0, 1.0)
    return rgb


def render_key_image(volume_hu: np.ndarray, output: TriageOutput, *, max_size: int = 512) -> bytes:
    """PNG of the key slice (brain window) with heatmap, box, score and the advisory banner."""
    z = int(np.clip(output.key_slice, 0, volume_hu.shape[0] - 1))
    level, width = BRAIN_WINDOW
    grey = np.clip((volume_hu[z].astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if output.heatmap is not None and output.heatmap_extent is not None:
        _overlay_heatmap(rgb, output.heatmap, output.heatmap_extent)
    if output.box is not None and output.box[0] <= z < output.box[3]:
        _draw_box(rgb, output.box[1], output.box[2], output.box[4], output.box[5])
    img = _fit(rgb, max_size).astype(np.uint8)
    img = np.concatenate([np.zeros((40, img.shape[1], 3), dtype=np.uint8), img], axis=0)
    _draw_text(img, BANNER, 4, 4, 2, (255, 200, 0))
    label = f"{output.finding} {output.score:.2f} {'POSITIVE' if output.positive else 'NEGATIVE'}"
    _draw_text(img, label, 24, 4, 2, (255, 255, 255))
    return encode_png(np.ascontiguousarray(img))


def _overlay_heatmap(rgb: np.ndarray, heatmap: np.ndarray, extent: list[int]) -> None:
    y0, x0, y1, x1 = extent
    if y1 <= y0 or x1 <= x0:
        return
    small = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = F.interpolate(small, size=(y1 - y0, x1 - x0), mode="bilinear")[0, 0].numpy()
    alpha = np.clip((heat - 0.3) / 0.7, 0.0, 1.0)[..., None] * 0.6
    region = rgb[y0:y1, x0:x1]
    region[:] = region * (1.0 - alpha) + _heat_colour(heat) * alpha


def _draw_box(rgb: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> None:
    colour = np.array([0.0, 255.0, 255.0], dtype=np.float32)
    y1, x1 = min(y1, rgb.shape[0]) - 1, min(x1, rgb.shape[1]) - 1
    rgb[y0, x0 : x1 + 1] = colour
    rgb[y1, x0 : x1 + 1] = colour
    rgb[y0 : y1 + 1, x0] = colour
    rgb[y0 : y1 + 1, x1] = colour


def _fit(rgb: np.ndarray, max_size: int) -> np.ndarray:
    h, w, _ = rgb.shape
    factor = max(1, int(np.ceil(max(h, w) / max_size)))
    if factor == 1:
        return rgb
    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    return F.avg_pool2d(t, factor)[0].permute(1, 2, 0).numpy()

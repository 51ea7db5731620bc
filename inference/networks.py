"""Triage networks, registered by architecture name so a ``state_dict`` plus that name can be loaded.

Both networks return a dict of tensors (TorchScript-compatible) with at least ``logit`` (B,) and ``cam`` (a map of
per-location logits that localises the finding). The study logit is a soft maximum of the map, so the map is the
network's own evidence rather than a post-hoc explanation.

- ``ich2d-v1`` (non-contrast CT): input (B, S, 3, H, W): S axial slices at 5 mm, three HU windows each. A 2D CNN
  per slice, a slice-context convolution across neighbouring slices, then 1×1 heads giving one hemorrhage map and
  five subtype maps (EDH, SDH, IPH, SAH, IVH) at 1/8 resolution. Outputs ``logit``, ``slice_logits`` (B, S),
  ``subtype_logits`` (B, 5), ``cam`` (B, S, H/8, W/8). ``ich2d-v2`` is the same network whose first convolution
  keeps the full 1.75 mm grid, so a bleed one pixel thick reaches the second layer intact. ``ich2d-v3`` (shipped)
  is ``ich2d-v2`` that, in eval mode, also reads the left–right mirror image of the study and averages the two
  readings (logits, and the map flipped back): same parameters, twice the inference cost, training unchanged.
- ``lvo3d-v1`` (CT angiography): input (B, 2, D, H, W): the windowed crop and its left–right mirror, so one-sided
  asymmetry is visible to every filter. A small 3D CNN gives an occlusion map at 1/8 resolution. Outputs ``logit``,
  ``side_logit`` (B,) (> 0: occlusion in the high-x half of the crop), ``cam`` (B, D/8, H/8, W/8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

ICH_SUBTYPES: tuple[str, ...] = ("edh", "sdh", "iph", "sah", "ivh")
LVO_SIDES: tuple[str, ...] = ("right", "left")


def _soft_max_pool(x: torch.Tensor, dims: list[int], sharpness: float) -> torch.Tensor:
    """Log-sum-exp pooling normalised by the count: between mean (sharpness→0) and max (sharpness→∞)."""
    n = 1
    for d in dims:
        n *= x.shape[d]
    lse = torch.logsumexp(x * sharpness, dim=dims)
    return (lse - torch.log(torch.tensor(float(n), device=x.device, dtype=x.dtype))) / sharpness


def _conv_bn_relu2d(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _conv_bn_relu3d(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class IchNet(nn.Module):
    """2D CNN over windowed slices with context across slices; about 0.3 M parameters."""

    in_channels: int = 3

    def __init__(
        self, width: int = 16, sharpness: float = 6.0, full_resolution_stem: bool = False, mirror_average: bool = False
    ) -> None:
        super().__init__()
        w = width
        # The stem either halves the grid at once (v1) or looks at full resolution first (v2): a 2 mm bleed spans
        # about one 1.75 mm pixel. Both reach 1/8 with the same layers and the same parameter shapes.
        s1, s3 = (1, 2) if full_resolution_stem else (2, 1)
        self.encoder = nn.Sequential(
            _conv_bn_relu2d(3, w, stride=s1),
            _conv_bn_relu2d(w, 2 * w, stride=2),
            _conv_bn_relu2d(2 * w, 2 * w, stride=s3),  # 1/4
            _conv_bn_relu2d(2 * w, 4 * w, stride=2),  # 1/8
            _conv_bn_relu2d(4 * w, 4 * w),
            _conv_bn_relu2d(4 * w, 8 * w),
            _conv_bn_relu2d(8 * w, 8 * w, dilation=2),
        )
        c = 8 * w
        # Blood on one slice is judged with its neighbours (partial volume, calcification that continues).
        self.slice_context = nn.Sequential(
            nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(c),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(c, 1 + len(ICH_SUBTYPES), 1)
        self.sharpness = sharpness
        self.mirror_average = mirror_average

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._read(x)
        if self.mirror_average and not self.training:
            # A bleed and its mirror image are the same finding: averaging the two readings steadies the score.
            mirrored = self._read(x.flip(-1))
            for key in ("logit", "slice_logits", "subtype_logits"):
                out[key] = 0.5 * (out[key] + mirrored[key])
            out["cam"] = 0.5 * (out["cam"] + mirrored["cam"].flip(-1))
        return out

    def _read(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, s, ch, h, w = x.shape
        feats = self.encoder(x.reshape(b * s, ch, h, w))
        c, fh, fw = feats.shape[1], feats.shape[2], feats.shape[3]
        vol = feats.reshape(b, s, c, fh, fw).permute(0, 2, 1, 3, 4)  # (B, C, S, h, w)
        vol = vol + self.slice_context(vol)
        feats = vol.permute(0, 2, 1, 3, 4).reshape(b * s, c, fh, fw)
        maps = self.head(feats).reshape(b, s, -1, fh, fw)
        cam = maps[:, :, 0]
        slice_logits = _soft_max_pool(cam, [2, 3], self.sharpness)
        logit = _soft_max_pool(slice_logits, [1], self.sharpness * 2.0)
        subtype_logits = _soft_max_pool(maps[:, :, 1:].permute(0, 2, 1, 3, 4), [2, 3, 4], self.sharpness)
        return {"logit": logit, "slice_logits": slice_logits, "subtype_logits": subtype_logits, "cam": cam}


class LvoNet(nn.Module):
    """Small 3D CNN on the CTA crop and its mirror image."""

    in_channels: int = 2

    def __init__(self, width: int = 12, sharpness: float = 6.0) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            _conv_bn_relu3d(2, w, stride=2),  # 1/2
            _conv_bn_relu3d(w, w),
            _conv_bn_relu3d(w, 2 * w, stride=2),  # 1/4
            _conv_bn_relu3d(2 * w, 2 * w),
            _conv_bn_relu3d(2 * w, 4 * w, stride=2),  # 1/8
            _conv_bn_relu3d(4 * w, 4 * w),
            _conv_bn_relu3d(4 * w, 4 * w),
        )
        self.head = nn.Conv3d(4 * w, 1, 1)
        self.sharpness = sharpness

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cam = self.head(self.encoder(x))[:, 0]  # (B, d, h, w)
        logit = _soft_max_pool(cam, [1, 2, 3], self.sharpness)
        half = cam.shape[3] // 2
        low_x = _soft_max_pool(cam[:, :, :, :half], [1, 2, 3], self.sharpness)
        high_x = _soft_max_pool(cam[:, :, :, cam.shape[3] - half :], [1, 2, 3], self.sharpness)
        return {"logit": logit, "side_logit": high_x - low_x, "cam": cam}


@dataclass(frozen=True)
class Architecture:
    name: str
    finding: str
    build: Callable[[], nn.Module]
    in_channels: int


ARCHITECTURES: dict[str, Architecture] = {
    "ich2d-v1": Architecture("ich2d-v1", "ich", IchNet, 3),
    "ich2d-v2": Architecture("ich2d-v2", "ich", lambda: IchNet(full_resolution_stem=True), 3),
    "ich2d-v3": Architecture("ich2d-v3", "ich", lambda: IchNet(full_resolution_stem=True, mirror_average=True), 3),
    "lvo3d-v1": Architecture("lvo3d-v1", "lvo", LvoNet, 2),
}

DEFAULT_ARCHITECTURE: dict[str, str] = {"ich": "ich2d-v3", "lvo": "lvo3d-v1"}


def build_network(architecture: str) -> nn.Module:
    """A freshly initialised network for a registered architecture name (KeyError if unknown)."""
    return ARCHITECTURES[architecture].build()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""The model runner: HU volume and spacing in, an advisory triage result out.

A ``ModelRunner`` loads its model once (per process) on an explicit device; ``run`` preprocesses in torch on that
device, runs the network under ``torch.inference_mode()`` and maps the localisation back to the voxel coordinates
of the volume that was sent. ``run_batch`` groups studies of equal model-grid shape, with mixed precision on CUDA.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage as ndi

from inference.inputcheck import input_check
from inference.keyimage import render_key_image
from inference.loader import LoadedModel, load_model, shipped_weights
from inference.networks import ICH_SUBTYPES
from inference.preprocess import PREPARERS, GridMap, Prepared

logger = logging.getLogger(__name__)

__all__ = ["DeviceUnavailable", "ModelRunner", "TriageOutput", "render_key_image", "resolve_device"]

HEATMAP_SIZE = 64
DEFAULT_THRESHOLD = 0.5


class DeviceUnavailable(RuntimeError):
    code = "device_unavailable"


@dataclass
class TriageOutput:
    finding: str
    model_name: str
    model_version: str
    score: float  # 0..1
    threshold: float
    positive: bool
    key_slice: int  # index into the original volume's first (z) axis
    # [z0, y0, x0, z1, y1, x1] in original voxels, end exclusive; the most suspicious region, None if not localised.
    box: list[int] | None
    heatmap: np.ndarray | None  # (64, 64) float32 in 0..1 over the key slice's model field of view
    heatmap_extent: list[int] | None  # [y0, x0, y1, x1] of the original slice that the heatmap covers
    subtype_scores: dict[str, float] | None = None
    side: str | None = None  # "left" / "right" (patient side, LPS volume) for LVO
    side_score: float | None = None  # probability that the occlusion is on the patient's left
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    advisory: bool = True  # AI output: a prompt to read sooner, never a diagnosis
    # The study against the card's validated ranges (inference.inputcheck): outside them, the score is shown but
    # must not raise the study's priority.
    input_check: dict[str, Any] | None = None

    @property
    def in_validated_range(self) -> bool:
        return self.input_check is None or bool(self.input_check.get("in_range", True))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, heatmap omitted (it is rendered into the key image)."""
        out = asdict(self)
        out.pop("heatmap")
        return out


def resolve_device(device: str | torch.device) -> torch.device:
    """Validate an explicit device; CUDA is used only when asked for, and asking without CUDA is an error."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f'Device "{device}" was requested but CUDA is not available')
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailable(f'Device "{device}" does not exist ({torch.cuda.device_count()} GPUs)')
    elif dev.type != "cpu":
        raise DeviceUnavailable(f'Device "{device}" is not supported (use cpu, cuda or cuda:N)')
    return dev


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ModelRunner:
    """Loads one triage model on one device; reuse the instance for every study in the process."""

    def __init__(
        self,
        finding: str,
        *,
        weights: str | Path | None = None,
        sha256: str | None = None,
        architecture: str | None = None,
        device: str | torch.device = "cpu",
        threshold: float | None = None,
        num_threads: int | None = None,
    ) -> None:
        if finding not in PREPARERS:
            raise ValueError(f'finding must be one of {sorted(PREPARERS)}, got "{finding}"')
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(num_threads or available_cores())
        self.finding = finding
        self.model: LoadedModel = load_model(
            Path(weights) if weights else shipped_weights(finding),
            finding=finding,
            sha256=sha256,
            architecture=architecture,
            device=self.device,
        )
        card_threshold = self.model.card.get("threshold")
        self.threshold = float(threshold if threshold is not None else card_threshold or DEFAULT_THRESHOLD)

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def model_version(self) -> str:
        return self.model.version

    def run(self, volume_hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> TriageOutput:
        return self.run_batch([(volume_hu, spacing_mm)])[0]

    def run_batch(self, studies: list[tuple[np.ndarray, tuple[float, float, float]]]) -> list[TriageOutput]:
        """Run several studies; on CUDA, equal-shaped inputs share one forward pass in mixed precision."""
        results: list[TriageOutput | None] = [None] * len(studies)
        with torch.inference_mode():
            start = time.perf_counter()
            prepared = [PREPARERS[self.finding](vol, spacing, self.device) for vol, spacing in studies]
            self._sync()
            prep_s = (time.perf_counter() - start) / max(1, len(studies))
            for indices in self._groups(prepared):
                t0 = time.perf_counter()
                outputs = self._forward(torch.stack([prepared[i].tensor for i in indices]))
                self._sync()
                fwd_s = (time.perf_counter() - t0) / len(indices)
                for row, i in enumerate(indices):
                    t1 = time.perf_counter()
                    one = {k: v[row].float().cpu() for k, v in outputs.items()}
                    result = self._postprocess(one, prepared[i].grid)
                    volume, spacing = studies[i]
                    result.input_check = input_check(
                        volume, spacing, finding=self.finding, card=self.model.card
                    ).as_dict()
                    post_s = time.perf_counter() - t1
                    result.timings = {
                        "preprocess_s": prep_s,
                        "forward_s": fwd_s,
                        "postprocess_s": post_s,
                        "total_s": prep_s + fwd_s + post_s,
                    }
                    results[i] = result
        return [r for r in results if r is not None]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _groups(self, prepared: list[Prepared]) -> list[list[int]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(tuple(p.tensor.shape), []).append(i)
        return list(groups.values())

    def _forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                out = self.model.module(batch)
        else:
            out = self.model.module(batch)
        return out if isinstance(out, dict) else {"logit": out.reshape(-1)}

    def _postprocess(self, out: dict[str, torch.Tensor], grid: GridMap) -> TriageOutput:
        score = float(torch.sigmoid(out["logit"].reshape(())))
        result = TriageOutput(
            finding=self.finding,
            model_name=self.model.name,
            model_version=self.model.version,
            score=score,
            threshold=self.threshold,
            positive=score >= self.threshold,
            key_slice=grid.original_shape[0] // 2,
            box=None,
            heatmap=None,
            heatmap_extent=None,
            device=str(self.device),
        )
        if "cam" in out:
            _localise(result, out["cam"], grid, out.get("slice_logits"))
        if "subtype_logits" in out:
            probs = torch.sigmoid(out["subtype_logits"]).tolist()
            result.subtype_scores = dict(zip(ICH_SUBTYPES, probs, strict=True))
        if "side_logit" in out:
            p_left = float(torch.sigmoid(out["side_logit"].reshape(())))
            result.side_score = p_left
            result.side = "left" if p_left >= 0.5 else "right"
        return result


def _subcell_offset(column: torch.Tensor, peak: int) -> float:
    """Where between its neighbours a map's peak lies, in cells (-0.5..0.5): the vertex of a parabola through three.

    A 3D map cell is 8 model slices deep (LVO: 14 mm) and an occluded segment a few millimetres: the cell's centre
    often misses it, while the neighbouring cells' evidence says to which side of the centre the peak lies.
    """
    if not 0 < peak < column.shape[0] - 1:
        return 0.0
    a, b, c = (float(v) for v in column[peak - 1 : peak + 2])
    curvature = a - 2.0 * b + c
    return min(0.5, max(-0.5, 0.5 * (a - c) / curvature)) if curvature < 0 else 0.0


def _localise(result: TriageOutput, cam: torch.Tensor, grid: GridMap, slice_logits: torch.Tensor | None) -> None:
    """Key slice, heatmap and box from a class activation map (ICH: (S, h, w), LVO: (d, h, w))."""
    prob = torch.sigmoid(cam)
    scale = [m / c for m, c in zip(grid.model_shape, prob.shape, strict=True)]
    peak = np.unravel_index(int(torch.argmax(prob)), tuple(prob.shape))
    key_cam_z = int(torch.argmax(slice_logits)) if slice_logits is not None else int(peak[0])
    offset = _subcell_offset(cam[:, peak[1], peak[2]], key_cam_z) if slice_logits is None else 0.0
    key_model_z = (key_cam_z + 0.5 + offset) * scale[0] - 0.5
    result.key_slice = grid.slice_to_original(round(key_model_z))
    plane = prob[key_cam_z][None, None]
    result.heatmap = F.interpolate(plane, size=(HEATMAP_SIZE, HEATMAP_SIZE), mode="bilinear")[0, 0].numpy()
    full = grid.box_to_original((key_model_z, 0, 0), (key_model_z + 1, grid.model_shape[1], grid.model_shape[2]))
    result.heatmap_extent = [full[1], full[2], full[4], full[5]]
    # The box is the connected region around the peak above half the peak probability.
    p = prob.numpy()
    labels, _ = ndi.label(p >= 0.5 * p[peak])
    zs, ys, xs = np.nonzero(labels == labels[peak])
    low = (zs.min() * scale[0], ys.min() * scale[1], xs.min() * scale[2])
    high = ((zs.max() + 1) * scale[0], (ys.max() + 1) * scale[1], (xs.max() + 1) * scale[2])
    result.box = grid.box_to_original(low, high)

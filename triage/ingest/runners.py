"""The model runners of a worker process: which weights a finding uses, loaded once, and run on a volume.

torch is imported here only inside functions (through ``inference.runner``), so that importing the ingest layer
never loads it: a web process enqueues jobs but never runs a model.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from triage.core.exceptions import ModelUnavailable
from triage.core.selectors import model_config_for, threshold_for
from triage.models import DicomWebSource, Finding

if TYPE_CHECKING:
    from inference.dicom import Volume
    from inference.runner import ModelRunner, TriageOutput

logger = logging.getLogger(__name__)


def model_runner(*, finding: str) -> ModelRunner | None:
    """The finding's loaded model as an admin configured it; None when disabled. Raises ModelUnavailable."""
    config = model_config_for(finding=finding)
    if config is not None and not config.enabled:
        return None
    return runner_load(
        finding=finding,
        weights=weights_path(finding=finding, configured=config.weights_path if config else ""),
        sha256=(config.weights_sha256 or None) if config else None,
        device=settings.TRIAGE_DEVICE,
    )


def runners_preload() -> list[str]:
    """Load every enabled model now (an ingest worker at start-up), so that the first study does not wait for torch
    and the weights. Returns the findings loaded; a model that cannot be loaded is left to the job, which retries."""
    loaded = []
    for finding in Finding.values:
        try:
            if model_runner(finding=finding) is not None:
                loaded.append(finding)
        except ModelUnavailable as err:
            logger.warning("model %s not loaded at start-up: %s", finding, err.message)
    return loaded


@lru_cache(maxsize=8)
def runner_load(*, finding: str, weights: str | None, sha256: str | None, device: str) -> ModelRunner:
    """Load once per (finding, weights, device) per process: loading is slow, running is not.

    A model that cannot be loaded raises ModelUnavailable; failures are not cached, so it is tried again next time.
    """
    from inference.loader import ModelLoadError
    from inference.runner import DeviceUnavailable, ModelRunner

    try:
        threads = settings.TRIAGE_TORCH_THREADS or None
        return ModelRunner(finding, weights=weights, sha256=sha256, device=device, num_threads=threads)
    except ModelLoadError as err:
        raise ModelUnavailable(finding, err.code, err.message) from err
    except DeviceUnavailable as err:
        raise ModelUnavailable(finding, err.code, str(err)) from err


def weights_path(*, finding: str, configured: str) -> str | None:
    """ModelConfig.weights_path (relative to TRIAGE_MODEL_DIR), else TRIAGE_MODEL_DIR's default file, else shipped."""
    model_dir = settings.TRIAGE_MODEL_DIR
    if configured:
        path = Path(configured)
        return str(path if path.is_absolute() or not model_dir else Path(model_dir) / path)
    if model_dir:
        from inference.loader import shipped_weights

        return str(Path(model_dir) / shipped_weights(finding).name)
    return None


def runner_infer(*, runner: ModelRunner, volume: Volume, source: DicomWebSource | None) -> TriageOutput:
    """Run the model; the threshold in force for the study's source decides ``positive``."""
    output = runner.run(volume.hu, volume.spacing_mm)
    threshold = threshold_for(finding=runner.finding, source=source)
    if threshold is None:
        threshold = runner.threshold
    return replace(output, threshold=threshold, positive=bool(output.score >= threshold))


def key_image(*, volume: Volume, output: TriageOutput) -> bytes | None:
    from inference.runner import render_key_image

    return render_key_image(volume.hu, output)

"""One loader for the three ways a site brings weights, each pinned by SHA-256.

- a TorchScript file (``torch.jit.save``);
- a ``state_dict`` file plus a registered architecture name (``inference.networks.ARCHITECTURES``), the name given
  by the caller or by the model card beside the file (``<stem>.card.json``);
- a MONAI bundle directory: ``configs/metadata.json`` and ``models/model.ts`` (TorchScript) or ``models/model.pt``
  (a ``state_dict``; the architecture is then read from ``metadata.json`` key ``triage_architecture``).

Every model is checked with a dry forward pass on a tiny input of the kind the runner will give it, so a network
expecting other channels or dimensions fails at load time with a clear error, not on the first patient.
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.modelcard import read_card, sha256_file
from inference.networks import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_network

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# A dry-run input per finding: (batch, slices, windows, H, W) for ICH, (batch, channels, D, H, W) for LVO.
PROBE_SHAPES: dict[str, tuple[int, ...]] = {"ich": (1, 2, 3, 32, 32), "lvo": (1, 2, 16, 32, 32)}


class ModelLoadError(Exception):
    """Base class: every loader failure has a stable ``code`` for logs, the API and the admin."""

    code = "model_load_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WeightsNotFound(ModelLoadError):
    code = "weights_not_found"


class WeightsHashMismatch(ModelLoadError):
    code = "weights_hash_mismatch"


class UnknownArchitecture(ModelLoadError):
    code = "unknown_architecture"


class InvalidWeights(ModelLoadError):
    code = "invalid_weights"


class InputShapeMismatch(ModelLoadError):
    code = "input_shape_mismatch"


@dataclass
class LoadedModel:
    module: nn.Module
    finding: str
    kind: str  # "torchscript", "state_dict" or "monai_bundle"
    architecture: str | None
    name: str
    version: str
    sha256: str
    path: Path
    card: dict[str, Any] = field(default_factory=dict)


def shipped_weights(finding: str) -> Path:
    """Path of the weights shipped in the package for a finding."""
    return WEIGHTS_DIR / f"{DEFAULT_ARCHITECTURE[finding]}.pt"


def load_model(
    path: str | Path,
    *,
    finding: str,
    sha256: str | None = None,
    architecture: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load and validate a model. ``sha256`` pins the exact file; when omitted, the model card's hash is required
    to match if the card states one."""
    if finding not in PROBE_SHAPES:
        raise ModelLoadError(f'Finding "{finding}" is not one of {sorted(PROBE_SHAPES)}')
    path = Path(path)
    if path.is_dir():
        loaded = _load_bundle(path, finding, sha256, architecture, device)
    elif path.is_file():
        card = read_card(path)
        pinned = sha256 or card.get("sha256")
        loaded = _load_file(path, finding, pinned, architecture or card.get("architecture"), device)
        loaded.card = card
        loaded.version = str(card.get("version", loaded.version))
    else:
        raise WeightsNotFound(f"Model weights not found: {path}")
    _dry_run(loaded, device)
    logger.info("Loaded %s model %s (%s, sha256 %s…)", finding, loaded.name, loaded.kind, loaded.sha256[:12])
    return loaded


def _check_hash(path: Path, expected: str | None) -> str:
    actual = sha256_file(path)
    if expected is not None and actual.lower() != expected.lower():
        raise WeightsHashMismatch(f"SHA-256 of {path.name} is {actual}, expected {expected}")
    return actual


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives carry compiled code; plain torch.save archives only pickled data.
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in name or name.startswith("code/") for name in zf.namelist())
    except zipfile.BadZipFile:
        return False


def _load_file(
    path: Path, finding: str, sha256: str | None, architecture: str | None, device: str | torch.device
) -> LoadedModel:
    digest = _check_hash(path, sha256)
    if _is_torchscript(path):
        module = _load_torchscript(path, device)
        return LoadedModel(
            module, finding, "torchscript", architecture, path.stem, f"sha256:{digest[:12]}", digest, path
        )
    if architecture is None:
        raise UnknownArchitecture(f"{path.name} is a state_dict: give its architecture name ({sorted(ARCHITECTURES)})")
    module = _load_state_dict(path, architecture, finding, device)
    return LoadedModel(module, finding, "state_dict", architecture, architecture, f"sha256:{digest[:12]}", digest, path)


def _load_torchscript(path: Path, device: str | torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but remains what many sites export; loading it is supported here.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as err:
        raise InvalidWeights(f"{path.name} is not a loadable TorchScript file: {err}") from err
    return module.eval()


def _load_state_dict(path: Path, architecture: str, finding: str, device: str | torch.device) -> nn.Module:
    spec = ARCHITECTURES.get(architecture)
    if spec is None:
        raise UnknownArchitecture(f'Architecture "{architecture}" is not registered ({sorted(ARCHITECTURES)})')
    if spec.finding != finding:
        raise UnknownArchitecture(f'Architecture "{architecture}" is for "{spec.finding}", not "{finding}"')
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise InvalidWeights(f"{path.name} is not a loadable state_dict: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    module = build_network(architecture)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise InputShapeMismatch(f'{path.name} does not fit architecture "{architecture}": {err}') from err
    return module.to(device).eval()


def _load_bundle(
    root: Path, finding: str, sha256: str | None, architecture: str | None, device: str | torch.device
) -> LoadedModel:
    meta_path = root / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise WeightsNotFound(f"MONAI bundle {root.name} has no configs/metadata.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InvalidWeights(f"MONAI bundle {root.name}: configs/metadata.json is not JSON: {err}") from err
    candidates = [root / "models" / "model.ts", root / "models" / "model.pt"]
    weights = next((c for c in candidates if c.is_file()), None)
    if weights is None:
        raise WeightsNotFound(f"MONAI bundle {root.name} has neither models/model.ts nor models/model.pt")
    arch = architecture or meta.get("triage_architecture")
    loaded = _load_file(weights, finding, sha256, arch, device)
    loaded.kind = "monai_bundle"
    loaded.name = str(meta.get("name", root.name))
    loaded.version = str(meta.get("version", loaded.version))
    loaded.card = meta
    return loaded


def _dry_run(loaded: LoadedModel, device: str | torch.device) -> None:
    probe = torch.zeros(PROBE_SHAPES[loaded.finding], device=device)
    try:
        with torch.inference_mode():
            out = loaded.module(probe)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise InputShapeMismatch(
            f"{loaded.path.name} does not accept {loaded.finding} input of shape {tuple(probe.shape)}: {err}"
        ) from err
    logit = out["logit"] if isinstance(out, dict) else out
    if not isinstance(logit, torch.Tensor) or logit.numel() != probe.shape[0]:
        raise InputShapeMismatch(
            f"{loaded.path.name} must return one logit per study (or a dict with 'logit'), got {_describe(out)}"
        )


def _describe(out: object) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, dict):
        return f"a dict with keys {sorted(out)}"
    return type(out).__name__

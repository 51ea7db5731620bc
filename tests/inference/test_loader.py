from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from inference import loader
from inference.networks import build_network

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]


@pytest.fixture
def ich_state_dict(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "ich.pt"
    torch.save(build_network("ich2d-v1").state_dict(), path)
    return path


def test_state_dict_with_architecture_loads_and_is_pinned(ich_state_dict: Path):
    digest = loader.sha256_file(ich_state_dict)
    model = loader.load_model(ich_state_dict, finding="ich", architecture="ich2d-v1", sha256=digest)
    assert (model.kind, model.architecture, model.sha256) == ("state_dict", "ich2d-v1", digest)


def test_missing_file_is_reported(tmp_path: Path):
    with pytest.raises(loader.WeightsNotFound) as err:
        loader.load_model(tmp_path / "nope.pt", finding="ich", architecture="ich2d-v1")
    assert err.value.code == "weights_not_found"


def test_wrong_hash_is_refused(ich_state_dict: Path):
    with pytest.raises(loader.WeightsHashMismatch) as err:
        loader.load_model(ich_state_dict, finding="ich", architecture="ich2d-v1", sha256="0" * 64)
    assert err.value.code == "weights_hash_mismatch"


def test_unknown_architecture_is_refused(ich_state_dict: Path):
    with pytest.raises(loader.UnknownArchitecture, match="not registered"):
        loader.load_model(ich_state_dict, finding="ich", architecture="resnet-9000")


def test_state_dict_without_architecture_name_is_refused(ich_state_dict: Path):
    with pytest.raises(loader.UnknownArchitecture, match="give its architecture"):
        loader.load_model(ich_state_dict, finding="ich")


def test_architecture_for_another_finding_is_refused(ich_state_dict: Path):
    with pytest.raises(loader.UnknownArchitecture, match='for "lvo"'):
        loader.load_model(ich_state_dict, finding="ich", architecture="lvo3d-v1")


def test_state_dict_of_other_shapes_is_an_input_shape_error(tmp_path: Path):
    path = tmp_path / "lvo-as-ich.pt"
    torch.save(build_network("lvo3d-v1").state_dict(), path)
    with pytest.raises(loader.InputShapeMismatch):
        loader.load_model(path, finding="ich", architecture="ich2d-v1")


def test_corrupt_file_is_invalid_weights(tmp_path: Path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(loader.InvalidWeights):
        loader.load_model(path, finding="ich", architecture="ich2d-v1")


class _TwoDimensional(nn.Module):
    """A model for single 2D images: wrong for the (batch, slices, windows, H, W) ICH input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(1, 2, 3))


def test_torchscript_with_wrong_input_shape_is_refused(tmp_path: Path):
    path = tmp_path / "wrong.ts"
    torch.jit.save(torch.jit.script(_TwoDimensional()), str(path))
    with pytest.raises(loader.InputShapeMismatch) as err:
        loader.load_model(path, finding="ich")
    assert err.value.code == "input_shape_mismatch"


def test_torchscript_of_registered_network_loads(tmp_path: Path):
    path = tmp_path / "lvo.ts"
    torch.jit.save(torch.jit.script(build_network("lvo3d-v1").eval()), str(path))
    model = loader.load_model(path, finding="lvo")
    assert model.kind == "torchscript"


def test_monai_bundle_with_state_dict_reads_architecture_from_metadata(tmp_path: Path):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    meta = {"name": "site-lvo", "version": "2.1.0", "triage_architecture": "lvo3d-v1"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save(build_network("lvo3d-v1").state_dict(), bundle / "models" / "model.pt")
    model = loader.load_model(bundle, finding="lvo")
    assert (model.kind, model.name, model.version) == ("monai_bundle", "site-lvo", "2.1.0")


def test_monai_bundle_without_model_file_is_reported(tmp_path: Path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text("{}")
    with pytest.raises(loader.WeightsNotFound, match="models/model.ts"):
        loader.load_model(tmp_path, finding="lvo")

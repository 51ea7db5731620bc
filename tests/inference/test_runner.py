from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.networks import build_network
from inference.runner import DeviceUnavailable, ModelRunner, render_key_image, resolve_device


def _weights(tmp_path: Path, architecture: str) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{architecture}.pt"
    torch.save(build_network(architecture).state_dict(), path)
    return path


def _head(shape: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid of brain in air with a dense blob at a known place."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = [(n - 1) / 2 for n in shape]
    inside = sum(((a - ci) / (0.42 * n)) ** 2 for a, ci, n in zip((z, y, x), c, shape, strict=True)) < 1
    vol = np.full(shape, -1000.0, dtype=np.float32)
    vol[inside] = 32.0
    vol[shape[0] // 2, shape[1] // 3 : shape[1] // 3 + 6, shape[2] // 2 : shape[2] // 2 + 6] = 75.0
    return vol


@pytest.fixture(scope="module")
def ich_runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    path = _weights(tmp_path_factory.mktemp("ich"), "ich2d-v1")
    return ModelRunner("ich", weights=path, architecture="ich2d-v1", device="cpu", threshold=0.5, num_threads=1)


def test_runner_gives_the_same_score_twice_for_the_same_input(ich_runner: ModelRunner):
    vol = _head((20, 96, 96))
    first, second = ich_runner.run(vol, (5.0, 2.0, 2.0)), ich_runner.run(vol, (5.0, 2.0, 2.0))
    assert first.score == second.score


def test_ich_output_is_advisory_and_in_original_coordinates(ich_runner: ModelRunner):
    vol = _head((40, 80, 72))
    out = ich_runner.run(vol, (2.5, 2.5, 2.5))
    assert 0.0 <= out.score <= 1.0
    assert out.advisory
    assert 0 <= out.key_slice < 40
    z0, y0, x0, z1, y1, x1 = out.box
    assert 0 <= z0 < z1 <= 40
    assert 0 <= y0 < y1 <= 80
    assert 0 <= x0 < x1 <= 72
    assert out.heatmap.shape == (64, 64)
    assert out.heatmap.dtype == np.float32
    assert set(out.subtype_scores) == {"edh", "sdh", "iph", "sah", "ivh"}
    assert set(out.timings) == {"preprocess_s", "forward_s", "postprocess_s", "total_s"}


def test_threshold_decides_positive(ich_runner: ModelRunner):
    out = ich_runner.run(_head((12, 64, 64)), (5.0, 3.0, 3.0))
    assert out.positive == (out.score >= ich_runner.threshold)


def test_lvo_runner_reports_a_side(tmp_path: Path):
    runner = ModelRunner("lvo", weights=_weights(tmp_path, "lvo3d-v1"), architecture="lvo3d-v1", num_threads=1)
    out = runner.run(_head((40, 64, 64)), (2.0, 3.0, 3.0))
    assert out.side in ("left", "right")
    assert 0.0 <= out.side_score <= 1.0
    assert out.subtype_scores is None


def test_batch_matches_single_runs(ich_runner: ModelRunner):
    a, b = _head((16, 64, 64)), _head((16, 64, 64))[:, ::-1].copy()
    batch = ich_runner.run_batch([(a, (5.0, 3.0, 3.0)), (b, (5.0, 3.0, 3.0))])
    assert [r.score for r in batch] == pytest.approx([ich_runner.run(v, (5.0, 3.0, 3.0)).score for v in (a, b)])


def test_cuda_is_never_chosen_silently():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable):
            resolve_device("cuda")


def test_unknown_device_is_refused():
    with pytest.raises(DeviceUnavailable, match="not supported"):
        resolve_device("mps")


def test_key_image_is_a_png_with_the_advisory_banner(ich_runner: ModelRunner):
    vol = _head((12, 64, 64))
    png = render_key_image(vol, ich_runner.run(vol, (5.0, 3.0, 3.0)))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    pixels = np.frombuffer(zlib.decompress(png[png.index(b"IDAT") + 4 : -16]), dtype=np.uint8)
    rows = pixels.reshape(height, 1 + width * 3)[:, 1:].reshape(height, width, 3)
    # The banner is drawn in amber above the image.
    banner = rows[:20]
    assert ((banner[..., 0] == 255) & (banner[..., 1] == 200) & (banner[..., 2] == 0)).sum() > 50
    assert width == 64


def test_key_slice_of_a_3d_map_lies_between_cells_where_the_evidence_is():
    from inference.runner import _subcell_offset

    column = torch.tensor([-((z - 4.3) ** 2) for z in range(8)])  # evidence peaks 0.3 cells past cell 4's centre
    assert _subcell_offset(column, 4) == pytest.approx(0.3)
    assert _subcell_offset(torch.tensor([-((z - 3.8) ** 2) for z in range(8)]), 4) == pytest.approx(-0.2)
    assert _subcell_offset(column, 0) == 0.0  # no neighbour on one side: the cell's centre
    assert _subcell_offset(torch.zeros(8), 4) == 0.0  # flat: no side to lean to

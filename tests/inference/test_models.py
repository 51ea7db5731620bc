from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import batches, loader, train, trainset
from inference.modelcard import write_card
from inference.networks import ARCHITECTURES, build_network, count_parameters
from inference.phantoms.types import Phantom

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _phantom(seed: int, positive: bool, finding: str = "ich") -> Phantom:
    """A plain ellipsoid head, with a dense blob (blood or an occluded segment) when positive."""
    rng = np.random.default_rng(seed)
    shape = (12, 64, 64)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    head = ((z - 5.5) / 5.5) ** 2 + ((y - 32) / 26) ** 2 + ((x - 32) / 22) ** 2 < 1
    vol = np.where(head, 30.0, -1000.0).astype(np.float32) + rng.normal(0, 3, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    if positive:
        cz, cy, cx = 6, int(rng.integers(20, 40)), int(rng.integers(20, 40))
        mask[cz - 1 : cz + 2, cy - 4 : cy + 4, cx - 4 : cx + 4] = True
        vol[mask] = 75.0
    return Phantom(vol, (5.0, 3.0, 3.0), finding, positive, "iph" if positive else None, "left", mask)


@pytest.mark.parametrize("architecture", ["ich2d-v1", "ich2d-v2"])
def test_ich_network_output_shapes(architecture: str):
    out = build_network(architecture).eval()(torch.zeros(2, 5, 3, 64, 64))
    assert out["logit"].shape == (2,)
    assert out["slice_logits"].shape == (2, 5)
    assert out["subtype_logits"].shape == (2, 5)
    assert out["cam"].shape == (2, 5, 8, 8)


def test_full_resolution_stem_fine_tunes_from_v1_weights():
    v1, v2 = build_network("ich2d-v1"), build_network("ich2d-v2")
    v2.load_state_dict(v1.state_dict())  # same parameter shapes: v1 weights are a starting point for v2
    assert v2.encoder[0][0].stride == (1, 1)
    assert v1.encoder[0][0].stride == (2, 2)


def test_lvo_network_output_shapes():
    out = build_network("lvo3d-v1").eval()(torch.zeros(1, 2, 32, 64, 64))
    assert out["logit"].shape == (1,)
    assert out["side_logit"].shape == (1,)
    assert out["cam"].shape == (1, 4, 8, 8)


def test_ich_network_is_about_a_third_of_a_million_parameters():
    assert 200_000 < count_parameters(build_network("ich2d-v1")) < 400_000


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_registered_networks_compile_to_torchscript(name: str):
    torch.manual_seed(0)
    shapes = {"ich": (1, 4, 3, 64, 64), "lvo": (1, 2, 32, 64, 64)}
    x = torch.rand(shapes[ARCHITECTURES[name].finding])
    eager = build_network(name).eval()

    scripted = torch.jit.script(eager)

    with torch.inference_mode():
        expected, compiled = eager(x), scripted(x)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert compiled.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(compiled[key], value, atol=1e-5), key


def test_sample_targets_mark_the_lesion():
    phantom = _phantom(1, True)
    sample = trainset.make_sample(phantom)
    cam = sample["cam_target"]
    assert sample["slice_target"].any()
    assert cam.any()
    assert not trainset.make_sample(_phantom(2, False))["cam_target"].any()


def _tiny_training(steps: int) -> list[float]:
    train.seed_everything(0)
    samples = [trainset.make_sample(_phantom(i, i % 2 == 0)) for i in range(4)]
    batch = batches.ich_batch(samples, np.random.default_rng(0), augment=False)
    # The middle slices and the centre of the field keep the steps fast; the lesions lie inside both.
    batch["x"] = batch["x"][:, 3:9, :, 32:96, 32:96].contiguous()
    batch["cam"] = batch["cam"][:, 3:9, 4:12, 4:12].contiguous()
    batch["slice"] = batch["slice"][:, 3:9].contiguous()
    model = build_network("ich2d-v1")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return [train.train_step(model, optimizer, "ich", batch) for _ in range(steps)]


def test_tiny_training_lowers_the_loss_and_repeats_exactly():
    torch.set_num_threads(1)
    losses = _tiny_training(6)
    assert losses[-1] < losses[0] * 0.8
    assert _tiny_training(6) == losses


def test_balanced_map_loss_does_not_reward_a_map_that_says_nothing():
    target = torch.zeros(1, 8, 14, 14)
    target[0, 3, 7, 5] = 1.0  # one occluded cell, as in an LVO phantom
    silent = torch.full_like(target, -5.0)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(silent, target)
    assert float(plain) < 0.05
    assert float(batches.balanced_bce(silent, target)) > 2.0
    found = silent.clone()
    found[0, 3, 7, 5] = 5.0
    assert float(batches.balanced_bce(found, target)) < 0.01


def test_per_sample_balancing_weighs_a_small_lesion_like_a_large_one():
    target = torch.zeros(2, 4, 16, 16)
    target[0, 1, 2, 2] = 1.0  # one cell of blood
    target[1, :, 4:12, 4:12] = 1.0  # 256 cells
    logits = torch.full_like(target, -5.0)
    logits[1][target[1] > 0] = 5.0  # the large one found, the small one missed
    pooled = float(batches.balanced_bce(logits, target))
    per_sample = float(batches.balanced_bce(logits, target, per_sample=True))
    assert pooled < 0.05
    assert per_sample > 1.2


def test_hard_negative_crop_holds_the_slice_the_model_scores_highest():
    class BrightestSlice(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"slice_logits": x.mean(dim=(2, 3, 4))}

    hu = torch.full((32, 16, 16), 30, dtype=torch.int16)
    hu[25, 6:10, 6:10] = 300  # a calcification, far from where a random crop usually falls
    negative = {"hu": hu, "label": 0.0, "slice_target": torch.zeros(32, dtype=torch.bool)}
    positive = {**negative, "label": 1.0}
    centres = batches.hardest_slices(BrightestSlice(), [positive, negative])
    assert centres == {1: 25}
    rng = np.random.default_rng(0)
    crops = [batches._ich_crop(negative, rng, centres[1]) for _ in range(20)]
    assert all(c.start <= 25 < c.stop and c.stop - c.start == batches.ICH_CHUNK for c in crops)


def test_small_bleeds_are_repeated_and_nothing_else_is():
    def sample(label: float, cells: int) -> dict:
        cam = torch.zeros(4, 16, 16, dtype=torch.bool)
        cam.view(-1)[:cells] = True
        return {"label": label, "cam_target": cam, "slice_target": cam.any(dim=(1, 2))}

    samples = [sample(1.0, 3), sample(1.0, 200), sample(0.0, 0), sample(1.0, train.SMALL_LESION_CELLS + 1)]
    assert sorted(train.epoch_indices(samples, 0).tolist()) == [0, 1, 2, 3]
    assert sorted(train.epoch_indices(samples, 2).tolist()) == [0, 0, 0, 1, 2, 3]
    lvo = [{"label": 1.0, "cam_target": torch.ones(2, 2, 2, dtype=torch.bool)}]
    assert train.epoch_indices(lvo, 2).tolist() == [0]


def test_model_card_hash_pins_the_weights(tmp_path: Path):
    weights = tmp_path / "ich2d-v1.pt"
    torch.save(build_network("ich2d-v1").state_dict(), weights)
    summary = {
        "finding": "ich",
        "architecture": "ich2d-v1",
        "parameters": 1,
        "threshold": 0.3,
        "target_sensitivity": 0.95,
        "training": {},
        "validation": {},
    }
    card = write_card(weights, summary)
    assert json.loads((tmp_path / "ich2d-v1.card.json").read_text())["sha256"] == card["sha256"]
    assert "Not a medical device" in (tmp_path / "ich2d-v1.card.md").read_text()
    assert loader.load_model(weights, finding="ich").architecture == "ich2d-v1"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(loader.WeightsHashMismatch):
        loader.load_model(weights, finding="ich")


def test_model_card_keeps_one_evaluation_per_generator_family(tmp_path: Path):
    from inference.evaluate import summarise
    from inference.modelcard import update_card

    weights = tmp_path / "ich2d-v1.pt"
    torch.save(build_network("ich2d-v1").state_dict(), weights)
    write_card(weights, {"finding": "ich", "architecture": "ich2d-v1", "parameters": 1, "threshold": 0.5,
                         "target_sensitivity": 0.95, "training": {}, "validation": {}})  # fmt: skip
    rows = [
        {"label": 1, "subtype": "iph", "size": 0.1, "score": 0.7},
        {"label": 0, "subtype": None, "size": None, "score": 0.2},
    ]
    for r in rows:
        r.update(side=None, hard_negative=None, side_pred=None, key_slice_hit=None, seconds=0.1)
    for family in ("A", "B"):
        key = "evaluation" if family == "A" else f"evaluation_family_{family}"
        update_card(weights, key, summarise(rows, 0.5, seed=9, family=family, n_boot=20))
    text = (tmp_path / "ich2d-v1.card.md").read_text()
    assert "generator family A, 2 phantoms" in text
    assert "generator family B, 2 phantoms" in text
    assert "Bleed size tiny (<0.15): AUC 1.000" in text


def test_evaluation_summary_reports_subtypes_and_hard_negatives():
    from inference.evaluate import summarise

    rows = [
        {"label": 1, "subtype": "sdh", "side": None, "hard_negative": None, "score": 0.9, "side_pred": None},
        {"label": 1, "subtype": "sah", "side": None, "hard_negative": None, "score": 0.4, "side_pred": None},
        {"label": 0, "subtype": None, "side": None, "hard_negative": "dense_falx", "score": 0.6, "side_pred": None},
        {"label": 0, "subtype": None, "side": None, "hard_negative": None, "score": 0.1, "side_pred": None},
    ]
    for r in rows:
        r.update(key_slice_hit=None, seconds=0.1)
    result = summarise(rows, 0.5, seed=3, family="B", n_boot=50)
    assert result["subtypes"]["sdh"]["auc"]["estimate"] == 1.0
    assert result["subtypes"]["sah"]["auc"]["estimate"] == 0.5
    assert result["hard_negatives"]["dense_falx"]["false_positive_rate"]["estimate"] == 1.0
    assert result["operating_point"]["sensitivity"]["estimate"] == 0.5


def test_evaluation_summary_reports_sensitivity_by_bleed_size():
    from inference.evaluate import summarise

    rows = [
        {"label": 1, "subtype": "iph", "size": 0.05, "score": 0.3},
        {"label": 1, "subtype": "iph", "size": 0.1, "score": 0.7},
        {"label": 1, "subtype": "sdh", "size": 0.9, "score": 0.95},
        {"label": 0, "subtype": None, "size": None, "score": 0.4},
        {"label": 0, "subtype": None, "size": None, "score": 0.2},
    ]
    for r in rows:
        r.update(side=None, hard_negative=None, side_pred=None, key_slice_hit=None, seconds=0.1)
    bands = summarise(rows, 0.5, seed=3, family="A", n_boot=50)["size_bands"]
    assert sorted(bands) == ["large (>=0.7)", "tiny (<0.15)"]
    assert (bands["tiny (<0.15)"]["positives"], bands["tiny (<0.15)"]["sensitivity"]["estimate"]) == (2, 0.5)
    assert bands["tiny (<0.15)"]["auc"]["estimate"] == 0.75
    assert bands["large (>=0.7)"]["auc"]["estimate"] == 1.0


def test_training_options_are_refused_for_the_wrong_finding(tmp_path: Path):
    cfg = train.parse_args(["--finding", "ich", "--architecture", "ich2d-v2", "--repeat-small", "2", "--out", "o"])
    assert (cfg.architecture, cfg.repeat_small) == ("ich2d-v2", 2)
    for wrong in (
        ["--finding", "lvo", "--architecture", "ich2d-v2"],
        ["--finding", "lvo", "--mine-hard-negatives"],
        ["--finding", "lvo", "--repeat-small", "1"],
    ):
        with pytest.raises(SystemExit):
            train.parse_args([*wrong, "--out", str(tmp_path)])


def test_mirror_averaging_network_reads_the_study_and_its_mirror_image():
    torch.manual_seed(0)
    v2, v3 = build_network("ich2d-v2").eval(), build_network("ich2d-v3").eval()
    v3.load_state_dict(v2.state_dict())  # the same parameters, read twice
    x = torch.rand(1, 4, 3, 64, 64)
    plain, mirrored, both = v2(x), v2(x.flip(-1)), v3(x)
    for key in ("logit", "slice_logits", "subtype_logits"):
        assert torch.allclose(both[key], 0.5 * (plain[key] + mirrored[key]), atol=1e-5)
    assert torch.allclose(both["cam"], 0.5 * (plain["cam"] + mirrored["cam"].flip(-1)), atol=1e-5)
    assert torch.allclose(both["logit"], v3(x.flip(-1))["logit"], atol=1e-5)  # blind to which side is which
    v3.train()
    assert torch.allclose(v3(x)["logit"], v2.train()(x)["logit"], atol=1e-5)  # training reads once


def test_zero_epochs_only_chooses_the_threshold_for_the_starting_weights(tmp_path: Path):
    torch.set_num_threads(1)
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save([trainset.make_sample(_phantom(i, i % 2 == 0)) for i in range(2)], cache / "ich-train-seed1-n2-A.pt")
    torch.save([trainset.make_sample(_phantom(10 + i, i % 2 == 0)) for i in range(6)], cache / "ich-val-seed1-n6-A.pt")
    start = tmp_path / "start.pt"
    torch.save(build_network("ich2d-v2").state_dict(), start)
    args = ["--finding", "ich", "--train-count", "2", "--val-count", "6", "--cache", str(cache)]
    with pytest.raises(SystemExit):
        train.parse_args([*args, "--epochs", "0", "--out", str(tmp_path / "x")])  # nothing to calibrate
    out = tmp_path / "out"
    calibrate = ["--epochs", "0", "--init", str(start), "--architecture", "ich2d-v3"]
    summary = train.run(train.parse_args([*args, *calibrate, "--out", str(out)]))
    saved = torch.load(out / "ich2d-v3.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in torch.load(start, weights_only=True).items())
    assert (summary["training"]["epochs"], summary["training"]["best_epoch"]) == (0, 0)
    assert 0.0 < summary["threshold"] < 1.0
    card = json.loads((out / "ich2d-v3.card.json").read_text())
    assert card["architecture"] == "ich2d-v3"
    assert card["threshold"] == summary["threshold"]

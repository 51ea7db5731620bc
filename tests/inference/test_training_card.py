"""The training code writes what a card must say: the phantom statement and, for family R, the ranges."""

from __future__ import annotations

from inference.phantoms.randomise import RANGES
from inference.train import PHANTOM_FIGURES, with_card_notes


def _summary() -> dict:
    return {"finding": "lvo", "training": {"generator_family": "R"}}


def test_randomised_training_card_lists_every_range_with_its_source() -> None:
    summary = with_card_notes(_summary(), "R", "Fine-tuned from lvo3d-v1 1.1.0.")

    assert set(summary["randomisation"]) == set(RANGES)
    assert all(entry["source"] for entry in summary["randomisation"].values())
    assert summary["training"]["lineage"].startswith("Fine-tuned from lvo3d-v1 1.1.0. Domain randomisation")


def test_every_card_states_what_phantom_figures_mean() -> None:
    summary = with_card_notes(_summary(), "A", None)

    assert PHANTOM_FIGURES in summary["limits"]
    assert "randomisation" not in summary

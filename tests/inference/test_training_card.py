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
    lineage = summary["training"]["lineage"]
    assert lineage.startswith("Fine-tuned from lvo3d-v1 1.1.0. Training-time intensity randomisation")
    assert "Domain randomisation (generator family R" in lineage


def test_every_card_states_what_phantom_figures_mean() -> None:
    summary = with_card_notes(_summary(), "A", None)

    assert PHANTOM_FIGURES in summary["limits"]
    assert "randomisation" not in summary


def test_a_mixture_with_family_r_lists_the_ranges_too() -> None:
    summary = with_card_notes(_summary(), "A+R", None)

    assert set(summary["randomisation"]) == set(RANGES)


def test_an_ich_card_on_family_v_also_lists_the_anatomical_variation() -> None:
    from inference.phantoms.variants import ANATOMY_RANGES

    summary = with_card_notes({"finding": "ich", "training": {"generator_family": "A+V"}}, "A+V", None)

    assert set(summary["randomisation"]) == set(RANGES) | set(ANATOMY_RANGES)
    assert "skull base" in summary["training"]["lineage"]

"""What a model card leads the product to expect: the reference score histogram and the plausible flag rates."""

from __future__ import annotations

import pytest

from inference import modelcard

# 100 validation positives and 100 negatives on four bins: negatives low, positives high.
CARD = {
    "threshold": 0.5,
    "validation": {
        "operating_point": {
            "sensitivity": {"estimate": 0.9, "low": 0.8, "high": 0.95},
            "specificity": {"estimate": 0.8, "low": 0.7, "high": 0.9},
        },
        "calibration": {
            "bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0],
            "counts": [60, 40, 20, 80],
            "observed_rate": [0.0, 0.25, 0.5, 1.0],
        },
    },
}


def test_reference_mixes_the_class_histograms_at_the_prevalence():
    reference = modelcard.card_reference(CARD, prevalence=0.2)
    # negatives per bin 60, 30, 10, 0; positives 0, 10, 10, 80 (each out of 100)
    expected = [0.8 * 0.60, 0.2 * 0.10 + 0.8 * 0.30, 0.2 * 0.10 + 0.8 * 0.10, 0.2 * 0.80]
    assert reference.expected == pytest.approx(expected)


def test_reference_defaults_to_the_middle_of_the_prevalence_range():
    assert modelcard.card_reference(CARD).prevalence == pytest.approx(0.15)


def test_flag_rate_band_spans_the_default_prevalence_range():
    reference = modelcard.card_reference(CARD)
    low, high = 0.05 * 0.9 + 0.95 * 0.2, 0.25 * 0.9 + 0.75 * 0.2
    assert (reference.flag_rate_low, reference.flag_rate_high) == pytest.approx((low, high))


def test_a_card_may_state_its_own_prevalence_range():
    card = {**CARD, "monitoring": {"prevalence_low": 0.1, "prevalence_high": 0.1}}
    reference = modelcard.card_reference(card)
    assert reference.flag_rate_low == reference.flag_rate_high == pytest.approx(0.1 * 0.9 + 0.9 * 0.2)


def test_an_explicit_reference_section_replaces_the_calibration_bins():
    card = {**CARD, "reference": {"bin_edges": [0.0, 0.5, 1.0], "positives": [1, 3], "negatives": [3, 1]}}
    assert modelcard.card_reference(card, prevalence=0.5).expected == pytest.approx([0.5, 0.5])


def test_expected_flag_rate_interpolates_within_a_bin():
    # At 0.375, half of the 0.25-0.5 bin is above: positives 5 + 10 + 80 = 95%, negatives 15 + 10 + 0 = 25%.
    assert modelcard.expected_flag_rate(CARD, 0.375, 0.5) == pytest.approx(0.5 * 0.95 + 0.5 * 0.25)


def test_expected_flag_rate_at_a_bin_edge_counts_whole_bins():
    assert modelcard.expected_flag_rate(CARD, 0.5, 0.0) == pytest.approx(0.10)


def test_empty_bins_without_an_observed_rate_count_as_empty():
    card = {**CARD, "validation": {**CARD["validation"], "calibration": {
        "bin_edges": [0.0, 0.5, 1.0], "counts": [50, 0], "observed_rate": [0.5, None]}}}  # fmt: skip
    assert modelcard.card_reference(card, prevalence=0.5).expected == pytest.approx([1.0, 0.0])


def test_a_card_without_validation_cannot_give_a_reference():
    with pytest.raises(ValueError, match="lacks"):
        modelcard.card_reference({"threshold": 0.5})


def test_the_shipped_ich_card_expects_about_12_to_29_percent_flagged():
    reference = modelcard.card_reference(modelcard.shipped_card("ich"))
    assert (round(reference.flag_rate_low, 2), round(reference.flag_rate_high, 2)) == (0.12, 0.29)


def test_a_reference_pooled_from_evaluations_sets_the_expected_operating_point():
    def evaluation(tp: int, fn: int, tn: int, fp: int) -> dict:
        calibration = {"bin_edges": [0.0, 0.5, 1.0], "counts": [tn + fn, tp + fp]}
        calibration["observed_rate"] = [fn / (tn + fn), tp / (tp + fp)]
        return {"calibration": calibration, "operating_point": {"tp": tp, "fn": fn, "tn": tn, "fp": fp}}

    card = {**CARD, "eval_a": evaluation(90, 10, 95, 5), "eval_b": evaluation(70, 30, 85, 15)}
    card["reference"] = modelcard.reference_from_evaluations(card, ["eval_a", "eval_b"])

    assert modelcard._operating_point(card) == (0.8, 0.9)
    assert card["reference"]["positives"] == [40.0, 160.0]


def test_flag_rate_band_at_the_cards_threshold_is_the_operating_point():
    assert modelcard.flag_rate_band(CARD, 0.5) == modelcard.flag_rate_band(CARD)


def test_flag_rate_band_at_another_threshold_comes_from_the_histograms():
    low, high = modelcard.flag_rate_band(CARD, 0.375)
    assert (low, high) == pytest.approx((0.05 * 0.95 + 0.95 * 0.25, 0.25 * 0.95 + 0.75 * 0.25))


def _minimal_card() -> dict:
    return {
        "name": "ich2d-v3",
        "version": "9.9.9",
        "finding": "ich",
        "architecture": "ich2d-v3",
        "parameters": 1,
        "weights_file": "ich2d-v3.pt",
        "sha256": "0" * 64,
        "threshold": 0.5,
        "target_sensitivity": 0.95,
        "intended_use": "Triage.",
        "limits": ["Synthetic."],
    }


def _interval(value: float) -> dict:
    return {"estimate": value, "low": value - 0.01, "high": value + 0.01}


def test_card_markdown_has_one_robustness_table_and_the_randomisation_ranges() -> None:
    row = {"family": "A under noise x2", "count": 40, "auc": _interval(0.9)}
    row["operating_point"] = {"sensitivity": _interval(0.8), "specificity": _interval(0.7)}
    card = {
        **_minimal_card(),
        f"{modelcard.ROBUSTNESS_PREFIX}00_none": {**row, "family": "A, no shift"},
        f"{modelcard.ROBUSTNESS_PREFIX}01_noise_x2": row,
        "randomisation": {"csf_hu": {"low": -4, "high": 18, "unit": "HU", "source": "attenuation tables"}},
    }

    text = modelcard.render_markdown(card)

    assert text.count("## Robustness") == 1
    assert "| A under noise x2 | 40 | 0.900 (95% CI 0.890–0.910) |" in text
    assert "Held-out evaluation" not in text
    assert "| csf_hu | -4 to 18 HU | attenuation tables |" in text

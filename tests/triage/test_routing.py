"""Routing series to models: the pure matcher on the shipped defaults, DICOM JSON tags, and seeding the database."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from triage.core.validators import validate_regex
from triage.ingest.routing import (
    REASON_MAX_LENGTH,
    RuleSpec,
    SeriesTags,
    default_model_configs,
    default_routing_rules,
    route_series,
    series_tags_from_dicom_json,
)

NCCT = SeriesTags(
    modality="CT",
    body_part="HEAD",
    study_description="CT HEAD WITHOUT CONTRAST",
    series_description="Head 5.0 H31s",
    slice_thickness_mm=5.0,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    instance_count=32,
)
CTA = SeriesTags(
    modality="CT",
    body_part="",
    study_description="CTA HEAD AND NECK",
    series_description="CTA 0.6 Hv36",
    contrast_agent="Omnipaque 350",
    slice_thickness_mm=0.6,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    instance_count=480,
)


def _route(series: SeriesTags) -> str:
    return route_series(series=series, rules=default_routing_rules()).model


def test_non_contrast_head_ct_goes_to_ich() -> None:
    decision = route_series(series=NCCT, rules=default_routing_rules())

    assert (decision.model, decision.rule) == ("ich", "Head CT without contrast")
    assert decision.reason == "ich: rule 'Head CT without contrast' matched"


def test_head_and_neck_cta_goes_to_lvo() -> None:
    assert _route(CTA) == "lvo"


def test_thin_contrast_head_ct_without_angio_words_goes_to_lvo() -> None:
    series = replace(CTA, study_description="CT HEAD", series_description="Thin 0.75", body_part="HEAD")

    decision = route_series(series=series, rules=default_routing_rules())

    assert (decision.model, decision.rule) == ("lvo", "Thin contrast head and neck CT")


def test_head_ct_described_by_anatomy_alone_goes_to_ich() -> None:
    assert _route(replace(NCCT, body_part="", study_description="CT BRAIN", series_description="Axial 5mm")) == "ich"


def test_non_contrast_series_of_a_stroke_protocol_study_goes_to_ich() -> None:
    assert _route(replace(NCCT, study_description="CT HEAD + CTA HEAD NECK STROKE")) == "ich"


def test_contrast_agent_recorded_as_none_counts_as_absent() -> None:
    assert _route(replace(NCCT, contrast_agent="NONE")) == "ich"


@pytest.mark.parametrize(
    "change",
    [
        {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER"), "instance_count": 2},
        {"series_description": "Topogram 0.6 T20f", "image_type": ()},
        {"series_description": "Scout"},
    ],
    ids=["localizer-image-type", "topogram", "scout"],
)
def test_localizers_are_not_routed(change: dict) -> None:
    assert _route(replace(NCCT, **change)) == ""


@pytest.mark.parametrize(
    "series",
    [
        replace(CTA, image_type=("DERIVED", "SECONDARY", "MIP"), series_description="MIP AX 10mm"),
        replace(CTA, image_type=("DERIVED", "SECONDARY", "REFORMATTED")),
        replace(CTA, image_type=(), series_description="COR MIP 3mm"),
        replace(NCCT, image_type=(), series_description="Head MPR sag"),
    ],
    ids=["mip", "derived-reformat", "mip-by-description", "mpr-by-description"],
)
def test_mips_and_derived_series_are_not_routed(series: SeriesTags) -> None:
    assert _route(series) == ""


@pytest.mark.parametrize(
    "series",
    [
        replace(NCCT, body_part="CHEST", study_description="CT CHEST", series_description="Lung 1.0"),
        replace(NCCT, body_part="", study_description="CT THORAX ABDOMEN", series_description="Axial 5mm"),
        replace(CTA, study_description="CTA CHEST PE PROTOCOL", series_description="CTA 1.0"),
    ],
    ids=["chest-body-part", "chest-by-description", "pulmonary-cta"],
)
def test_chest_ct_is_not_routed(series: SeriesTags) -> None:
    assert _route(series) == ""


def test_thick_slices_are_not_routed_and_the_reason_says_why() -> None:
    decision = route_series(series=replace(NCCT, slice_thickness_mm=10.0), rules=default_routing_rules())

    assert decision.model == ""
    assert decision.reason.startswith("no rule matched: Head CT without contrast: slice thickness 10 mm, above 5 mm")


def test_contrast_head_ct_with_standard_slices_is_not_routed() -> None:
    decision = route_series(series=replace(NCCT, contrast_agent="Iomeron 400"), rules=default_routing_rules())

    assert decision.model == ""
    assert "Head CT without contrast: contrast agent present" in decision.reason
    assert "slice thickness 5 mm, above 1.5 mm" in decision.reason


def test_too_few_images_are_not_routed() -> None:
    assert _route(replace(NCCT, instance_count=4)) == ""


def test_unreported_thickness_and_count_do_not_block_routing() -> None:
    assert _route(replace(NCCT, slice_thickness_mm=None, instance_count=None, image_type=())) == "ich"


def test_other_modalities_are_not_routed() -> None:
    assert _route(replace(NCCT, modality="MR")) == ""


def test_disabled_rule_is_ignored() -> None:
    rules = [replace(rule, enabled=rule.model != "ich") for rule in default_routing_rules()]

    decision = route_series(series=NCCT, rules=rules)

    assert decision.model == ""
    assert "Head CT without contrast" not in decision.reason


def test_lowest_order_wins_whatever_the_list_order() -> None:
    late = RuleSpec(name="late", model="ich", order=50, require_image_type_original=False)
    early = RuleSpec(name="early", model="lvo", order=5, require_image_type_original=False)

    decision = route_series(series=NCCT, rules=[late, early])

    assert (decision.model, decision.rule) == ("lvo", "early")


def test_no_enabled_rules_is_said_plainly() -> None:
    decision = route_series(series=NCCT, rules=[])

    assert decision.model == ""
    assert decision.reason == "no rule matched: no routing rules are enabled"


def test_rule_with_invalid_regex_does_not_match_and_says_so() -> None:
    broken = RuleSpec(name="broken", model="ich", body_part_regex="HEAD(")

    decision = route_series(series=NCCT, rules=[broken])

    assert decision.reason == "no rule matched: broken: the rule has an invalid regular expression"


def test_invalid_regex_is_refused_by_the_validator() -> None:
    with pytest.raises(ValidationError, match="Not a valid regular expression"):
        validate_regex("CTA|(ANGIO")


def test_long_reasons_fit_the_series_column() -> None:
    rules = [RuleSpec(name=f"rule number {n} with a long name", model="ich", modality="MR") for n in range(20)]

    decision = route_series(series=NCCT, rules=rules)

    assert len(decision.reason) == REASON_MAX_LENGTH
    assert decision.reason.endswith("…")


def test_default_rule_patterns_fit_the_model_fields() -> None:
    from triage.models import RoutingRule

    for rule in default_routing_rules():
        for name in ("body_part_regex", "description_regex", "exclude_description_regex"):
            assert len(getattr(rule, name)) <= RoutingRule._meta.get_field(name).max_length
            validate_regex(getattr(rule, name))


# --- DICOM JSON --------------------------------------------------------------------------------------------------


def test_series_tags_come_from_qido_study_and_series_results() -> None:
    study = {"00081030": {"vr": "LO", "Value": ["CT HEAD WO"]}, "00080061": {"vr": "CS", "Value": ["CT"]}}
    series = {
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "0008103E": {"vr": "LO", "Value": ["Head 5.0 "]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00200011": {"vr": "IS", "Value": [3]},
        "00201209": {"vr": "IS", "Value": [32]},
        "00180015": {"vr": "CS", "Value": ["HEAD"]},
        "00180050": {"vr": "DS", "Value": ["5.000000"]},
        "00180010": {"vr": "LO"},
    }

    tags = series_tags_from_dicom_json(study, series)

    assert tags == SeriesTags(
        modality="CT",
        body_part="HEAD",
        study_description="CT HEAD WO",
        series_description="Head 5.0",
        contrast_agent="",
        slice_thickness_mm=5.0,
        image_type=(),
        instance_count=32,
        series_instance_uid="1.2.3.4",
        series_number=3,
    )


def test_instance_metadata_fills_what_the_series_result_lacks() -> None:
    series = {"00080060": {"vr": "CS", "Value": ["CT"]}, "0008103e": {"vr": "LO", "Value": ["CTA 0.6"]}}
    instance = {
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]},
        "00180050": {"vr": "DS", "Value": [0.6]},
        "00180010": {"vr": "LO", "Value": ["Omnipaque"]},
        "00081030": {"vr": "LO", "Value": ["CTA HEAD NECK"]},
    }

    tags = series_tags_from_dicom_json({}, series, instance)

    assert tags.series_description == "CTA 0.6"
    assert tags.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert tags.slice_thickness_mm == pytest.approx(0.6)
    assert tags.has_contrast
    assert tags.study_description == "CTA HEAD NECK"


# --- model cards -------------------------------------------------------------------------------------------------


def test_model_defaults_without_cards() -> None:
    defaults = {d.finding: d for d in default_model_configs(None)}

    assert (defaults["ich"].name, defaults["ich"].version, defaults["ich"].threshold) == ("ich2d", "0.1.0", 0.5)
    assert (defaults["lvo"].name, defaults["lvo"].version, defaults["lvo"].threshold) == ("lvo3d", "0.1.0", 0.5)


def test_model_cards_in_either_layout_give_name_version_threshold_and_hash(tmp_path: Path) -> None:
    (tmp_path / "ich").mkdir()
    card = {"name": "ich2d", "version": "1.2.0", "threshold": 0.31, "sha256": "ab" * 32}
    (tmp_path / "ich" / "card.json").write_text(json.dumps(card))
    (tmp_path / "lvo3d.card.json").write_text(json.dumps({**card, "name": "lvo3d", "finding": "lvo"}))

    defaults = {d.finding: d for d in default_model_configs(tmp_path)}

    assert (defaults["ich"].version, defaults["ich"].threshold, defaults["ich"].from_card) == ("1.2.0", 0.31, True)
    assert (defaults["lvo"].name, defaults["lvo"].sha256) == ("lvo3d", "ab" * 32)


def test_card_with_threshold_outside_zero_to_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ich").mkdir()
    (tmp_path / "ich" / "card.json").write_text(json.dumps({"name": "ich2d", "version": "1", "threshold": 3}))

    with pytest.raises(ValueError, match="outside 0..1"):
        default_model_configs(tmp_path)


# --- database ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_seed_command_creates_defaults_once_and_keeps_admin_edits(tmp_path: Path) -> None:
    from triage.models import AuditEvent, ModelConfig, RoutingRule

    call_command("triage_seed_defaults", weights_dir=tmp_path)
    ModelConfig.objects.filter(finding="ich").update(threshold=0.42)
    RoutingRule.objects.filter(name="Head CT without contrast").update(max_slice_thickness_mm=3.0)
    call_command("triage_seed_defaults", weights_dir=tmp_path)

    assert RoutingRule.objects.count() == 3
    assert ModelConfig.objects.get(finding="ich").threshold == 0.42
    assert RoutingRule.objects.get(name="Head CT without contrast").max_slice_thickness_mm == 3.0
    assert {(m.finding, m.name, m.version) for m in ModelConfig.objects.all()} == {
        ("ich", "ich2d", "0.1.0"),
        ("lvo", "lvo3d", "0.1.0"),
    }
    assert AuditEvent.objects.filter(action="configuration.seeded").count() == 1


@pytest.mark.django_db
def test_seed_command_follows_shipped_cards_and_resets_on_request(tmp_path: Path) -> None:
    from triage.models import ModelConfig, RoutingRule

    call_command("triage_seed_defaults", weights_dir=tmp_path)
    ModelConfig.objects.filter(finding="lvo").update(threshold=0.9)
    RoutingRule.objects.filter(name="Head and neck CT angiography").update(enabled=False)
    (tmp_path / "lvo").mkdir()
    card = {"name": "lvo3d", "version": "0.2.0", "threshold": 0.37, "sha256": "cd" * 32}
    (tmp_path / "lvo" / "card.json").write_text(json.dumps(card))

    call_command("triage_seed_defaults", weights_dir=tmp_path)
    followed = ModelConfig.objects.get(finding="lvo")
    call_command("triage_seed_defaults", weights_dir=tmp_path, reset=True)
    reset = ModelConfig.objects.get(finding="lvo")

    assert (followed.version, followed.weights_sha256, followed.threshold) == ("0.2.0", "cd" * 32, 0.9)
    assert reset.threshold == 0.37
    assert RoutingRule.objects.get(name="Head and neck CT angiography").enabled is True

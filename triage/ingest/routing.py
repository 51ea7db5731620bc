"""Which model a series goes to: ordered, admin-editable rules matched against the series' DICOM tags.

The rules and their conditions are described in docs/architecture.md (Routing).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from django.db import transaction

from inference.modelcard import card_for_finding
from triage.core.audit import audit_record
from triage.models import ModelConfig, RoutingRule

logger = logging.getLogger(__name__)

REASON_MAX_LENGTH = 255
_NO_CONTRAST = re.compile(
    r"^\s*(none|no|n/?a|nil|-+|0|without|no contrast|non[- ]?contrast|kein|ohne)?\s*$", re.IGNORECASE
)
_NON_ORIGINAL_IMAGE_TYPES = frozenset(
    {"LOCALIZER", "SCOUT", "TOPOGRAM", "PROJECTION IMAGE", "MIP", "MINIP", "MPR", "REFORMATTED", "VOLUME_RENDER", "VR"}
)


class RuleLike(Protocol):
    name: str
    model: str
    order: int
    enabled: bool
    modality: str
    body_part_regex: str
    description_regex: str
    exclude_description_regex: str
    contrast: str
    min_slice_thickness_mm: float | None
    max_slice_thickness_mm: float | None
    min_instances: int | None
    require_image_type_original: bool


@dataclass(frozen=True)
class RuleSpec:
    """A routing rule outside the database: the shipped defaults, and rules in tests."""

    name: str
    model: str
    order: int = 100
    enabled: bool = True
    modality: str = "CT"
    body_part_regex: str = ""
    description_regex: str = ""
    exclude_description_regex: str = ""
    contrast: str = "any"
    min_slice_thickness_mm: float | None = None
    max_slice_thickness_mm: float | None = None
    min_instances: int | None = None
    require_image_type_original: bool = True


@dataclass(frozen=True)
class SeriesTags:
    """What routing needs to know about one series, from QIDO-RS results or instance metadata."""

    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    contrast_agent: str = ""
    slice_thickness_mm: float | None = None
    image_type: tuple[str, ...] = ()
    instance_count: int | None = None
    series_instance_uid: str = ""
    series_number: int | None = None

    @property
    def has_contrast(self) -> bool:
        return not _NO_CONTRAST.match(self.contrast_agent or "")


@dataclass(frozen=True)
class RoutingDecision:
    """``model`` is a finding code, or "" when the series is not triaged; ``reason`` is for admins."""

    model: str
    reason: str
    rule: str = ""


@dataclass(frozen=True)
class ModelDefaults:
    """The ModelConfig a fresh installation starts with, taken from a shipped model card when there is one."""

    finding: str
    name: str
    version: str
    threshold: float
    sha256: str = ""
    from_card: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------------


def route_series(*, series: SeriesTags, rules: Sequence[RuleLike]) -> RoutingDecision:
    """The first enabled rule, by ascending order, whose conditions all hold; else why none did."""
    misses = []
    for rule in sorted((r for r in rules if r.enabled), key=lambda r: r.order):
        miss = rule_mismatch(rule, series)
        if miss is None:
            return RoutingDecision(model=rule.model, reason=f"{rule.model}: rule '{rule.name}' matched", rule=rule.name)
        misses.append(f"{rule.name}: {miss}")
    detail = "; ".join(misses) if misses else "no routing rules are enabled"
    return RoutingDecision(model="", reason=_clip(f"no rule matched: {detail}"))


def rule_mismatch(rule: RuleLike, series: SeriesTags) -> str | None:
    """The first condition of ``rule`` that ``series`` fails, in words; None when the rule matches."""
    try:
        for check in _CHECKS:
            miss = check(rule, series)
            if miss:
                return miss
    except re.error:
        return "the rule has an invalid regular expression"
    return None


def _check_modality(rule: RuleLike, series: SeriesTags) -> str | None:
    if rule.modality and rule.modality.strip().upper() != series.modality.strip().upper():
        return f"modality {series.modality or 'unknown'}, not {rule.modality}"
    return None


def _check_anatomy(rule: RuleLike, series: SeriesTags) -> str | None:
    if not rule.body_part_regex:
        return None
    if series.body_part:
        if _search(rule.body_part_regex, series.body_part):
            return None
        return f"body part {series.body_part} does not match"
    if _search(rule.body_part_regex, series.series_description) or _search(
        rule.body_part_regex, series.study_description
    ):
        return None
    return "no body part, and the descriptions name no matching anatomy"


def _check_description(rule: RuleLike, series: SeriesTags) -> str | None:
    if not rule.description_regex:
        return None
    if _search(rule.description_regex, series.series_description) or _search(
        rule.description_regex, series.study_description
    ):
        return None
    return "the study and series descriptions do not match"


def _check_exclusion(rule: RuleLike, series: SeriesTags) -> str | None:
    if not rule.exclude_description_regex:
        return None
    found = _search(rule.exclude_description_regex, series.series_description)
    return f"series description excluded ({found.group(0).strip() or 'match'})" if found else None


def _check_contrast(rule: RuleLike, series: SeriesTags) -> str | None:
    if rule.contrast == "required" and not series.has_contrast:
        return "no contrast agent"
    if rule.contrast == "absent" and series.has_contrast:
        return "contrast agent present"
    return None


def _check_thickness(rule: RuleLike, series: SeriesTags) -> str | None:
    thickness = series.slice_thickness_mm
    if thickness is None:
        return None
    if rule.min_slice_thickness_mm is not None and thickness < rule.min_slice_thickness_mm:
        return f"slice thickness {thickness:g} mm, below {rule.min_slice_thickness_mm:g} mm"
    if rule.max_slice_thickness_mm is not None and thickness > rule.max_slice_thickness_mm:
        return f"slice thickness {thickness:g} mm, above {rule.max_slice_thickness_mm:g} mm"
    return None


def _check_instances(rule: RuleLike, series: SeriesTags) -> str | None:
    if rule.min_instances and series.instance_count is not None and series.instance_count < rule.min_instances:
        return f"{series.instance_count} images, fewer than {rule.min_instances}"
    return None


def _check_image_type(rule: RuleLike, series: SeriesTags) -> str | None:
    if not rule.require_image_type_original or not series.image_type:
        return None
    values = [v.strip().upper() for v in series.image_type]
    if values[0] != "ORIGINAL" or _NON_ORIGINAL_IMAGE_TYPES.intersection(values):
        joined = "\\".join(values)
        return f"image type {joined} is not an original axial image"
    return None


_CHECKS = (
    _check_modality,
    _check_image_type,
    _check_exclusion,
    _check_anatomy,
    _check_description,
    _check_contrast,
    _check_thickness,
    _check_instances,
)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _search(pattern: str, text: str) -> re.Match[str] | None:
    return _compiled(pattern).search(text or "")


def _clip(text: str) -> str:
    return text if len(text) <= REASON_MAX_LENGTH else text[: REASON_MAX_LENGTH - 1] + "…"


# ---------------------------------------------------------------------------------------------------------------
# DICOM JSON (QIDO-RS results, WADO-RS metadata)
# ---------------------------------------------------------------------------------------------------------------

_TAGS = {
    "modality": "00080060",
    "body_part": "00180015",
    "study_description": "00081030",
    "series_description": "0008103E",
    "contrast_agent": "00180010",
    "slice_thickness": "00180050",
    "image_type": "00080008",
    "instance_count": "00201209",
    "series_uid": "0020000E",
    "series_number": "00200011",
}


def series_tags_from_dicom_json(
    study_json: Mapping[str, Any], series_json: Mapping[str, Any], instance_json: Mapping[str, Any] | None = None
) -> SeriesTags:
    """Routing tags from DICOM JSON objects: the series first, then one instance's metadata, then the study."""
    series_first = [series_json, instance_json or {}, study_json]
    study_first = [study_json, series_json, instance_json or {}]
    return SeriesTags(
        modality=_text(series_first, "modality"),
        body_part=_text(series_first, "body_part"),
        study_description=_text(study_first, "study_description"),
        series_description=_text(series_first, "series_description"),
        contrast_agent=_text(series_first, "contrast_agent"),
        slice_thickness_mm=_number(series_first, "slice_thickness"),
        image_type=tuple(str(v) for v in _values(series_first, "image_type")),
        instance_count=_integer(series_first, "instance_count"),
        series_instance_uid=_text(series_first, "series_uid"),
        series_number=_integer(series_first, "series_number"),
    )


def _values(sources: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    tag = _TAGS[name]
    for source in sources:
        element = source.get(tag) or source.get(tag.lower())
        if isinstance(element, Mapping) and element.get("Value"):
            return [v for v in element["Value"] if v is not None]
    return []


def _text(sources: Sequence[Mapping[str, Any]], name: str) -> str:
    values = _values(sources, name)
    return str(values[0]).strip() if values else ""


def _number(sources: Sequence[Mapping[str, Any]], name: str) -> float | None:
    values = _values(sources, name)
    try:
        return float(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def _integer(sources: Sequence[Mapping[str, Any]], name: str) -> int | None:
    number = _number(sources, name)
    return int(number) if number is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------------------------

_HEAD = r"HEAD|BRAIN|SKULL|CRANI|NEURO|CEREBR|STROKE|KOPF|SCHAEDEL|SCHÄDEL|(?<![A-Z])CCT(?![A-Z])"
_HEAD_NECK = _HEAD + r"|NECK|CAROTID|CAROTIS|WILLIS|HALS"
_NOT_AXIAL = (
    r"LOCALI[SZ]ER|SCOUT|TOPO|SURVIEW|SCANOGRAM|PILOT|DOSE|SCREEN ?SAVE|PATIENT PROTOCOL|REFORMAT|"
    r"(?<![A-Z0-9])(MIP|MINIP|MPR|VR|VRT|3D|CORONAL|SAGITTAL|COR|SAG)(?![A-Z0-9])"
)
_ANGIO = r"CTA|ANGIO|WILLIS|(?<![A-Z])COW(?![A-Z])"
_CONTRAST_WORDS = r"POST.?CONTRAST|WITH CONTRAST|(?<![A-Z])W/? CONTRAST|(?<![A-Z])C\+"
_PERFUSION_VENOUS = r"PERF|(?<![A-Z])CTP(?![A-Z])|(?<![A-Z])CTV(?![A-Z])|VENO|4D|BONE|KNOCHEN|LUNG"


def default_routing_rules() -> list[RuleSpec]:
    """ICH for thin-to-standard non-contrast head CT; LVO for thin head and neck CT angiography."""
    return [
        RuleSpec(
            name="Head CT without contrast",
            model="ich",
            order=10,
            body_part_regex=_HEAD,
            exclude_description_regex=f"{_NOT_AXIAL}|{_ANGIO}|{_CONTRAST_WORDS}|{_PERFUSION_VENOUS}",
            contrast="absent",
            min_slice_thickness_mm=0.5,
            max_slice_thickness_mm=5.0,
            min_instances=10,
        ),
        RuleSpec(
            name="Head and neck CT angiography",
            model="lvo",
            order=20,
            body_part_regex=_HEAD_NECK,
            description_regex=_ANGIO,
            exclude_description_regex=f"{_NOT_AXIAL}|{_PERFUSION_VENOUS}",
            max_slice_thickness_mm=1.5,
            min_instances=50,
        ),
        RuleSpec(
            name="Thin contrast head and neck CT",
            model="lvo",
            order=30,
            body_part_regex=_HEAD_NECK,
            exclude_description_regex=f"{_NOT_AXIAL}|{_PERFUSION_VENOUS}",
            contrast="required",
            max_slice_thickness_mm=1.5,
            min_instances=50,
        ),
    ]


_MODEL_DEFAULTS = {
    "ich": ModelDefaults(finding="ich", name="ich2d", version="0.1.0", threshold=0.5),
    "lvo": ModelDefaults(finding="lvo", name="lvo3d", version="0.1.0", threshold=0.5),
}


def default_model_configs(weights_dir: Path | None) -> list[ModelDefaults]:
    """One per finding; a model card in ``weights_dir`` (name, version, threshold, sha256) wins when present.

    Cards are found as ``<finding>/card.json`` or as ``<weights>.card.json`` beside the weights, naming the finding.
    """
    return [_from_card(weights_dir, fallback) for fallback in _MODEL_DEFAULTS.values()]


def _from_card(weights_dir: Path | None, fallback: ModelDefaults) -> ModelDefaults:
    found = (
        card_for_finding(weights_dir, fallback.finding) if weights_dir is not None and weights_dir.is_dir() else None
    )
    if found is None:
        return fallback
    path, card = found
    try:
        return ModelDefaults(
            finding=fallback.finding,
            name=str(card.get("name") or fallback.name),
            version=str(card.get("version") or fallback.version),
            threshold=_threshold(card.get("threshold", fallback.threshold)),
            sha256=str(card.get("sha256") or ""),
            from_card=True,
        )
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"Model card {path} is not valid: {err}") from err


def _threshold(value: Any) -> float:
    threshold = float(value)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside 0..1")
    return threshold


# ---------------------------------------------------------------------------------------------------------------
# Database side: seeding the defaults
# ---------------------------------------------------------------------------------------------------------------


@transaction.atomic
def routing_seed_defaults(*, weights_dir: Path | None, reset: bool = False) -> dict[str, list[str]]:
    """Create the default rules and model configurations that are missing; ``reset`` restores edited ones.

    A model configuration that uses the shipped weights (no ``weights_path``) follows the shipped model card's name,
    version and SHA-256; its threshold is kept, since admins tune it locally, unless ``reset`` is given.
    """
    report: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    for spec in default_routing_rules():
        _seed_rule(spec, reset=reset, report=report)
    for defaults in default_model_configs(weights_dir):
        _seed_model(defaults, reset=reset, report=report)
    logger.info("defaults seeded: %d created, %d updated", len(report["created"]), len(report["updated"]))
    if report["created"] or report["updated"]:
        audit_record(action="configuration.seeded", data={k: report[k] for k in ("created", "updated")})
    return report


def _seed_rule(spec: RuleSpec, *, reset: bool, report: dict[str, list[str]]) -> None:
    values = {k: v for k, v in asdict(spec).items() if k != "name"}
    rule, created = RoutingRule.objects.get_or_create(name=spec.name, defaults=values)
    label = f"rule '{spec.name}'"
    if created:
        report["created"].append(label)
    elif reset and any(getattr(rule, k) != v for k, v in values.items()):
        RoutingRule.objects.filter(pk=rule.pk).update(**values)
        report["updated"].append(label)
    else:
        report["unchanged"].append(label)


def _seed_model(defaults: ModelDefaults, *, reset: bool, report: dict[str, list[str]]) -> None:
    shipped = {"name": defaults.name, "version": defaults.version, "weights_sha256": defaults.sha256}
    config, created = ModelConfig.objects.get_or_create(
        finding=defaults.finding, defaults={**shipped, "threshold": defaults.threshold}
    )
    label = f"model {defaults.finding} ({defaults.name} {defaults.version})"
    if created:
        report["created"].append(label)
        return
    wanted: Mapping[str, object]
    if reset:
        wanted = {**shipped, "threshold": defaults.threshold, "weights_path": ""}
    elif defaults.from_card and not config.weights_path:
        wanted = shipped  # the row describes the shipped weights, so it follows their card
    else:
        wanted = {}
    changed = [k for k, v in wanted.items() if getattr(config, k) != v]
    for key in changed:
        setattr(config, key, wanted[key])
    if changed:
        config.save(update_fields=[*changed, "updated_at"])
        report["updated"].append(label)
    else:
        report["unchanged"].append(label)

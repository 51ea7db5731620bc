"""The model card behind a model version, read as JSON without torch, and what it leads monitoring to expect.

Cards are looked for where the weights are: the configured weights file, TRIAGE_MODEL_DIR, the shipped weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from inference.modelcard import (
    CardReference,
    card_for_finding,
    card_reference,
    expected_flag_rate,
    flag_rate,
    flag_rate_band,
    read_card,
    shipped_card,
)
from triage.models import ModelConfig

logger = logging.getLogger(__name__)


def _candidates(finding: str) -> Iterator[dict[str, Any]]:
    config = ModelConfig.objects.filter(finding=finding).first()
    model_dir = settings.TRIAGE_MODEL_DIR
    if config is not None and config.weights_path:
        path = Path(config.weights_path)
        yield read_card(path if path.is_absolute() or not model_dir else Path(model_dir) / path)
    if model_dir:
        found = card_for_finding(Path(model_dir), finding)
        if found:
            yield found[1]
    yield shipped_card(finding)


def card_for_version(*, finding: str, model_version: str) -> dict[str, Any] | None:
    """The first card found for the finding that names this version; None when no card does (or none is valid)."""
    try:
        for card in _candidates(finding):
            if card and str(card.get("version")) == model_version:
                return card
    except ValueError as err:
        logger.warning("model card for %s unreadable: %s", finding, err)
    return None


def configured_version(*, finding: str) -> str | None:
    """The version the site runs for a finding: its ModelConfig, else the shipped card's."""
    version = ModelConfig.objects.filter(finding=finding).values_list("version", flat=True).first()
    return version or shipped_card(finding).get("version")


def reference_for(*, finding: str, model_version: str, prevalence: float | None = None) -> CardReference | None:
    """What the version's card expects at this site; None without a card that has validation figures."""
    card = card_for_version(finding=finding, model_version=model_version)
    if card is None:
        return None
    try:
        return card_reference(card, prevalence=prevalence)
    except ValueError as err:
        logger.warning("model card of %s %s gives no reference: %s", finding, model_version, err)
        return None


@dataclass(frozen=True)
class CardAlerts:
    """Alerts a threshold gives by the card: share flagged (approximate off the card's threshold) and per day."""

    prevalence: float
    prevalence_low: float
    prevalence_high: float
    rate: float
    rate_low: float
    rate_high: float
    studies_per_day: float

    @property
    def per_day(self) -> float:
        return self.rate * self.studies_per_day

    @property
    def per_day_low(self) -> float:
        return self.rate_low * self.studies_per_day

    @property
    def per_day_high(self) -> float:
        return self.rate_high * self.studies_per_day


def card_alerts(
    *, finding: str, model_version: str, threshold: float, studies_per_day: float, prevalence: float | None = None
) -> CardAlerts | None:
    """Expected alerts per day at ``threshold``: at ``prevalence`` (default the middle of the card's range) and
    over the card's prevalence range. None without a card for the version."""
    card = card_for_version(finding=finding, model_version=model_version)
    if card is None:
        return None
    try:
        reference = card_reference(card, prevalence=prevalence)
        low, high = flag_rate_band(card, threshold)
        if abs(threshold - reference.threshold) < 1e-9:
            rate = flag_rate(reference.sensitivity, reference.specificity, reference.prevalence)
        else:
            rate = expected_flag_rate(card, threshold, reference.prevalence)
    except ValueError as err:
        logger.warning("model card of %s %s gives no expected flag rate: %s", finding, model_version, err)
        return None
    return CardAlerts(
        reference.prevalence, reference.prevalence_low, reference.prevalence_high, rate, low, high, studies_per_day
    )

"""The shipped weights score the fixed gold studies as recorded (tests/data/gold, written by inference.gold)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.gold import load
from inference.runner import ModelRunner

GOLD = Path(__file__).resolve().parents[1] / "data" / "gold"
MANIFEST = (
    json.loads((GOLD / "manifest.json").read_text(encoding="utf-8")) if (GOLD / "manifest.json").is_file() else {}
)
STUDIES = sorted(MANIFEST.get("studies", {}).items())


@pytest.fixture(scope="module")
def runners() -> dict[str, ModelRunner]:
    return {finding: ModelRunner(finding, device="cpu") for finding in ("ich", "lvo")}


def test_gold_manifest_names_the_shipped_models(runners: dict[str, ModelRunner]) -> None:
    for finding, runner in runners.items():
        recorded = MANIFEST["models"][finding]
        assert (recorded["name"], recorded["version"]) == (runner.model_name, runner.model_version)


@pytest.mark.parametrize(("name", "study"), STUDIES, ids=[name for name, _ in STUDIES])
def test_gold_study_scores_as_recorded_and_on_the_right_side(
    runners: dict[str, ModelRunner], name: str, study: dict
) -> None:
    hu, spacing, label = load(GOLD / f"{name}.npz")

    score = runners[study["finding"]].run(hu, spacing).score

    assert score == pytest.approx(study["score"], abs=MANIFEST["tolerance"])
    on_the_right_side = (score >= runners[study["finding"]].threshold) == bool(label)
    assert on_the_right_side != study["known_failure"]

"""Model cards: what a set of weights is, how it was made, how well it did, and what it must not be used for.

Written beside the weights as ``<stem>.card.json`` (read by the loader: architecture, threshold, SHA-256) and
``<stem>.card.md`` (for people).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """SHA-256 of a weights file, read in 1 MiB blocks (weights pin models; no torch needed to check them)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CARD_VERSION = "1.0.0"

INTENDED_USE = (
    "Worklist triage support: flags head CT studies that may show {what} so that a radiologist reads them sooner. "
    "Advisory only; every study is still read in full by a radiologist. Not for diagnosis or treatment decisions."
)
WHAT = {
    "ich": "acute intracranial hemorrhage (non-contrast head CT)",
    "lvo": "a large-vessel occlusion of the ICA terminus or M1 (head CT angiography)",
}
LIMITS = [
    "Not a medical device; validate locally on the site's own cases before any use.",
    "Trained and evaluated only on synthetic phantoms: phantom accuracy is a pipeline check, not a clinical claim.",
    "Performance on real scanners, protocols, patients and artefacts is unknown until measured locally.",
    "The threshold was chosen on synthetic validation data for a target sensitivity; re-derive it on local data.",
]


def card_paths(weights: Path) -> tuple[Path, Path]:
    return weights.with_name(weights.stem + ".card.json"), weights.with_name(weights.stem + ".card.md")


def card_load(path: Path) -> dict[str, Any]:
    """The one reader of the card format: a JSON object, or ValueError naming the file."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"Model card {path} is not valid JSON: {err}") from err
    if not isinstance(card, dict):
        raise ValueError(f"Model card {path} is not a JSON object")
    return card


def read_card(weights: Path) -> dict[str, Any]:
    """The model card beside a weights file (``<stem>.card.json``), or {} when there is none."""
    json_path, _ = card_paths(weights)
    return card_load(json_path) if json_path.is_file() else {}


def card_for_finding(directory: Path, finding: str) -> tuple[Path, dict[str, Any]] | None:
    """The card in ``directory`` for a finding: ``<finding>/card.json``, else a ``*.card.json`` naming the finding."""
    candidates = [directory / finding / "card.json", *sorted(directory.glob("*.card.json"))]
    for path in candidates:
        if not path.is_file():
            continue
        card = card_load(path)
        if path.name == "card.json" or card.get("finding") == finding:
            return path, card
    return None


def write_card(weights: Path, summary: dict[str, Any], *, version: str = CARD_VERSION) -> dict[str, Any]:
    """Write the JSON and Markdown card for ``weights`` from a training (and optionally evaluation) summary."""
    finding = summary["finding"]
    card = {
        "name": summary["architecture"],
        "version": version,
        "sha256": sha256_file(weights),
        "weights_file": weights.name,
        "intended_use": INTENDED_USE.format(what=WHAT[finding]),
        "limits": LIMITS,
        "advisory": True,
        **summary,
    }
    json_path, md_path = card_paths(weights)
    json_path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(card), encoding="utf-8")
    return card


def update_card(weights: Path, key: str, value: Any) -> dict[str, Any]:
    """Add or replace one section (e.g. a held-out evaluation) and rewrite both files."""
    json_path, md_path = card_paths(weights)
    card = card_load(json_path)
    card[key] = value
    json_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(card), encoding="utf-8")
    return card


def _iv(d: dict[str, float]) -> str:
    return f"{d['estimate']:.3f} (95% CI {d['low']:.3f}–{d['high']:.3f})"


def render_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        "**Not a medical device; validate locally.** Trained on synthetic data only.",
        "",
        f"- Finding: `{card['finding']}`; architecture `{card['architecture']}`, {card['parameters']:,} parameters",
        f"- Weights: `{card['weights_file']}`, SHA-256 `{card['sha256']}`",
        f"- Operating threshold: {card['threshold']:.4f} (chosen on validation for sensitivity ≥ "
        f"{card['target_sensitivity']})",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Limits",
        *[f"- {item}" for item in card["limits"]],
    ]
    if card.get("training", {}).get("train_count"):
        lines += ["", *_training_markdown(card["training"])]
    if card.get("validation", {}).get("auc"):
        lines += ["", *_validation_markdown(card["validation"])]
    # "evaluation": held out, the training generator family; "evaluation_family_<X>": a family never trained on.
    for key in sorted(k for k in card if k.startswith("evaluation")):
        lines += ["", *_evaluation_markdown(card[key])]
    return "\n".join(lines) + "\n"


def _training_markdown(t: dict[str, Any]) -> list[str]:
    return [
        "## Training data",
        f"- {t['data']}; generator family {t['generator_family']}",
        f"- {t['train_count']} training phantoms (seeds {t['train_seeds']}), {t['val_count']} validation phantoms "
        f"(seeds {t['val_seeds']}); classes balanced, subtypes in turn",
        f"- {t['epochs']} epochs (best: {t['best_epoch']}), batch {t['batch_size']}, learning rate "
        f"{t['learning_rate']}, {t['seconds']:.0f} s on CPU, torch {t['torch']}",
        *([f"- {t['lineage']}"] if t.get("lineage") else []),
    ]


def _validation_markdown(v: dict[str, Any]) -> list[str]:
    op = v["operating_point"]
    return [
        "## Validation (synthetic, same generator family)",
        f"- AUC {_iv(v['auc'])}",
        f"- At the threshold: sensitivity {_iv(op['sensitivity'])}, specificity {_iv(op['specificity'])}",
        f"- Calibration: ECE {v['calibration']['ece']:.3f}, Brier {v['calibration']['brier']:.3f}",
    ]


def _evaluation_markdown(ev: dict[str, Any]) -> list[str]:
    op = ev["operating_point"]
    lines = [
        f"## Held-out evaluation (seed {ev['seed']}, generator family {ev['family']}, {ev['count']} phantoms)",
        f"- AUC {_iv(ev['auc'])}",
        f"- At the shipped threshold: sensitivity {_iv(op['sensitivity'])}, specificity {_iv(op['specificity'])}",
    ]
    for name, sub in ev.get("subtypes", {}).items():
        lines.append(f"- Subtype {name}: AUC {_iv(sub['auc'])} ({sub['positives']} positives)")
    for name, band in ev.get("size_bands", {}).items():
        lines.append(
            f"- Bleed size {name}: AUC {_iv(band['auc'])}, sensitivity {_iv(band['sensitivity'])} "
            f"({band['positives']} positives)"
        )
    for name, hn in ev.get("hard_negatives", {}).items():
        lines.append(f"- Hard negative {name}: false-positive rate {_iv(hn['false_positive_rate'])} (n={hn['count']})")
    if "side_accuracy" in ev:
        lines.append(f"- Side of occlusion correct: {_iv(ev['side_accuracy'])}")
    if "key_slice_in_lesion" in ev:
        lines.append(f"- Key slice inside the lesion: {_iv(ev['key_slice_in_lesion'])}")
    return lines

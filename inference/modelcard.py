"""Model cards: what a set of weights is, how it was made, how well it did, and what it must not be used for.

Written beside the weights as ``<stem>.card.json`` (read by the loader: architecture, threshold, SHA-256) and
``<stem>.card.md`` (for people). A card also tells monitoring what to expect at a site: the score histogram and the
band of plausible flag rates (``card_reference``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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
    for key in sorted(k for k in card if k.startswith("evaluation") and not k.startswith(ROBUSTNESS_PREFIX)):
        lines += ["", *_evaluation_markdown(card[key])]
    robustness = [card[k] for k in sorted(card) if k.startswith(ROBUSTNESS_PREFIX)]
    if robustness:
        lines += ["", *_robustness_markdown(robustness)]
    if card.get("randomisation"):
        lines += ["", *_randomisation_markdown(card["randomisation"])]
    return "\n".join(lines) + "\n"


# ``python -m inference.robustness --update-card`` writes one section per shift, numbered in table order.
ROBUSTNESS_PREFIX = "evaluation_robustness_"


def _robustness_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Robustness: one shift at a time (synthetic phantoms)",
        "| phantoms | n | AUC | sensitivity | specificity |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        op = r["operating_point"]
        lines.append(
            f"| {r['family']} | {r['count']} | {_iv(r['auc'])} | {_iv(op['sensitivity'])} | {_iv(op['specificity'])} |"
        )
    return lines


def _randomisation_markdown(ranges: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Domain randomisation ranges (training phantoms, drawn per study)",
        "| parameter | range | source |",
        "| --- | --- | --- |",
    ]
    for name, r in ranges.items():
        lines.append(f"| {name} | {r['low']:g} to {r['high']:g} {r['unit']} | {r['source']} |")
    return lines


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


# --- what a card leads the product to expect --------------------------------------------------------------------

SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Site prevalence assumed when a card states no ``monitoring`` range: a triage stream of head CTs.
PREVALENCE_LOW, PREVALENCE_HIGH = 0.05, 0.25


@dataclass(frozen=True)
class CardReference:
    """What a card predicts for a site: the score histogram at one prevalence and the plausible flag-rate band."""

    bin_edges: list[float]
    expected: list[float]  # share of studies per bin at ``prevalence``; sums to 1
    prevalence: float
    prevalence_low: float
    prevalence_high: float
    threshold: float
    sensitivity: float
    specificity: float
    flag_rate_low: float
    flag_rate_high: float


def shipped_card(finding: str) -> dict[str, Any]:
    """The card of the weights shipped for a finding (torch-free: it reads JSON only), or {}."""
    found = card_for_finding(SHIPPED_WEIGHTS_DIR, finding)
    return found[1] if found else {}


def prevalence_range(card: dict[str, Any]) -> tuple[float, float]:
    """The card's ``monitoring`` prevalence range, else 5–25%."""
    section = card.get("monitoring") or {}
    low = float(section.get("prevalence_low", PREVALENCE_LOW))
    high = float(section.get("prevalence_high", PREVALENCE_HIGH))
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"Model card monitoring range {low}–{high} is not 0 ≤ low ≤ high ≤ 1")
    return low, high


def class_histograms(card: dict[str, Any]) -> tuple[list[float], np.ndarray, np.ndarray]:
    """(bin edges, positives per bin, negatives per bin) from ``reference`` if the card has one, else calibration.

    A ``reference`` section gives ``bin_edges``, ``positives`` and ``negatives`` (counts or shares) directly. From
    ``validation.calibration`` the positives of a bin are its count times its observed rate, the negatives the rest.
    """
    if "reference" in card:
        ref = card["reference"]
        edges = [float(e) for e in ref["bin_edges"]]
        pos, neg = np.asarray(ref["positives"], dtype=np.float64), np.asarray(ref["negatives"], dtype=np.float64)
    else:
        cal = card["validation"]["calibration"]
        edges = [float(e) for e in cal["bin_edges"]]
        pos, neg = _calibration_classes(cal)
    if not (len(edges) == pos.size + 1 == neg.size + 1) or pos.sum() <= 0 or neg.sum() <= 0:
        raise ValueError("Model card histograms need bin_edges one longer than the counts and both classes")
    return edges, pos, neg


def _calibration_classes(cal: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per calibration bin: its count times its observed rate, and the rest."""
    counts = np.asarray(cal["counts"], dtype=np.float64)
    rate = np.asarray([r if r is not None else 0.0 for r in cal["observed_rate"]], dtype=np.float64)
    return counts * rate, counts * (1.0 - rate)


def _operating_point(card: dict[str, Any]) -> tuple[float, float]:
    """The ``reference`` section's operating point where it states one, else the validation split's."""
    ref = card.get("reference") or {}
    if "sensitivity" in ref and "specificity" in ref:
        return float(ref["sensitivity"]), float(ref["specificity"])
    op = card["validation"]["operating_point"]
    return float(op["sensitivity"]["estimate"]), float(op["specificity"]["estimate"])


def reference_from_evaluations(card: dict[str, Any], sections: list[str]) -> dict[str, Any]:
    """A ``reference`` section pooled from held-out evaluation sections: their calibration bins split by class and
    their operating points at the card's threshold. For a card whose validation split was drawn wider than a site's
    scanners (domain randomisation), so that monitoring expects what plain studies give."""
    evaluations = [card[name] for name in sections]
    edges = evaluations[0]["calibration"]["bin_edges"]
    pos, neg = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    tp = fn = tn = fp = 0
    for ev in evaluations:
        cal = ev["calibration"]
        if cal["bin_edges"] != edges:
            raise ValueError("Evaluation sections have different calibration bins")
        ev_pos, ev_neg = _calibration_classes(cal)
        pos, neg = pos + ev_pos, neg + ev_neg
        op = ev["operating_point"]
        tp, fn, tn, fp = tp + op["tp"], fn + op["fn"], tn + op["tn"], fp + op["fp"]
    return {
        "source": f"held-out evaluation sections {', '.join(sections)}",
        "bin_edges": edges,
        "positives": [round(float(v), 3) for v in pos],
        "negatives": [round(float(v), 3) for v in neg],
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
    }


def flag_rate(sensitivity: float, specificity: float, prevalence: float) -> float:
    """Share of studies flagged: true alerts p·sens plus false alerts (1 − p)·(1 − spec)."""
    return prevalence * sensitivity + (1.0 - prevalence) * (1.0 - specificity)


def card_reference(card: dict[str, Any], *, prevalence: float | None = None) -> CardReference:
    """The expected score histogram at ``prevalence`` (default: the middle of the card's range) and the band of
    flag rates the card's operating point gives over the prevalence range. Raises ValueError for a card without
    the validation sections this needs."""
    try:
        edges, pos, neg = class_histograms(card)
        sens, spec = _operating_point(card)
        threshold = float(card["threshold"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"Model card lacks what a reference needs: {err}") from err
    low, high = prevalence_range(card)
    p = (low + high) / 2.0 if prevalence is None else prevalence
    mixed = p * pos / pos.sum() + (1.0 - p) * neg / neg.sum()
    rates = sorted((flag_rate(sens, spec, low), flag_rate(sens, spec, high)))
    return CardReference(
        bin_edges=edges,
        expected=[float(x) for x in mixed],
        prevalence=p,
        prevalence_low=low,
        prevalence_high=high,
        threshold=threshold,
        sensitivity=sens,
        specificity=spec,
        flag_rate_low=rates[0],
        flag_rate_high=rates[1],
    )


def _share_at_or_above(edges: list[float], counts: np.ndarray, threshold: float) -> float:
    """Share of a histogram at or above ``threshold``, scores spread evenly within a bin."""
    above = 0.0
    for i, count in enumerate(counts):
        lo, hi = edges[i], edges[i + 1]
        if threshold <= lo:
            above += count
        elif threshold < hi:
            above += count * (hi - threshold) / (hi - lo)
    return float(above / counts.sum())


def expected_flag_rate(card: dict[str, Any], threshold: float, prevalence: float) -> float:
    """Approximate flag rate at any threshold, from the card's per-class histograms (scores taken as spread evenly
    within each bin, so it is only as fine as the bins; at the card's own threshold the operating point is exact
    and ``card_reference`` uses that)."""
    edges, pos, neg = class_histograms(card)
    sens = _share_at_or_above(edges, pos, threshold)
    spec = 1.0 - _share_at_or_above(edges, neg, threshold)
    return flag_rate(sens, spec, prevalence)


def flag_rate_band(card: dict[str, Any], threshold: float | None = None) -> tuple[float, float]:
    """Plausible flag rates over the card's prevalence range: exact at the card's threshold (its operating point),
    approximate from the histograms at any other (``expected_flag_rate``)."""
    reference = card_reference(card)
    if threshold is None or abs(threshold - reference.threshold) < 1e-9:
        return reference.flag_rate_low, reference.flag_rate_high
    prevalences = (reference.prevalence_low, reference.prevalence_high)
    rates = sorted(expected_flag_rate(card, threshold, p) for p in prevalences)
    return rates[0], rates[1]

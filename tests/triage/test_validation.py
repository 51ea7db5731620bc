"""Local validation: statistics against known values, ground truth from CSV and feedback, per-version performance."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone

from inference import stats
from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory
from triage.governance import metrics, validation
from triage.models import AuditEvent, GroundTruth, ModelConfig
from worklist.models import Feedback

# --- statistics (no database) ------------------------------------------------------------------------------------

HAND_LABELS = [1, 1, 0, 1, 0, 0]
HAND_SCORES = [0.9, 0.8, 0.7, 0.6, 0.55, 0.4]


def test_roc_of_a_hand_made_score_list():
    roc = stats.roc_curve(np.array(HAND_LABELS), np.array(HAND_SCORES))
    np.testing.assert_allclose(roc.tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_auc_of_a_hand_made_score_list_is_eight_ninths():
    # Positives 0.9, 0.8, 0.6 against negatives 0.7, 0.55, 0.4: 8 of 9 pairs ordered correctly.
    assert metrics.auc_delong(HAND_LABELS, HAND_SCORES).estimate == pytest.approx(8 / 9)


def test_fast_delong_matches_the_matrix_delong():
    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.2
    scores = np.round(rng.random(400) * 0.7 + labels * 0.3, 2)  # rounded: many ties
    fast, reference = metrics.auc_delong(labels, scores), stats.delong_ci(labels, scores)
    assert (fast.estimate, fast.low, fast.high) == pytest.approx((reference.estimate, reference.low, reference.high))


@pytest.mark.parametrize(
    ("successes", "total", "low", "high"),
    [
        # Newcombe (1998), Stat Med 17:857, table I, method 3 (Wilson score, no continuity correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_published_examples(successes, total, low, high):
    interval = stats.wilson_interval(successes, total)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)


def test_psi_of_known_histograms():
    # sum((a - e) * ln(a / e)): 0.15 ln 2.5 + 0.05 ln 1.25 + 0.05 ln 1.2 + 0.15 ln 1.6
    assert metrics.psi_from_counts([25, 25, 25, 25], [10, 20, 30, 40]) == pytest.approx(0.228217, abs=1e-6)
    assert metrics.psi_from_counts([50, 30, 20], [30, 30, 40]) == pytest.approx(0.240795, abs=1e-6)
    assert metrics.psi_from_counts([5, 5], [50, 50]) == 0.0


def test_psi_on_samples_equals_psi_of_their_quantile_histograms():
    rng = np.random.default_rng(0)
    base, shifted = rng.beta(2, 5, 2000), rng.beta(3, 4, 500)
    inner = np.quantile(base, np.linspace(0, 1, 11)[1:-1])
    count = lambda x: np.bincount(np.searchsorted(inner, x, side="right"), minlength=10)  # noqa: E731
    assert stats.psi(base, shifted) == pytest.approx(metrics.psi_from_counts(count(base), count(shifted)))


@pytest.mark.parametrize(
    ("mm", "band"), [(0.625, "<1 mm"), (1.0, "1-2.5 mm"), (2.5, "2.5-5 mm"), (5.0, ">=5 mm"), (None, "unknown")]
)
def test_slice_thickness_bands(mm, band):
    assert metrics.slice_band(mm) == band


@pytest.mark.parametrize(("age", "band"), [(17, "<18"), (18, "18-39"), (64, "40-64"), (65, "65-79"), (92, ">=80")])
def test_age_bands(age, band):
    assert metrics.age_band(age) == band


# --- ground truth from CSV ---------------------------------------------------------------------------------------


@pytest.fixture
def admin(db):
    return UserFactory(username="boss", role="admin", is_staff=True)


def test_csv_import_saves_good_rows_and_reports_every_bad_one(admin):
    by_accession = StudyFactory(accession_number="A1")
    by_uid = StudyFactory(study_instance_uid="1.2.3.4")
    StudyFactory(accession_number="TWICE")
    StudyFactory(accession_number="TWICE")
    text = (
        "accession_number,study_instance_uid,finding,label\n"
        "A1,,ich,positive\n"  # 2 good
        ",1.2.3.4,LVO,0\n"  # 3 good (finding case-insensitive)
        "NOPE,,ich,1\n"  # 4 unknown accession
        "A1,,sah,1\n"  # 5 unknown finding
        "A1,,lvo,maybe\n"  # 6 bad label
        "TWICE,,ich,1\n"  # 7 ambiguous accession
        "A1,,ich,negative\n"  # 8 repeats line 2
        ",,ich,1\n"  # 9 no identifier
        "A1,1.2.3.4,ich,1\n"  # 10 identifiers disagree
    )
    report = validation.ground_truth_import_csv(text=text, actor=admin)
    assert (report.rows, report.created, report.updated) == (9, 2, 0)
    assert [e.line for e in report.errors] == [4, 5, 6, 7, 8, 9, 10]
    assert "matches 2 studies" in report.errors[3].message
    assert "line 2" in report.errors[4].message
    labels = set(GroundTruth.objects.values_list("study_id", "finding", "label", "source", "imported_by"))
    assert labels == {(by_accession.pk, "ich", True, "csv", admin.pk), (by_uid.pk, "lvo", False, "csv", admin.pk)}


def test_csv_import_audits_counts_without_identifiers(admin):
    StudyFactory(accession_number="A1")
    validation.ground_truth_import_csv(text="accession_number,finding,label\nA1,ich,1\nB2,ich,1\n", actor=admin)
    event = AuditEvent.objects.get(action="ground_truth.import_csv")
    assert event.data == {"rows": 2, "created": 1, "updated": 0, "errors": 1}
    assert "A1" not in str(event.data)


def test_csv_reimport_updates_the_label(admin):
    StudyFactory(accession_number="A1")
    validation.ground_truth_import_csv(text="accession_number,finding,label\nA1,ich,1\n", actor=admin)
    report = validation.ground_truth_import_csv(
        text="\ufeffAccession_Number,Finding,Label\nA1,ich,false\n", actor=admin
    )
    assert (report.created, report.updated, GroundTruth.objects.get().label) == (0, 1, False)


def test_csv_without_required_columns_is_refused_as_a_whole(admin):
    StudyFactory(accession_number="A1")
    report = validation.ground_truth_import_csv(text="accession_number,label\nA1,1\n", actor=admin)
    assert [(e.line, "finding" in e.message) for e in report.errors] == [(1, True)]
    assert not GroundTruth.objects.exists()


# --- ground truth from feedback ----------------------------------------------------------------------------------


def feedback(result, verdict, user=None, **kw):
    user = user or UserFactory()
    return Feedback.objects.create(result=result, user=user, verdict=verdict, model_version=result.model_version, **kw)


def test_feedback_agree_keeps_the_flag_disagree_inverts_it_unsure_is_ignored(db):
    agreed, disagreed, unsure = ResultFactory(score=0.9), ResultFactory(score=0.9), ResultFactory(score=0.2)
    feedback(agreed, "agree")
    feedback(disagreed, "disagree")
    feedback(unsure, "unsure")
    assert validation.ground_truth_from_feedback() == 2
    labels = dict(GroundTruth.objects.filter(source="feedback").values_list("study_id", "label"))
    assert labels == {agreed.study_id: True, disagreed.study_id: False}


def test_latest_verdict_on_a_study_wins(db):
    result = ResultFactory(score=0.2)  # negative flag
    earlier = timezone.now() - timedelta(hours=1)
    feedback(result, "agree", created_at=earlier, updated_at=earlier)
    feedback(result, "disagree")
    validation.ground_truth_from_feedback()
    assert GroundTruth.objects.get().label is True


def test_feedback_label_is_kept_once_taken(db):
    result = ResultFactory(score=0.6, threshold=0.5)
    feedback(result, "agree")
    validation.ground_truth_from_feedback()
    # The flag changes later (a new threshold); the label taken from what the radiologist saw stays.
    type(result).objects.filter(pk=result.pk).update(threshold=0.7, positive=False)
    assert validation.ground_truth_from_feedback() == 0
    assert GroundTruth.objects.get().label is True


# --- performance per model version -------------------------------------------------------------------------------


def labelled_result(score, label, *, version="1.0", source="csv", **study_kw):
    result = ResultFactory(series=SeriesFactory(study=StudyFactory(**study_kw)), score=score, model_version=version)
    GroundTruth.objects.create(study=result.study, finding="ich", label=label, source=source)
    return result


def test_summary_of_a_version_uses_its_labelled_results_only(db):
    ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.65)
    for label, score in zip(HAND_LABELS, HAND_SCORES, strict=True):
        labelled_result(score, bool(label))
    labelled_result(0.1, True, version="0.9")  # another version
    ResultFactory(score=0.99, model_version="1.0")  # no ground truth
    summary = validation.validation_summary(finding="ich", model_version="1.0")
    assert (summary.n, summary.n_positive, summary.threshold) == (6, 3, 0.65)
    assert summary.auc.estimate == pytest.approx(8 / 9)
    # At 0.65: TP 0.9, 0.8; FP 0.7; FN 0.6; TN 0.55, 0.4.
    assert (summary.point.tp, summary.point.fp, summary.point.fn, summary.point.tn) == (2, 1, 1, 2)


def test_csv_label_wins_over_feedback_label(db):
    result = labelled_result(0.9, True, source="feedback")
    GroundTruth.objects.create(study=result.study, finding="ich", label=False, source="csv")
    assert [c.label for c in validation.validation_cases(finding="ich", model_version="1.0")] == [False]


def test_subgroups_split_by_scanner_slice_age_and_sex(db):
    # fmt: off
    labelled_result(
        0.9, True, manufacturer="GE", manufacturer_model="Revolution", patient_age_years=70, patient_sex="F"
    )
    labelled_result(0.2, False, manufacturer="Siemens", manufacturer_model="Force", patient_age_years=30)
    # fmt: on
    rows = validation.subgroup_rows(validation.validation_cases(finding="ich", model_version="1.0"), 0.5)
    groups = {(r.dimension, r.group): (r.n, r.n_positive) for r in rows}
    assert groups[("Scanner", "GE Revolution")] == (1, 1)
    assert groups[("Age", "18-39")] == (1, 0)
    assert groups[("Sex", "female")] == (1, 1)
    assert groups[("Sex", "unknown")] == (1, 0)
    assert groups[("Slice thickness", ">=5 mm")] == (2, 1)


def test_threshold_pick_gives_rates_and_alerts_per_day_at_site_volume(db):
    for label, score in zip(HAND_LABELS, HAND_SCORES, strict=True):
        labelled_result(score, bool(label))
    now = timezone.now()
    # 20 more studies over the last 10 days, 5 of them scoring at or above 0.65.
    for i in range(20):
        study = StudyFactory(received_at=now - timedelta(days=9, hours=12) + timedelta(hours=12 * i))
        ResultFactory(series=SeriesFactory(study=study), score=0.7 if i < 5 else 0.1)
    pick = validation.threshold_pick(finding="ich", model_version="1.0", threshold=0.65, prevalence=0.1, now=now)
    assert pick.volume_days == 10
    assert pick.studies_per_day == pytest.approx(2.6)  # 26 studies (the 6 labelled arrived now)
    assert pick.alerts_per_day_measured == pytest.approx((5 + 3) / 10)
    sens, spec = 2 / 3, 2 / 3
    assert pick.alerts_per_day_expected == pytest.approx(2.6 * (0.1 * sens + 0.9 * (1 - spec)))
    assert pick.false_alerts_per_day_expected == pytest.approx(2.6 * 0.9 * (1 - spec))


def twenty_studies_a_day_for_two_days(now, *, high):
    """40 current results of version 1.0 over two days, ``high`` of them scoring 0.95, the rest 0.05."""
    for i in range(40):
        study = StudyFactory(received_at=now - timedelta(hours=47) + timedelta(hours=i))
        ResultFactory(series=SeriesFactory(study=study), score=0.95 if i < high else 0.05, model_version="1.0")


def test_threshold_pick_gives_alerts_per_day_from_the_live_scores(db, model_card):
    now = timezone.now()
    twenty_studies_a_day_for_two_days(now, high=30)
    pick = validation.threshold_pick(finding="ich", model_version="1.0", threshold=0.5, now=now)
    assert (pick.studies_per_day, pick.alerts_per_day_measured) == (20.0, pytest.approx(30 / 40 * 20))


def test_threshold_pick_gives_alerts_per_day_from_the_model_card(db, model_card):
    now = timezone.now()
    twenty_studies_a_day_for_two_days(now, high=30)
    card = validation.threshold_pick(finding="ich", model_version="1.0", threshold=0.5, now=now).card_alerts
    # The card's operating point (0.94, 0.94) at 15% prevalence, and over 5-25%.
    assert card.per_day == pytest.approx(20 * (0.15 * 0.94 + 0.85 * 0.06))
    assert (card.per_day_low, card.per_day_high) == pytest.approx((20 * 0.104, 20 * 0.28))


def test_threshold_pick_from_the_card_off_its_threshold_uses_the_bins(db, model_card):
    now = timezone.now()
    twenty_studies_a_day_for_two_days(now, high=30)
    pick = validation.threshold_pick(finding="ich", model_version="1.0", threshold=0.4, prevalence=0.1, now=now)
    # At 0.4: 97% of the card's positives and 10% of its negatives score at or above it.
    assert pick.card_alerts.per_day == pytest.approx(20 * (0.1 * 0.97 + 0.9 * 0.10))


def test_validation_page_shows_the_model_cards_alerts_per_day(db, model_card, admin_web):
    twenty_studies_a_day_for_two_days(timezone.now(), high=30)
    page = admin_web.get(reverse("console-validation", args=["ich"]), {"threshold": 0.5}).content.decode()
    assert 'data-k="alerts-card">3.8 ' in page  # 20 a day × (0.15 × 0.94 + 0.85 × 0.06)

"""Monitoring selectors: per-period volume, drift against the baseline, agreement, latency, failures and queues."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone

from tests.factories import JobFactory, ResultFactory, SeriesFactory, StudyFactory, UserFactory
from triage.governance import monitoring
from triage.models import FhirEndpoint, GroundTruth, ModelConfig, OutboxMessage
from worklist.models import Feedback

pytestmark = pytest.mark.django_db


@pytest.fixture
def now():
    # Midday, so hour offsets below stay inside the same day in UTC.
    return timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)


def result_at(received, score, *, version="1.0", **kw):
    study = StudyFactory(received_at=received)
    return ResultFactory(series=SeriesFactory(study=study), score=score, model_version=version, **kw)


def row_of(table, label):
    return dict(zip(table.columns, next(r for r in table.rows if r[0] == label), strict=True))


def test_volume_counts_studies_and_positive_rate_per_day(now):
    today = monitoring.bucket_label(now.date())
    for score in (0.9, 0.2, 0.1, 0.8):
        result_at(now - timedelta(hours=1), score)
    StudyFactory(received_at=now - timedelta(hours=2))  # no result (yet)
    result_at(now - timedelta(days=1), 0.9)
    table = monitoring.volume_table(finding="ich", period="day", now=now)
    assert len(table.rows) == monitoring.PERIODS["day"]
    assert row_of(table, today) == {"period": today, "studies": 5, "results": 4, "positive": 2, "positive_rate": 0.5}


def test_weekly_buckets_start_on_monday(now):
    table = monitoring.volume_table(finding="ich", period="week", now=now)
    starts = [monitoring.bucket_starts("week", now)[i].weekday() for i in range(len(table.rows))]
    assert (len(table.rows), set(starts)) == (monitoring.PERIODS["week"], {0})


def test_baseline_is_the_validation_set_when_large_enough(now):
    for i in range(monitoring.MIN_BASELINE):
        result = result_at(now - timedelta(days=40), i / 100)
        GroundTruth.objects.create(study=result.study, finding="ich", label=i % 2 == 0, source="csv")
    baseline = monitoring.drift_baseline(finding="ich", model_version="1.0")
    assert (len(baseline.scores), baseline.description.startswith("validation set")) == (30, True)


def test_baseline_falls_back_to_the_first_weeks_in_production(now):
    for i in range(monitoring.MIN_BASELINE):
        result_at(now, i / 100, created_at=now - timedelta(days=60) + timedelta(hours=i))
    result_at(now, 0.99, created_at=now - timedelta(days=10))  # after the first four weeks
    baseline = monitoring.drift_baseline(finding="ich", model_version="1.0")
    assert (len(baseline.scores), "first 4 weeks" in baseline.description) == (30, True)


def test_drift_alerts_when_a_day_shifts_beyond_psi_025(now):
    rng = np.random.default_rng(0)
    for score in rng.beta(2, 8, 300):  # the baseline: the first weeks in production, before the window
        result_at(now - timedelta(days=40), float(score), created_at=now - timedelta(days=40))
    for score in rng.beta(2, 8, 120):  # yesterday: same distribution
        result_at(now - timedelta(days=1), float(score))
    for score in rng.beta(4, 6, 120):  # today: scores pushed up
        result_at(now - timedelta(hours=1), float(score))
    drift = monitoring.drift_report(finding="ich", period="day", now=now)
    yesterday, today = (row_of(drift.table, monitoring.bucket_label((now - timedelta(days=d)).date())) for d in (1, 0))
    assert yesterday["psi"] < 0.25
    assert (today["psi"] > 0.25, today["alert"]) == (True, True)
    assert drift.alerts == [monitoring.bucket_label(now.date())]
    assert sum(drift.histogram) == 240


def test_drift_is_not_judged_on_too_few_studies(now):
    for i in range(40):
        result_at(now - timedelta(days=20), i / 40, created_at=now - timedelta(days=20))
    result_at(now, 0.99)
    today = row_of(
        monitoring.drift_report(finding="ich", period="day", now=now).table, monitoring.bucket_label(now.date())
    )
    assert (today["studies"], today["psi"], today["alert"]) == (1, None, False)


def test_agreement_with_radiologists_per_day(now):
    user = UserFactory()
    verdicts = ["agree", "agree", "agree", "disagree", "unsure"]
    for verdict in verdicts:
        result = result_at(now, 0.9)
        Feedback.objects.create(result=result, user=user, verdict=verdict, model_version="1.0", created_at=now)
    row = row_of(monitoring.agreement_table(finding="ich", period="day", now=now), monitoring.bucket_label(now.date()))
    assert (row["agree"], row["disagree"], row["unsure"], row["agreement"]) == (3, 1, 1, 0.75)
    assert row["agreement_low"] < 0.75 < row["agreement_high"]


def test_latency_from_arrival_to_result_report_and_per_stage(now):
    endpoint = FhirEndpoint.objects.create(name="emr", base_url="http://127.0.0.1:9/fhir")
    for i, seconds in enumerate((10, 20, 30, 40, 50)):
        received = now - timedelta(hours=1)
        result = result_at(received, 0.5, created_at=received + timedelta(seconds=seconds))
        JobFactory(study=result.study, timings={"fetch": float(i), "infer": 1.0, "note": "not a number"})
        OutboxMessage.objects.create(
            endpoint=endpoint, study=result.study, finding="ich", resource_id=f"r{i}", payload={},
            state="sent", sent_at=received + timedelta(seconds=seconds + 5),
        )  # fmt: skip
    row = row_of(monitoring.latency_table(period="day", now=now), monitoring.bucket_label(now.date()))
    assert (row["to_result_p50"], row["to_result_p95"]) == (30.0, 48.0)
    assert (row["to_report_p50"], row["stage:fetch_p50"], row["stage:infer_p95"]) == (35.0, 2.0, 1.0)
    assert "stage:note_p50" not in row


def test_failures_and_rejections_are_counted_by_reason(now):
    for state, code in (("failed", "pacs_unavailable"), ("failed", "pacs_unavailable"), ("rejected", "too_large")):
        JobFactory(study=StudyFactory(), state=state, error_code=code, created_at=now, finished_at=now)
    JobFactory(study=StudyFactory(), state="done", created_at=now, finished_at=now)
    row = row_of(monitoring.failure_table(period="day", now=now), monitoring.bucket_label(now.date()))
    assert row == {"period": row["period"], "failed:pacs_unavailable": 2, "rejected:too_large": 1}


def test_queue_depth_counts_waiting_work():
    JobFactory(state="queued")
    JobFactory(state="fetching")
    JobFactory(state="inferring")
    JobFactory(state="done")
    depth = monitoring.queue_depth()
    assert (depth["jobs_queued"], depth["jobs_active"], depth["outbox_pending"]) == (1, 2, 0)


def test_baseline_is_the_model_card_before_local_ground_truth(model_card, now):
    result_at(now, 0.5)
    baseline = monitoring.drift_baseline(finding="ich", model_version="1.0")
    # The card's classes mixed at 15% prevalence: the first bin holds 85% of 40% of negatives.
    assert (baseline.kind, baseline.shares[0]) == ("card", pytest.approx(0.85 * 0.40))


def test_local_validation_set_replaces_the_card_once_large_enough(model_card, now):
    for i in range(monitoring.MIN_BASELINE):
        result = result_at(now - timedelta(days=40), i / 100)
        GroundTruth.objects.create(study=result.study, finding="ich", label=i % 2 == 0, source="csv")
    assert monitoring.drift_baseline(finding="ich", model_version="1.0").kind == "validation"


def test_card_baseline_takes_precedence_over_the_first_weeks_in_production(model_card, now):
    for i in range(monitoring.MIN_BASELINE):
        result_at(now, 0.99, created_at=now - timedelta(days=60) + timedelta(hours=i))
    assert monitoring.drift_baseline(finding="ich", model_version="1.0").kind == "card"


def card_like_scores(rng, n):
    """Scores drawn from the test card's histogram at 15% prevalence (uniform within each bin)."""
    negatives = np.array([40, 30, 15, 5, 4, 3, 2, 1, 0, 0]) / 100
    positives = np.array([0, 0, 1, 2, 3, 4, 5, 10, 25, 50]) / 100
    bins = rng.choice(10, size=n, p=0.85 * negatives + 0.15 * positives)
    return (bins + rng.uniform(0.0, 1.0, n)) / 10


def test_drift_against_the_card_is_quiet_for_its_own_distribution_and_alerts_on_all_high(model_card, now):
    rng = np.random.default_rng(1)
    for score in card_like_scores(rng, 400):
        result_at(now - timedelta(days=1), float(score), version="1.0")
    for _ in range(120):
        result_at(now - timedelta(hours=1), 0.95, version="1.0")  # every normal head flagged
    drift = monitoring.drift_report(finding="ich", period="day", now=now)
    yesterday, today = (row_of(drift.table, monitoring.bucket_label((now - timedelta(days=d)).date())) for d in (1, 0))
    assert (yesterday["psi"] < 0.1, today["alert"]) == (True, True)


def test_drift_page_shows_the_card_baseline_on_a_fresh_install(model_card, admin_web):
    ModelConfig.objects.create(finding="ich", name="ich-test", version="1.0", threshold=0.5)
    page = admin_web.get(reverse("console-monitoring")).content.decode()
    assert 'data-kind="card"' in page
    assert "Drift baseline: model card of 1.0" in page

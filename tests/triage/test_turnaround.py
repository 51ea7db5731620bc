"""Turnaround analytics: arrival → claim → report, flagged against not flagged, with quantile intervals."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from django.utils import timezone

from tests.factories import WorklistItemFactory
from triage.governance import turnaround
from triage.governance.turnaround import quantile_interval

NOW = timezone.make_aware(datetime(2026, 11, 30, 12, 0))


def test_the_median_interval_is_the_classic_order_statistics_for_twenty_values():
    found = quantile_interval([float(v) for v in range(1, 21)], 0.5)

    # n = 20: the 95% interval of the median is (x6, x15), coverage 95.9%.
    assert (found.estimate, found.low, found.high) == (10.5, 6.0, 15.0)


def test_a_sample_too_small_to_bracket_the_p90_leaves_that_bound_open():
    found = quantile_interval([5.0, 6.0, 7.0], 0.9)

    assert found.high is None
    assert found.estimate == pytest.approx(6.8)


def _read(received: datetime, *, claim_min: float | None, report_min: float | None, flagged: bool, urgency: int = 0):
    return WorklistItemFactory(
        received_at=received,
        claimed_at=None if claim_min is None else received + timedelta(minutes=claim_min),
        reported_at=None if report_min is None else received + timedelta(minutes=report_min),
        critical=flagged,
        urgency=urgency,
        status="reported" if report_min is not None else "waiting",
    )


@pytest.mark.django_db
def test_flagged_studies_are_summarised_apart_from_the_others():
    day = NOW - timedelta(days=2)
    for minutes in (10, 20, 30):
        _read(day, claim_min=minutes / 2, report_min=minutes, flagged=True)
    for minutes in (60, 90, 120):
        _read(day, claim_min=minutes / 2, report_min=minutes, flagged=False, urgency=3)
    _read(day, claim_min=None, report_min=None, flagged=False)

    table = turnaround.turnaround_report(period="day", now=NOW)["summary"]
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}

    assert (rows["AI flagged"]["studies"], rows["AI flagged"]["report_median_min"]) == (3, 20.0)
    assert (rows["not flagged"]["studies"], rows["not flagged"]["report_n"]) == (4, 3)
    assert rows["not flagged"]["report_median_min"] == 90.0
    assert rows["AI flagged"]["claim_median_min"] == 10.0
    assert rows["requested stat"]["studies"] == 3


@pytest.mark.django_db
def test_before_and_after_go_live_split_on_the_arrival_day():
    go_live = date(2026, 11, 20)
    _read(NOW - timedelta(days=15), claim_min=5, report_min=100, flagged=True)
    _read(NOW - timedelta(days=5), claim_min=5, report_min=40, flagged=True)

    table = turnaround.turnaround_report(period="day", go_live=go_live, now=NOW)["summary"]
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}

    assert rows["flagged, before 2026-11-20"]["report_median_min"] == 100.0
    assert rows["flagged, after 2026-11-20"]["report_median_min"] == 40.0


@pytest.mark.django_db
def test_the_per_day_table_has_the_median_report_time_of_each_group():
    day = NOW - timedelta(days=1)
    _read(day, claim_min=1, report_min=12, flagged=True)
    _read(day, claim_min=1, report_min=48, flagged=False)

    periods = turnaround.turnaround_report(period="day", now=NOW)["periods"]
    row = dict(zip(periods.columns, periods.rows[-2], strict=True))

    assert (row["flagged_median_min"], row["not_flagged_median_min"]) == (12.0, 48.0)


def test_the_page_and_its_csv_are_for_admins(admin_web, rad_web):
    page = admin_web.get("/console/turnaround/?period=week&go_live=2026-11-20")
    csv = admin_web.get("/console/turnaround/summary.csv?period=week")

    assert page.status_code == 200
    assert b"turnaround-summary" in page.content
    assert csv.status_code == 200
    assert csv.content.startswith(b"group,studies,claim_n")
    assert rad_web.get("/console/turnaround/").status_code == 403

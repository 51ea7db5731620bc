"""The admin console pages: admins see them, radiologists get 403, anonymous users go to the login page."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.factories import ResultFactory, SeriesFactory, StudyFactory
from triage.models import AuditEvent, GroundTruth, ModelConfig

pytestmark = pytest.mark.django_db

PAGES = [
    ("console", []),
    ("console-validation", ["ich"]),
    ("console-validation-csv", ["ich", "roc"]),
    ("console-validation-csv", ["ich", "subgroups"]),
    ("console-ground-truth", []),
    ("console-monitoring", []),
    *[
        ("console-monitoring-csv", [t])
        for t in ("volume", "drift", "histogram", "agreement", "latency", "failures", "queue")
    ],
]
POSTS = [("console-threshold-apply", ["ich"]), ("console-ground-truth", [])]


@pytest.fixture
def validated(db):
    """ICH model 1.0 with six labelled studies (AUC 8/9) at threshold 0.65."""
    config = ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.65)
    for label, score in zip([1, 1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.55, 0.4], strict=True):
        result = ResultFactory(series=SeriesFactory(study=StudyFactory()), score=score, model_version="1.0")
        GroundTruth.objects.create(study=result.study, finding="ich", label=bool(label), source="csv")
    return config


def rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.mark.parametrize(("name", "args"), PAGES)
def test_radiologist_gets_403_on_every_console_page(rad_web, name, args):
    assert rad_web.get(reverse(name, args=args)).status_code == 403


@pytest.mark.parametrize(("name", "args"), POSTS)
def test_radiologist_gets_403_on_every_console_action(rad_web, validated, name, args):
    assert rad_web.post(reverse(name, args=args), {"threshold": "0.9"}).status_code == 403
    assert ModelConfig.objects.get().threshold == 0.65


@pytest.mark.parametrize(("name", "args"), PAGES[:1] + PAGES[4:6])
def test_anonymous_user_is_sent_to_log_in(client, name, args):
    response = client.get(reverse(name, args=args))
    assert (response.status_code, response["Location"].startswith(reverse("login"))) == (302, True)


@pytest.mark.parametrize(("name", "args"), PAGES)
def test_admin_sees_every_console_page(admin_web, validated, name, args):
    assert admin_web.get(reverse(name, args=args)).status_code == 200


def test_validation_page_shows_auc_and_the_roc_chart(admin_web, validated):
    html = admin_web.get(reverse("console-validation", args=["ich"])).content.decode()
    assert "0.889" in html  # AUC 8/9
    assert 'role="img"' in html
    assert "Sensitivity (2/3)" in html


def test_threshold_picker_shows_figures_for_a_candidate(admin_web, validated):
    response = admin_web.get(reverse("console-validation", args=["ich"]), {"threshold": "0.5"})
    pick = response.context["pick"]
    assert (pick.threshold, pick.point.tp, pick.point.fp) == (0.5, 3, 2)


def test_roc_csv_lists_every_point(admin_web, validated):
    table = rows(admin_web.get(reverse("console-validation-csv", args=["ich", "roc"])))
    assert table[0] == ["threshold", "false_positive_rate", "sensitivity"]
    assert len(table) == 1 + 7


def test_apply_button_sets_the_threshold_through_the_service(admin_web, validated, site_admin):
    response = admin_web.post(reverse("console-threshold-apply", args=["ich"]), {"threshold": "0.75"})
    assert response.status_code == 302
    assert ModelConfig.objects.get().threshold == 0.75
    assert AuditEvent.objects.get(action="model.threshold_set").actor == site_admin


def test_apply_refuses_a_threshold_outside_zero_to_one(admin_web, validated):
    admin_web.post(reverse("console-threshold-apply", args=["ich"]), {"threshold": "7"})
    assert ModelConfig.objects.get().threshold == 0.65


def test_upload_imports_good_rows_and_lists_bad_ones(admin_web):
    StudyFactory(accession_number="A1")
    upload = SimpleUploadedFile("truth.csv", b"accession_number,finding,label\nA1,ich,1\nZZ,ich,1\nA1,lvo,perhaps\n")
    response = admin_web.post(reverse("console-ground-truth"), {"file": upload})
    html = response.content.decode()
    assert (response.status_code, GroundTruth.objects.count()) == (200, 1)
    assert "3 rows read: 1 labels created, 0 updated, 2 rows with errors." in html
    assert [e.line for e in response.context["report"].errors] == [3, 4]


def test_upload_that_is_not_text_is_refused(admin_web):
    upload = SimpleUploadedFile("truth.csv", b"\xff\xfe\x00bad")
    response = admin_web.post(reverse("console-ground-truth"), {"file": upload})
    assert "not UTF-8" in response.content.decode()


def test_monitoring_csv_has_one_row_per_day(admin_web, validated):
    table = rows(admin_web.get(reverse("console-monitoring-csv", args=["volume"]), {"period": "day"}))
    assert table[0] == ["period", "studies", "results", "positive", "positive_rate"]
    assert len(table) == 1 + 28
    assert table[-1][1] == "6"

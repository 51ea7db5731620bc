"""Model alerts: a flag rate the model card makes implausible raises one alert (console, log, webhook), and clears."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
from django.core.management import call_command
from django.urls import reverse

from tests.factories import ResultFactory
from triage.governance import monitoring, services
from triage.models import AuditEvent, ModelAlert, ModelConfig

pytestmark = pytest.mark.django_db

HOOK = "http://hook.invalid/alerts"


@pytest.fixture
def hook(settings):
    settings.TRIAGE_ESCALATION_WEBHOOK_URL = HOOK
    with mock.patch("worklist.notify.requests.post") as post:
        post.return_value.status_code = 200
        yield post


def results(count, *, flagged, version="1.0"):
    """``count`` current ICH results in a row, the first ``flagged`` of them flagged (scores either side of 0.5)."""
    return [
        ResultFactory(score=0.9 if i < flagged else 0.1, threshold=0.5, model_version=version) for i in range(count)
    ]


def check(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.model_alerts_check()


def test_twenty_flagged_in_a_row_raise_a_too_many_alert(model_card, hook, django_capture_on_commit_callbacks):
    results(20, flagged=20)
    check(django_capture_on_commit_callbacks)
    alert = ModelAlert.objects.get()
    assert (alert.kind, alert.flagged, alert.window, alert.cleared_at) == ("flag_rate_high", 20, 20, None)
    assert (round(alert.expected_low, 3), round(alert.expected_high, 3), alert.p_value < 0.01) == (0.104, 0.28, True)


def test_the_alert_is_posted_to_the_webhook_after_commit(model_card, hook, django_capture_on_commit_callbacks):
    results(20, flagged=20)
    check(django_capture_on_commit_callbacks)
    body = hook.call_args.kwargs["json"]
    assert (hook.call_args.args[0], body["event"], body["finding"], body["flagged"]) == (HOOK, "model_alert_raised",
                                                                                         "ich", 20)  # fmt: skip
    assert not {"patient_id", "patient_name", "study_instance_uid", "accession_number"} & set(body)


def test_the_alert_is_logged_and_audited(model_card, hook, caplog, django_capture_on_commit_callbacks):
    results(20, flagged=20)
    with caplog.at_level(logging.WARNING, logger="triage.governance.services"):
        check(django_capture_on_commit_callbacks)
    assert "flagged 20 of the last 20" in caplog.text
    assert AuditEvent.objects.filter(action="model.alert_raised").count() == 1


def test_the_console_shows_an_open_alert(model_card, hook, admin_web, django_capture_on_commit_callbacks):
    results(20, flagged=20)
    check(django_capture_on_commit_callbacks)
    page = admin_web.get(reverse("console")).content.decode()
    assert 'id="model-alerts"' in page
    assert "too many studies flagged, 20 of the last 20" in page


def test_the_monitoring_page_shows_an_open_alert(model_card, hook, admin_web, django_capture_on_commit_callbacks):
    results(20, flagged=20)
    check(django_capture_on_commit_callbacks)
    page = admin_web.get(reverse("console-monitoring")).content.decode()
    assert "too many studies flagged" in page
    assert 'id="flag-rate"' in page


def test_a_plausible_flag_rate_raises_nothing(model_card, hook, django_capture_on_commit_callbacks):
    results(20, flagged=4)
    assert (check(django_capture_on_commit_callbacks), ModelAlert.objects.count(), hook.called) == ([], 0, False)


def test_an_open_alert_is_raised_once(model_card, hook, django_capture_on_commit_callbacks):
    results(20, flagged=20)
    check(django_capture_on_commit_callbacks)
    check(django_capture_on_commit_callbacks)
    assert (ModelAlert.objects.count(), hook.call_count) == (1, 1)


def test_the_alert_clears_when_the_rate_is_plausible_again(model_card, hook, django_capture_on_commit_callbacks):
    results(20, flagged=20)
    check(django_capture_on_commit_callbacks)
    results(20, flagged=3)  # the last 20 are now plausible
    check(django_capture_on_commit_callbacks)
    alert = ModelAlert.objects.get()
    assert (alert.cleared_at is not None, monitoring.alerts_open(), hook.call_args.kwargs["json"]["event"]) == (
        True, [], "model_alert_cleared")  # fmt: skip


def test_too_few_flags_over_a_long_window_raise_a_too_few_alert(
    model_card, hook, settings, django_capture_on_commit_callbacks
):
    settings.TRIAGE_FLAG_RATE_WINDOW = 50
    results(50, flagged=0)
    check(django_capture_on_commit_callbacks)
    assert list(ModelAlert.objects.values_list("kind", flat=True)) == ["flag_rate_low"]


def test_fewer_than_ten_results_are_not_judged(model_card, hook, django_capture_on_commit_callbacks):
    results(9, flagged=9)
    assert check(django_capture_on_commit_callbacks) == []


def test_a_version_without_a_card_is_not_judged(model_card, hook, django_capture_on_commit_callbacks):
    results(20, flagged=20, version="9.9")
    assert check(django_capture_on_commit_callbacks) == []


def test_the_poll_loop_checks_the_flag_rate_each_cycle(model_card, hook):
    results(20, flagged=20)
    call_command("triage_poll", "--once", "--no-poll")
    assert ModelAlert.objects.filter(kind="flag_rate_high", cleared_at__isnull=True).exists()


def test_a_threshold_change_checks_the_flag_rate(model_card, hook, site_admin):
    config = ModelConfig.objects.create(finding="ich", name="ich-test", version="1.0", threshold=0.5)
    for _ in range(20):
        ResultFactory(score=0.45, threshold=0.5, model_version="1.0")  # none flagged, until the threshold drops
    services.model_threshold_set(model_config=config, threshold=0.4, actor=site_admin)
    assert ModelAlert.objects.get().kind == "flag_rate_high"
